"""The student as a served model: GGUF export (base + LoRA), the llama.cpp backend against the real
server (xllamacpp), the OpenAI-compatible URL backend against tests/openai_stub.py, `nesy
export-adapter` and `nesy answer --backend`.

The adapters here have large random LoRA weights (a trained tiny adapter's B is ~0 after a step, so
a wrong export would go unnoticed): every test that compares backends first checks that the adapter
changes the answer.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from openai_stub import ServesAdapters, serve
from student_fixtures import tiny_model  # noqa: F401

from distill import gguf_export
from distill.gguf_export import GGUFExportError, TensorNames, rotary_rows
from distill.infer import InferenceError, Student
from distill.student_server import StudentBackendError, check_backend

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "What is 7 times 6?",
    "A train travels 60 miles in 2 hours. What is its speed in miles per hour?",
]


def make_adapter(
    base: str, folder: Path, *, r: int = 4, scale_b: float = 0.5, template: str = "chat", seed: int = 0, **lora_kw
) -> Path:
    """A peft LoRA on every linear layer with seeded random A and B, and a card naming the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", **lora_kw))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * (scale_b if "lora_B" in name else 0.2))
    peft.save_pretrained(folder)
    (folder / "card.json").write_text(
        json.dumps(
            {
                "method": "std-cot",
                "base_model": base,
                "template": template,
                "inference": {"thought": "cot", "max_new_tokens": 24},
            }
        )
    )
    return folder


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "tiny-lora")


def nesy(*argv: str) -> tuple[int, str]:
    from distill.cli import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_:
        run(list(argv))
    return exit_.value.code, out.getvalue()


# --- GGUF export -----------------------------------------------------------------------------------


def test_base_gguf_holds_the_packaged_students_weights_exactly(tmp_path):
    """The f32 base written from the converted HF folder == the shipped Q4_1 GGUF dequantised: the
    same tensors, names and rotary row order (transformers undid it on conversion; we redo it)."""
    import gguf
    from safetensors import safe_open

    from distill.models import student_gguf_path, student_path

    hf_dir = Path(student_path())
    config = json.loads((hf_dir / "config.json").read_text())
    names = TensorNames(config)
    source = {t.name: t for t in gguf.GGUFReader(student_gguf_path()).tensors}
    with safe_open(hf_dir / "model.safetensors", framework="numpy") as f:
        for key in (
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
            "model.norm.weight",
            "model.embed_tokens.weight",
        ):
            name, heads = names(key)
            ours = f.get_tensor(key)
            ours = rotary_rows(ours, heads) if heads else ours
            theirs = gguf.quants.dequantize(source[name].data, source[name].tensor_type).reshape(ours.shape)
            assert np.array_equal(ours, theirs), key
    # and the architecture keys written from the HF config are the shipped GGUF's
    writer = gguf.GGUFWriter(tmp_path / "header.gguf", "llama")
    gguf_export.add_hyperparameters(writer, config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    ours = {
        k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "header.gguf").fields.items() if k.startswith("llama.")
    }
    shipped = {
        k: f.contents() for k, f in gguf.GGUFReader(student_gguf_path()).fields.items() if k.startswith("llama.")
    }
    assert ours == shipped


def test_lora_gguf_layout_is_llama_cpps(tiny_adapter, tiny_model, tmp_path):
    import gguf
    from safetensors.torch import load_file

    out = gguf_export.lora_to_gguf(tiny_adapter, tmp_path / "lora.gguf", tiny_model)
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 8.0,
    }
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(tiny_adapter / "adapter_model.safetensors")
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    assert len(tensors) == len(peft) == 2 * 7 * config["num_hidden_layers"]
    for layer, module, gguf_name, heads in [
        (0, "self_attn.q_proj", "attn_q", 4),
        (1, "self_attn.k_proj", "attn_k", 2),
        (1, "self_attn.v_proj", "attn_v", None),
        (0, "mlp.down_proj", "ffn_down", None),
    ]:
        prefix = f"base_model.model.model.layers.{layer}.{module}"
        a, b = peft[f"{prefix}.lora_A.weight"].numpy(), peft[f"{prefix}.lora_B.weight"].numpy()
        lora_a, lora_b = (
            tensors[f"blk.{layer}.{gguf_name}.weight.lora_a"],
            tensors[f"blk.{layer}.{gguf_name}.weight.lora_b"],
        )
        # ggml order (ne): A is [in, r], B is [r, out] — what llama.cpp checks against the base tensor
        assert list(lora_a.shape) == [a.shape[1], 4] and list(lora_b.shape) == [4, b.shape[0]]
        assert np.array_equal(np.asarray(lora_a.data), a)
        assert np.array_equal(np.asarray(lora_b.data), rotary_rows(b, heads) if heads else b)


