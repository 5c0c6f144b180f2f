"""What this machine's matmul is fastest in, so training and generation use it.

bf16 pays on a CPU only with AMX tiles (torch's bf16 matmul ~6x its fp32 there); with AVX512-BF16
alone it measured *slower* than fp32 here (67 vs 100 GFLOP/s, 2 threads), and with AVX2 it is
emulated. So: bf16 on AMX CPUs and on GPUs that support it, fp32 elsewhere. `NESY_DTYPE=fp32|bf16`
overrides the choice (e.g. to compare loss curves).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from kb.errors import NesyError


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@functools.cache
def compute_dtype() -> str:
    """'bf16' or 'fp32': the dtype training autocasts to and generation loads weights in."""
    forced = os.environ.get("NESY_DTYPE")
    if forced:
        if forced not in ("bf16", "fp32"):
            raise NesyError(f"NESY_DTYPE must be bf16 or fp32 (got {forced!r})")
        return forced
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if "amx_bf16" in cpu_flags() else "fp32"


def torch_dtype():
    import torch

    return torch.bfloat16 if compute_dtype() == "bf16" else torch.float32


def describe() -> str:
    """One line for logs and cards: which dtype and why."""
    flags = cpu_flags()
    isa = (
        "AMX"
        if "amx_bf16" in flags
        else "AVX512-BF16"
        if "avx512_bf16" in flags
        else "AVX2"
        if "avx2" in flags
        else "baseline"
    )
    return f"{compute_dtype()} (CPU {isa}{', NESY_DTYPE set' if os.environ.get('NESY_DTYPE') else ''})"
