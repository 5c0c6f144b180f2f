"""Student weights as GGUF files for llama.cpp: the base model and its peft LoRA adapters.

- `lora_to_gguf(adapter_dir, out, base_dir)`: a peft LoRA adapter -> a GGUF LoRA that llama.cpp
  loads on the base GGUF (`--lora`; the layout of llama.cpp's convert_lora_to_gguf.py):
  `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and for each adapted
  weight W (HF shape [out, in]) two tensors `<W's GGUF name>.lora_a` = A [r, in] and `.lora_b` =
  B [out, r]. llama.cpp adds (alpha / r) · B A x with r read from B's shape: peft's own scaling.
- `hf_to_gguf(hf_dir, out, tokenizer_gguf)`: an HF llama / qwen2 folder -> an f32 (or f16) GGUF of
  the same weights, with the tokenizer metadata of the GGUF the model came from. The embedded
  students are fp32 dequantisations of quantised GGUFs, and that fp32 model is what adapters are
  trained on: serving the quantised original instead would add quantisation error.
- `served_files(base_model, adapter)`: both, written once under the models folder / next to the
  adapter and reused while newer than their source (what the llama.cpp student backend serves).

Names come from gguf's TensorNameMap (HF -> GGUF). llama's q/k rows are reordered from HF's rotary
layout (per head: first half, second half) to GGUF's (interleaved pairs), as llama.cpp's converter
does and transformers undoes when it reads a GGUF; for a LoRA only B's rows move (ΔW = B A).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import typer

from kb.errors import NesyError

ARCHITECTURES = ("llama", "qwen2")
DTYPES = ("f32", "f16")
ADAPTER_FILE = "adapter-{dtype}.gguf"  # written inside the adapter's folder


class GGUFExportError(NesyError, ValueError):
    """A model or adapter this exporter cannot write as GGUF (architecture, LoRA variant, …)."""


# --- names and layout ------------------------------------------------------------------------------


def _config(hf_dir: Path) -> dict:
    try:
        config = json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GGUFExportError(f"{hf_dir}: no readable config.json ({e})") from None
    if config.get("model_type") not in ARCHITECTURES:
        raise GGUFExportError(
            f"{hf_dir}: model type {config.get('model_type')!r} is not supported "
            f"(GGUF export knows {', '.join(ARCHITECTURES)})"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"{hf_dir}: rope scaling {rope.get('rope_type')!r} is not supported")
    return config


def _arch(config: dict):
    import gguf

    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[config["model_type"]]


class TensorNames:
    """HF tensor name -> (GGUF name, number of rotary heads whose rows to reorder, or None)."""

    def __init__(self, config: dict):
        import gguf

        self.config = config
        self.map = gguf.get_tensor_name_map(_arch(config), config["num_hidden_layers"])

    def __call__(self, hf_name: str) -> tuple[str, int | None]:
        name = self.map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name!r}")
        return name, self.rotary_heads(hf_name)

    def rotary_heads(self, hf_name: str) -> int | None:
        """llama.cpp's llama converter reorders q and k rows (per q head / per kv head); qwen2's does not."""
        if self.config["model_type"] != "llama":
            return None
        if ".q_proj." in hf_name:
            return self.config["num_attention_heads"]
        if ".k_proj." in hf_name:
            return self.config.get("num_key_value_heads") or self.config["num_attention_heads"]
        return None


def rotary_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k weight (or bias, or LoRA B) from HF's rotary layout to GGUF's.

    HF rotates the first half of each head against the second half; llama.cpp rotates adjacent
    pairs. Row (head h, half s, index i) moves to (head h, index i, half s)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _safetensors(folder: Path):
    """(name, float32 array) for every tensor of the safetensors files in `folder`."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{folder}: no .safetensors weights")
    for file in files:
        with safe_open(file, framework="pt") as f:  # pt: bf16 weights read too
            for key in f.keys():
                yield key, f.get_tensor(key).float().numpy()