def test_lora_variants_map_or_refuse(tiny_model, tmp_path):
    import gguf

    rs = make_adapter(tiny_model, tmp_path / "rs", r=4, use_rslora=True)
    out = gguf_export.lora_to_gguf(rs, tmp_path / "rs.gguf", tiny_model)
    # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r): alpha · sqrt(r) gives the same
    assert gguf.GGUFReader(out).fields["adapter.lora.alpha"].contents() == pytest.approx(8.0 * 2)
    dora = make_adapter(tiny_model, tmp_path / "dora", use_dora=True)
    with pytest.raises(GGUFExportError, match="use_dora"):
        gguf_export.lora_to_gguf(dora, tmp_path / "dora.gguf", tiny_model)
    assert not (tmp_path / "dora.gguf").exists() and not list(tmp_path.glob(".dora.gguf*"))


def test_export_adapter_command(tiny_adapter, workspace):
    shutil.copytree(tiny_adapter, workspace / "adapters" / "tiny")
    code, output = nesy("export-adapter", "tiny")
    assert code == 0, output
    written = workspace / "adapters" / "tiny" / "adapter-f32.gguf"
    assert f"adapter: {written}" in output and written.stat().st_size > 0
    for argv, message in [
        (["../tiny"], "error: ADAPTER takes a name"),
        (["tiny", "--format", "onnx"], "gguf"),
        (["nope"], "error: no adapter 'nope'"),
    ]:
        code, output = nesy("export-adapter", *argv)
        assert code == 2 and output.strip().splitlines()[-1].startswith("error:") and message in output, output


# --- the llama.cpp backend (the real server) -------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_adapter, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # module scope: its own workspace for the GGUFs and log
        mp.setenv("NESY_HOME", str(tmp_path_factory.mktemp("served-home")))
        student = Student(adapter=str(tiny_adapter), backend="llama.cpp")
    yield student
    student.backend.close()


