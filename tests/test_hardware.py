"""The compute dtype follows what the CPU is fast at: bf16 with AMX, fp32 otherwise."""

from __future__ import annotations

import pytest

from distill import hardware
from kb.errors import NesyError


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("NESY_DTYPE", raising=False)
    hardware.compute_dtype.cache_clear()
    yield
    hardware.compute_dtype.cache_clear()


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "fp32"),
        ({"avx2"}, "fp32"),
        (set(), "fp32"),
    ],
)
def test_bf16_only_where_the_cpu_has_amx(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert hardware.compute_dtype() == expected


def test_override_and_bad_override(monkeypatch):
    monkeypatch.setenv("NESY_DTYPE", "bf16")
    assert hardware.compute_dtype() == "bf16" and "NESY_DTYPE set" in hardware.describe()
    hardware.compute_dtype.cache_clear()
    monkeypatch.setenv("NESY_DTYPE", "fp16")
    with pytest.raises(NesyError, match="NESY_DTYPE"):
        hardware.compute_dtype()


def test_this_machine_is_described():
    assert hardware.describe().split()[0] in ("bf16", "fp32")