def _atomic_writer(out: Path, arch_name: str):
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    return gguf.GGUFWriter(tmp, arch_name), Path(tmp)


def _finish(writer, tmp: Path, out: Path) -> Path:
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _cast(data: np.ndarray, dtype: str) -> np.ndarray:
    # llama.cpp keeps 1-D tensors (norms, biases) in f32 whatever the file type
    return data.astype(np.float16) if dtype == "f16" and data.ndim == 2 else data.astype(np.float32)


# --- the base model --------------------------------------------------------------------------------


def hf_to_gguf(hf_dir: str | Path, out: str | Path, tokenizer_gguf: str | Path, dtype: str = "f32") -> Path:
    """Write the HF model in `hf_dir` as a GGUF llama.cpp serves (weights as they are, in f32 or f16)."""
    import gguf

    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    hf_dir, out = Path(hf_dir), Path(out)
    config = _config(hf_dir)
    names = TensorNames(config)
    writer, tmp = _atomic_writer(out, gguf.MODEL_ARCH_NAMES[_arch(config)])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(hf_dir.name)
    add_hyperparameters(writer, config)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _copy_tokenizer(writer, gguf.GGUFReader(tokenizer_gguf), config)
    tied = config.get("tie_word_embeddings", False)
    for key, data in _safetensors(hf_dir):
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name, heads = names(key)
        writer.add_tensor(name, _cast(rotary_rows(data, heads) if heads else data, dtype))
    return _finish(writer, tmp, out)


