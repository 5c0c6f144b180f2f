"""The embedded models resolve offline; assembly is checked; a failed conversion leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill import models


def test_student_resolves_to_a_converted_fp32_folder():
    path = Path(models.student_path())
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # dequantised: loadable without the gguf package
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_override_wins_over_every_default(tmp_path):
    assert models.student_path("Qwen/Qwen2-0.5B") == "Qwen/Qwen2-0.5B"
    assert models.embedder_path(str(tmp_path)) == str(tmp_path)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.teacher_gguf_path(str(gguf)) == gguf


def test_embedder_is_the_packaged_minilm():
    path = Path(models.embedder_path())
    assert (path / "config.json").exists() or (path / "modules.json").exists()


def _fake_part_packages(root: Path, prefix: str, chunks: list[bytes]) -> None:
    for i, chunk in enumerate(chunks, start=1):
        data = root / f"{prefix}{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{i:02d}.bin").write_bytes(chunk)


def test_assembly_concatenates_parts_in_order_and_checks_sha256(tmp_path, monkeypatch):
    chunks = [b"alpha-", b"beta-", b"gamma"]
    _fake_part_packages(tmp_path / "site", "nesytestpart", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    good = models.TeacherSpec("t", "nesytestpart", 3, "0", hashlib.sha256(b"".join(chunks)).hexdigest())
    target = tmp_path / "t.gguf"
    models.assemble_parts(good, target)
    assert target.read_bytes() == b"alpha-beta-gamma"

    bad = models.TeacherSpec("t", "nesytestpart", 3, "0", "0" * 64)
    other = tmp_path / "bad.gguf"
    with pytest.raises(models.ModelNotAvailable, match="sha256 mismatch"):
        models.assemble_parts(bad, other)
    assert not other.exists() and not list(tmp_path.glob(".bad.gguf*"))


def test_a_failed_conversion_leaves_no_folder(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    target = tmp_path / "models" / "Broken"
    with pytest.raises(Exception):  # noqa: B017 - whatever the gguf reader raises; the point is nothing is left
        models.convert_gguf_to_hf(broken, target)
    assert not target.exists()
    assert not [p for p in (tmp_path / "models").iterdir()]  # the temp folder was removed too


def test_missing_part_package_names_the_package(monkeypatch):
    spec = models.TeacherSpec("t", "nesy_no_such_part", 2, "0", "0" * 64)
    with pytest.raises(models.ModelNotAvailable, match="nesy_no_such_part1"):
        models.assemble_parts(spec, models.models_dir() / "t.gguf")
    assert not list(models.models_dir().glob(".t.gguf*"))


def test_nesy_models_list_reports_each_role():
    out = subprocess.run(
        [sys.executable, "-m", "distill.cli", "models", "list"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "embedder" in out.stdout and "ready" in out.stdout
    assert "teacher:qwen2.5-coder-1.5b" in out.stdout


@pytest.mark.slow
def test_the_packaged_half_billion_student_converts_and_answers():
    """`--base-model qwen2.5-coder-0.5b`: the packaged Qwen2.5-Coder-0.5B, dequantised once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(models.student_path("qwen2.5-coder-0.5b"))
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 times 7? Reply with the number."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "84" in tokenizer.decode(out[0][ids["input_ids"].shape[1] :])