def test_llama_cpp_backend_answers_token_for_token_as_transformers(served, tiny_adapter, tiny_model):
    import torch

    local = Student(adapter=str(tiny_adapter))
    ours, theirs = local.answer(QUESTIONS, max_new_tokens=24), served.answer(QUESTIONS, max_new_tokens=24)
    base = Student(tiny_model, method="std-cot").answer(QUESTIONS, max_new_tokens=24)
    assert all(b.text != o.text for b, o in zip(base, ours))  # the adapter matters
    assert [t.text for t in theirs] == [o.text for o in ours]
    assert [t.prompt for t in theirs] == [o.prompt for o in ours]
    assert [t.prompt_tokens for t in theirs] == [o.prompt_tokens for o in ours]
    assert served.params == local.params
    # token ids, not only texts: one prompt at a time through peft vs the server
    for user in (o.prompt for o in ours):
        ids = local.tokenizer(local.render(user), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            row = local.model.generate(
                **ids, max_new_tokens=24, do_sample=False, pad_token_id=local.tokenizer.pad_token_id
            )[0]
        expected = row[ids["input_ids"].shape[1] :].tolist()
        got = served.backend.generate([user], [served.render(user)], 24)[0].tokens
        assert list(got) == expected


def test_llama_cpp_backend_streams_and_refuses_the_logit_probe(served):
    text = served.answer(QUESTIONS[:1], max_new_tokens=24)[0].text
    pieces = list(served.stream(QUESTIONS[0], max_new_tokens=24))
    assert len(pieces) > 1 and "".join(pieces).strip() == text
    assert len(list(served.stream(QUESTIONS[0], max_new_tokens=24, stop=lambda: True))) == 1  # a cancelled job
    with pytest.raises(InferenceError, match="--backend transformers"):
        served.answer(QUESTIONS[:1], max_new_tokens=4, kb_index=object(), adaptive_threshold=0.5)


def test_llama_cpp_server_ends_with_the_process_that_started_it(tiny_model, tmp_path):
    """An evaluation killed with SIGKILL leaves no llama.cpp server behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distill.llama_server import alive

    base = gguf_export.hf_to_gguf(tiny_model, tmp_path / "tiny.gguf", gguf_export.tokenizer_source(tiny_model))
    script = (
        "import sys, time\nfrom distill.student_server import StudentServer\n"
        f"s = StudentServer({str(base)!r}, n_parallel=1, n_ctx=256, threads=1).start()\n"
        "print(s.proc.pid, flush=True)\ntime.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NESY_HOME": str(tmp_path / "home")},
    )
    server = int(parent.stdout.readline())
    assert alive(server)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(server)


def test_backend_option_is_checked():
    assert check_backend("llama.cpp:f16") == "llama.cpp:f16"
    # one canonical name, so a report started with `llama.cpp` continues with `llama.cpp:f32`
    assert check_backend("llama.cpp") == "llama.cpp:f32"
    for bad in ("llama", "llama.cpp:q4", "ftp://x", ""):
        with pytest.raises(StudentBackendError, match="--backend must be"):
            check_backend(bad)
    code, output = nesy("answer", "q", "--backend", "vllm")
    assert code == 2 and output.strip().splitlines()[-1].startswith("error: --backend must be")


# --- an OpenAI-compatible server (vLLM --enable-lora) ----------------------------------------------


def test_url_backend_asks_for_the_adapter_by_its_name(tiny_adapter):
    ServesAdapters.bodies = []
    with serve(ServesAdapters) as url:
        student = Student(adapter=str(tiny_adapter), backend=url)
        result = student.answer(QUESTIONS[:1], max_new_tokens=32)[0]
        code, output = nesy("answer", QUESTIONS[0], "--adapter", str(tiny_adapter), "--backend", url, "--json")
    assert result.extracted == "7" and result.prompt_tokens == 77
    body = ServesAdapters.bodies[0]
    assert body["model"] == "tiny-lora" and body["temperature"] == 0.0 and body["max_tokens"] == 32
    assert body["messages"] == [{"role": "user", "content": result.prompt}]  # the server applies the template
    assert code == 0 and json.loads(output[output.index("{") :])["extracted"] == "7"


def test_url_backend_errors_are_one_line(tiny_adapter, tiny_model, tmp_path):
    with serve(ServesAdapters) as url:
        student = Student(tiny_model, backend=url)  # the base under its own name: not served here
        with pytest.raises(StudentBackendError, match="does not exist"):
            student.answer(QUESTIONS[:1], max_new_tokens=8)
    plain = make_adapter(tiny_model, tmp_path / "plain", template="plain")
    with pytest.raises(StudentBackendError, match="'plain' template"):
        Student(adapter=str(plain), backend="http://127.0.0.1:9/v1")


def read_report(workspace: Path, name: str) -> tuple[list[dict], dict, dict, dict, dict]:
    """(samples rows, results.json, models.json, config.json, the first harness results file) of a report."""
    folder = workspace / "evals" / name
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    results, models, config = (
        json.loads((folder / f).read_text()) for f in ("results.json", "models.json", "config.json")
    )
    harness = json.loads(next((folder / "harness").glob("*/results_*.json")).read_text())
    return rows, results, models, config, harness


def test_eval_through_a_url_backend_scores_what_the_server_answered(tiny_adapter, workspace):
    """`nesy eval --backend URL`: every answer comes from the server (asked for the adapter by its
    name), and the report says so in each row, per configuration and in the harness files."""
    shutil.copytree(tiny_adapter, workspace / "adapters" / "tiny-lora")
    ServesAdapters.bodies = []
    with serve(ServesAdapters) as url:
        code, output = nesy("eval", "--limit", "2", "--config", "sft=tiny-lora", "--backend", url, "--name", "served")
    assert code == 0, output
    rows, results, models, config, harness = read_report(workspace, "served")
    assert len(rows) == 2 and len(ServesAdapters.bodies) == 2
    assert sorted(b["messages"][0]["content"] for b in ServesAdapters.bodies) == sorted(r["prompt"] for r in rows)
    assert {b["model"] for b in ServesAdapters.bodies} == {"tiny-lora"}
    for r in rows:
        assert (r["backend"], r["output"], r["extracted"], r["prompt_tokens"]) == (url, ServesAdapters.answer, "7", 77)
    assert results["configs"]["sft"]["backend"] == url and f"| backend | {url} |" in output
    assert models["sft"]["backend"] == url and models["sft"]["device"] is None and config["backend"] == url
    assert harness["config"]["nesy"]["backend"] == url and harness["config"]["model_args"].endswith(f"backend={url}")
    # continuing the report in process would score two backends' answers as one configuration
    code, output = nesy("eval", "--limit", "3", "--config", "sft=tiny-lora", "--name", "served")
    assert code == 2 and output.strip().splitlines()[-1] == (
        f"error: report 'served' was generated with --backend {url}: continue it with that backend, "
        "or give this run another --name"
    )
    assert len(read_report(workspace, "served")[0]) == 2


@pytest.mark.parametrize("bad", ["vllm", "llama.cpp:q4", "ftp://gpu-box/v1"])
def test_eval_refuses_a_bad_backend_before_making_a_report(bad, workspace):
    code, output = nesy("eval", "--limit", "1", "--backend", bad, "--name", "never")
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --backend must be"), output
    assert not (workspace / "evals" / "never").exists()  # checked before the report folder is made


# --- the real 135M student -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_135m_student_with_a_lora_is_token_exact_on_the_f32_base(tmp_path):
    """SmolLM2-135M + a random LoRA (r 8): llama.cpp on the f32 base gives transformers' greedy
    tokens; on the shipped Q4_1 base it runs too (quantisation error: equality not expected)."""
    from distill.data import format_question, get_dataset
    from distill.models import student_path

    adapter = make_adapter(student_path(), tmp_path / "real-lora", r=8, scale_b=0.02)
    spec = get_dataset("gsm8k")
    questions = [format_question(e) for e in spec.load("test", limit=3, seed=0)]
    task = spec.task_description(None)
    local = Student(adapter=str(adapter))
    ours = local.answer(questions, max_new_tokens=48, task_description=task)
    base = Student(method="std-cot").answer(questions, max_new_tokens=48, task_description=task)
    assert any(b.text != o.text for b, o in zip(base, ours))  # the adapter matters
    for backend in ("llama.cpp", "llama.cpp:packaged"):
        remote = Student(adapter=str(adapter), backend=backend)
        theirs = remote.answer(questions, max_new_tokens=48, task_description=task)
        remote.backend.close()
        if backend == "llama.cpp":
            assert [t.text for t in theirs] == [o.text for o in ours]
        else:
            assert all(t.text for t in theirs)


@pytest.mark.slow
def test_real_135m_eval_through_llama_cpp_gives_the_transformers_rows(workspace):
    """`nesy eval --backend llama.cpp` on the real student + a LoRA: the same outputs, extracted
    answers and prompt lengths as the in-process batched path, recorded as llama.cpp:f32."""
    from distill.models import student_path

    make_adapter(student_path(), workspace / "adapters" / "real-lora", r=8, scale_b=0.02)
    reports = {}
    for backend in ("transformers", "llama.cpp"):
        name = backend.replace(".", "-")
        code, output = nesy("eval", "--limit", "3", "--config", "sft=real-lora", "--backend", backend, "--name", name)
        assert code == 0, output
        reports[backend] = read_report(workspace, name)
    (ours, *_), (theirs, results, models, config, harness) = reports["transformers"], reports["llama.cpp"]
    assert [r["backend"] for r in ours] == ["transformers"] * 3 and [r["backend"] for r in theirs] == [
        "llama.cpp:f32"
    ] * 3
    for key in ("example_id", "output", "extracted", "prompt_tokens"):
        assert [r[key] for r in theirs] == [r[key] for r in ours], key
    assert results["configs"]["sft"]["backend"] == models["sft"]["backend"] == "llama.cpp:f32"
    assert config["backend"] == harness["config"]["nesy"]["backend"] == "llama.cpp:f32"  # one canonical name