def add_hyperparameters(writer, config: dict) -> None:
    """The architecture keys llama.cpp reads for llama / qwen2, from the HF config."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if config["model_type"] == "llama":
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)


def _copy_tokenizer(writer, source, config: dict) -> None:
    """Every tokenizer.* key of the source GGUF, as it is (vocabulary, merges, special ids, template)."""
    from gguf import GGUFValueType

    tokens = source.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != config["vocab_size"]:
        raise GGUFExportError(
            f"the tokenizer GGUF has {0 if tokens is None else len(tokens.data)} tokens, "
            f"the model {config['vocab_size']}"
        )
    for field in source.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), main, sub)


# --- the adapter -----------------------------------------------------------------------------------


def lora_to_gguf(adapter_dir: str | Path, out: str | Path, base_dir: str | Path, dtype: str = "f32") -> Path:
    """Write the peft LoRA adapter in `adapter_dir` (trained on the HF model `base_dir`) as a GGUF LoRA."""
    import gguf

    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    adapter_dir, out = Path(adapter_dir), Path(out)
    lora = _lora_config(adapter_dir)
    config = _config(Path(base_dir))
    names = TensorNames(config)
    pairs = _lora_pairs(adapter_dir)
    ranks = {a.shape[0] for a, _ in pairs.values()}
    if len(ranks) != 1:
        raise GGUFExportError(
            f"{adapter_dir}: modules of different ranks {sorted(ranks)} (rank_pattern) "
            "cannot share one adapter.lora.alpha"
        )
    writer, tmp = _atomic_writer(out, gguf.MODEL_ARCH_NAMES[_arch(config)])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _alpha(lora, ranks.pop()))
    for base_name, (a, b) in sorted(pairs.items()):
        if base_name == "lm_head.weight" and config.get("tie_word_embeddings", False):
            raise GGUFExportError(
                "the adapter changes lm_head, which this base ties to the embeddings "
                "(llama.cpp has no separate output weight to adapt)"
            )
        name, heads = names(base_name)
        writer.add_tensor(f"{name}.lora_a", _cast(a, dtype))
        writer.add_tensor(f"{name}.lora_b", _cast(rotary_rows(b, heads) if heads else b, dtype))
    return _finish(writer, tmp, out)


def _lora_config(adapter_dir: Path) -> dict:
    try:
        lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GGUFExportError(f"{adapter_dir}: no readable adapter_config.json ({e})") from None
    if lora.get("peft_type", "LORA") != "LORA":
        raise GGUFExportError(f"{adapter_dir}: a {lora.get('peft_type')} adapter, not LoRA")
    unsupported = [
        key
        for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "trainable_token_indices")
        if lora.get(key)
    ]
    if unsupported:
        raise GGUFExportError(f"{adapter_dir}: {', '.join(unsupported)} cannot be written as a GGUF LoRA")
    return lora


def _alpha(lora: dict, rank: int) -> float:
    """adapter.lora.alpha such that llama.cpp's alpha / r equals peft's scaling."""
    alpha = float(lora["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r): the same as a plain LoRA with alpha · sqrt(r)
    return alpha * math.sqrt(rank) if lora.get("use_rslora") else alpha


def _lora_pairs(adapter_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Base tensor name (HF) -> (A [r, in], B [out, r]) from adapter_model.safetensors."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for key, data in _safetensors_file(adapter_dir / "adapter_model.safetensors"):
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                base = key.removeprefix("base_model.model.").removesuffix(marker) + ".weight"
                found.setdefault(base, {})[part] = data
                break
        else:
            raise GGUFExportError(
                f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix "
                "(embedding LoRA or saved modules are not supported)"
            )
    missing = [base for base, parts in found.items() if len(parts) != 2]
    if missing:
        raise GGUFExportError(f"{adapter_dir}: {missing[0]} has only one of lora_A / lora_B")
    return {base: (parts["lora_A"], parts["lora_B"]) for base, parts in found.items()}


def _safetensors_file(path: Path):
    from safetensors import safe_open

    if not path.exists():
        raise GGUFExportError(f"{path.parent}: no adapter_model.safetensors")
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            yield key, f.get_tensor(key).float().numpy()


# --- what the llama.cpp student backend serves ---------------------------------------------------


def tokenizer_source(hf_dir: str | Path) -> Path:
    """The packaged GGUF whose tokenizer `hf_dir` uses: a packaged student's own GGUF, or, for any
    other folder (a tiny test model), the packaged student with the same vocabulary."""
    from transformers import AutoTokenizer

    from distill import models

    hf_dir = Path(hf_dir)
    candidates = {models.STUDENT_DIR_NAME: models.student_gguf_path}
    for name, folder in models.PACKAGED_STUDENTS.items():
        candidates[folder] = lambda name=name: models.teacher_gguf_path(name)
    if hf_dir.name in candidates:
        return candidates[hf_dir.name]()
    vocab = AutoTokenizer.from_pretrained(hf_dir).get_vocab()
    for folder, gguf_file in candidates.items():
        converted = models.models_dir() / folder
        if (converted / "tokenizer.json").exists() and AutoTokenizer.from_pretrained(converted).get_vocab() == vocab:
            return gguf_file()
    raise GGUFExportError(
        f"{hf_dir}: its tokenizer is none of the packaged students' ({', '.join(candidates)}); "
        "llama.cpp serving needs one of them"
    )


def base_gguf(base_model: str | None = None, dtype: str = "f32") -> Path:
    """The GGUF of a student base (as `distill.models.student_path` resolves it), written once."""
    from distill.models import models_dir, student_path
    from kb.workspace import subdir

    hf_dir = Path(student_path(base_model)).resolve()
    # beside the converted models when it is one of them (shared like them), else in this workspace
    root = models_dir() if hf_dir.parent == models_dir().resolve() else subdir("models")
    out = root / "gguf" / f"{hf_dir.name}-{_short_hash(str(hf_dir))}.{dtype}.gguf"
    if not _fresh(out, hf_dir.glob("*.safetensors")):
        hf_to_gguf(hf_dir, out, tokenizer_source(hf_dir), dtype)
    return out


def adapter_gguf(adapter: str, dtype: str = "f32") -> Path:
    """The adapter's GGUF LoRA inside its folder, (re)written when older than its weights."""
    from distill.infer import adapter_dir, read_card
    from distill.models import student_path

    folder = adapter_dir(adapter)
    out = folder / ADAPTER_FILE.format(dtype=dtype)
    if not _fresh(out, [folder / "adapter_model.safetensors", folder / "adapter_config.json"]):
        base = read_card(adapter).get("base_model") or _peft_base(folder)
        lora_to_gguf(folder, out, student_path(base), dtype)
    return out


def served_files(base_model: str | None, adapter: str | None, dtype: str = "f32") -> tuple[Path, Path | None]:
    """(base GGUF, adapter GGUF or None) for llama.cpp: the base the adapter was trained on."""
    from distill.infer import read_card

    if adapter and base_model is None:
        base_model = read_card(adapter).get("base_model") or _peft_base(_adapter_folder(adapter))
    return base_gguf(base_model, dtype), adapter_gguf(adapter, dtype) if adapter else None


def packaged_gguf(base_model: str | None, adapter: str | None = None) -> Path:
    """The quantised GGUF a packaged student base was converted from (what it ships as)."""
    from distill import models
    from distill.infer import read_card

    if adapter and base_model is None:
        base_model = read_card(adapter).get("base_model") or _peft_base(_adapter_folder(adapter))
    folder = Path(models.student_path(base_model)).name
    if folder == models.STUDENT_DIR_NAME:
        return models.student_gguf_path()
    for name, packaged in models.PACKAGED_STUDENTS.items():
        if folder == packaged:
            return models.teacher_gguf_path(name)
    raise GGUFExportError(f"{base_model}: not a packaged student, so there is no packaged GGUF (use f32)")


def parameter_count(*files: Path | None) -> int:
    """Parameters stored in GGUF files (a base and its LoRA): what the transformers path counts."""
    import gguf

    return sum(int(t.n_elements) for f in files if f for t in gguf.GGUFReader(f).tensors)


def _adapter_folder(adapter: str) -> Path:
    from distill.infer import adapter_dir

    return adapter_dir(adapter)


def _peft_base(folder: Path) -> str | None:
    return _lora_config(folder).get("base_model_name_or_path")


def _fresh(out: Path, sources) -> bool:
    """`out` exists and is newer than every source file."""
    if not out.exists():
        return False
    built = out.stat().st_mtime
    return all(s.stat().st_mtime <= built for s in sources if s.exists())


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


# --- CLI ------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, rich_markup_mode=None)


@cli.command()
def export_adapter_cmd(
    adapter: str = typer.Argument(..., help="the adapter's name (under $NESY_HOME/adapters)"),
    format: str = typer.Option("gguf", "--format", help="gguf: a GGUF LoRA llama.cpp loads with --lora"),
    dtype: str = typer.Option("f32", "--dtype", help="f32 | f16"),
    with_base: bool = typer.Option(
        False, "--with-base", help="also write the GGUF of the base it was trained on (same dtype)"
    ),
) -> None:
    """Export a peft LoRA adapter as a GGUF LoRA for llama.cpp (written inside the adapter's folder)."""
    from distill.infer import AdapterNotFound
    from kb.workspace import named_path

    folder = named_path("adapters", adapter, "ADAPTER")
    if format != "gguf":
        raise GGUFExportError(f"--format must be gguf, not {format!r}")
    if dtype not in DTYPES:
        raise GGUFExportError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if not (folder / "adapter_config.json").exists():
        raise AdapterNotFound(f"no adapter {adapter!r} (looked in {folder})")
    lora = adapter_gguf(str(folder), dtype)
    typer.echo(f"adapter: {lora}")
    if with_base:
        base, _ = served_files(None, str(folder), dtype)
        typer.echo(f"base: {base}")
        typer.echo(f"serve: llama-server -m {base} --lora {lora}")
