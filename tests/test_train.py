"""Student training: loss masking, padding, every recipe on a tiny model, resume and stop.

Tiny randomly initialised Llama + the real SmolLM2 tokenizer (tests/student_fixtures.py); the
real 135M student runs only in the `slow` smoke tests at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from openai_stub import QuietHandler, chat_completion, reply, serve
from safetensors.torch import load_file
from student_fixtures import gsm8k_records, real_tokenizer, tiny_model, write_records  # noqa: F401

from distill import prompts
from distill.methods import METHODS, train
from distill.train import LengthGroupedSampler, PadCollator, Sample, encode, load_records

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return real_tokenizer()


def tiny_cfg(model: str, data: Path, method: str = "std-cot", **kw):
    base = dict(
        data=str(data), base_model=model, lora_r=4, lora_alpha=8, max_steps=3, batch_size=4, save_steps=50, output="t"
    )
    base.update(kw)
    return METHODS[method].config(**base)


def card_of(root: Path) -> dict:
    return json.loads((root / "card.json").read_text())


def prompt_samples(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "prompt_samples.jsonl").read_text().splitlines()]


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


# --- masking and padding ---------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_response_tokens(tokenizer):
    sample = Sample(prompts.cot_prompt("Tom has 3 apples and buys 2. How many?"), "3 + 2 = 5. The answer is 5.")
    enc, fit = encode(tokenizer, sample, max_length=512)
    assert fit == "whole"
    prompt_text, response_text = prompts.render(tokenizer, sample.user, sample.response)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    for i, (tok, lab) in enumerate(zip(ids, labels)):  # token by token
        if i < n_prompt:
            assert lab == -100, f"prompt token {i} ({tokenizer.decode([tok])!r}) is trained on"
        else:
            assert lab == tok, f"response token {i} ({tokenizer.decode([tok])!r}) is masked"
    assert tokenizer.decode(ids[:n_prompt]) == prompt_text
    trained = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
    assert trained == response_text and trained.startswith("3 + 2 = 5.")
    # The end-of-turn marker is trained (the student must learn to stop), though it is the pad id.
    assert ids[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>") and labels[-2] == ids[-2]


def test_a_too_long_prompt_loses_whole_demonstrations_never_its_head(tokenizer):
    # Old bug: encode kept the prompt's last tokens, so a long SKIntern prompt started mid-sentence
    # without the chat-template head or the task line.
    demos = [(f"Demo question {i} about apples and pears?", "word " * 60) for i in range(6)]
    full, *shorter = prompts.shrinking_prompts("Q?", "Solve it.", ["Knowledge item."], demos)
    sample = Sample(full, "It is 4.", "x", tuple(shorter))
    enc, fit = encode(tokenizer, sample, max_length=260)
    text = tokenizer.decode(enc["input_ids"])
    assert fit == "shortened"
    assert text.startswith("<|im_start|>") and prompts.task_line("Solve it.") in text
    assert "Knowledge item." in text and "Question: Q?" in text  # knowledge outlives demonstrations
    kept = text.count("Demo question")
    assert 0 < kept < 6 and f"Demo question {kept - 1} " in text  # whole demos, the first ones
    trained = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100]
    assert tokenizer.decode(trained).startswith("It is 4.<|im_end|>")
    # Nothing droppable left: the response's tail goes, never the prompt; no room: skipped.
    cut, fit = encode(tokenizer, Sample(prompts.cot_prompt("Q?"), "word " * 400), max_length=64)
    assert fit == "response_cut" and len(cut["input_ids"]) == 64 and cut["labels"][0] == -100
    assert tokenizer.decode(cut["input_ids"]).startswith(prompts.render(tokenizer, prompts.cot_prompt("Q?"))[0])
    assert encode(tokenizer, Sample("demo " * 300, "x"), max_length=48) == (None, "skipped")


def test_collator_pads_to_batch_longest_with_ignored_labels():
    collate = PadCollator(pad_id=2)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert collate.padding_fraction == pytest.approx(2 / 6)


def test_length_grouping_wastes_far_less_padding_than_random_batches(tokenizer, tmp_path):
    records = load_records(str(write_records(tmp_path / "records.jsonl", n=256)))
    feats = [encode(tokenizer, Sample(prompts.cot_prompt(r.question), r.rationale), 512)[0] for r in records]
    lengths = [len(f["input_ids"]) for f in feats]

    def padding(order):
        collate = PadCollator(2)
        for i in range(0, len(order), 8):
            collate([feats[j] for j in order[i : i + 8]])
        return collate.padding_fraction

    grouped = list(iter(LengthGroupedSampler(lengths, group=8 * 16, seed=0)))
    shuffled = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(grouped) == list(range(len(feats)))  # every sample exactly once
    assert padding(grouped) < 0.5 * padding(shuffled)
    assert padding(grouped) < 0.1


def test_sampler_order_depends_only_on_seed_and_epoch():
    s = LengthGroupedSampler(list(range(50)), group=10, seed=3)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first


# --- recipes on a tiny model ------------------------------------------------------------------


def test_std_cot_writes_metrics_card_and_a_plain_peft_loadable_adapter(
    tiny_model, gsm8k_records, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("NESY_JOB_DIR", str(tmp_path))
    root = train(tiny_cfg(tiny_model, gsm8k_records, method="std-cot", max_steps=3))
    assert card_of(root)["truncated"] == 0 and card_of(root)["stages"]["main"]["fit"]["whole"] == 12
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and all(line["total"] == 3 for line in lines)
    assert all({"loss", "lr", "tokens_per_s", "elapsed", "eta"} <= line.keys() for line in lines)
    assert all(line["tokens_per_s"] > 0 for line in lines[1:])
    card = json.loads((root / "card.json").read_text())
    assert card["method"] == "std-cot" and card["hyperparameters"]["lora_r"] == 4
    assert card["stages"]["main"]["steps"] == 3 and card["stages"]["main"]["samples"] == 12
    assert 0 <= card["stages"]["main"]["padding_fraction"] < 0.3
    assert "AutoPeftModelForCausalLM" in (root / "README.md").read_text()
    # LoRA B starts at zero: training must have moved it.
    weights = adapter_weights(root)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert not any("lm_head" in k for k in weights)  # all linear layers except the head
    # Plain transformers + peft load it, and it changes the model's output.
    plain = AutoPeftModelForCausalLM.from_pretrained(str(root))
    x = torch.tensor([[1, 2, 3, 4]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        assert not torch.allclose(plain(x).logits, base(x).logits)
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(root))
        assert torch.allclose(plain(x).logits, again(x).logits)


def test_etd_mixes_thoughts_with_triggers_and_eotd_keeps_eot(tiny_model, tmp_path):
    data = write_records(tmp_path / "etd" / "records.jsonl", n=6, thoughts=("cot", "pot", "eot"))
    etd = train(tiny_cfg(tiny_model, data, method="etd", output="etd", max_steps=1))
    eotd = train(tiny_cfg(tiny_model, data, method="eotd", output="eotd", max_steps=1))
    etd_card, eotd_card = card_of(etd), card_of(eotd)
    assert etd_card["stages"]["main"]["samples"] == 18 and eotd_card["stages"]["main"]["samples"] == 6
    assert etd_card["method"] == "etd" and eotd_card["inference"]["thought"] == "eot"
    # Each rationale is trained behind the trigger of its own thought type (mutant: no triggers).
    rationale_type = {r.rationale: r.thought for r in load_records(str(data))}
    seen = set()
    for row in prompt_samples(etd / "stages" / "main"):
        thought = rationale_type[row["response"]]
        assert row["user"].endswith(f"\n{prompts.TRIGGERS[thought]}\n"), (thought, row["user"])
        seen.add(thought)
    assert seen == {"cot", "pot", "eot"}
    assert all(r["user"].endswith(prompts.TRIGGERS["eot"] + "\n") for r in prompt_samples(eotd / "stages" / "main"))


def _add_knowledge(records_path: Path, kind: str, status: str = "accepted") -> list[str]:
    from kb.schema import Entry, Source
    from kb.store import KBStore

    store, ids = KBStore(), []
    for r in load_records(str(records_path)):
        e = Entry(
            id=f"gsm8k-{r.example_id}-{kind}",
            task="gsm8k",
            status=status,
            learning_summary="Read the quantities carefully, then combine them step by step in order.",
            supplementary_knowledge="Half of a number n is n / 2; a total is the sum of its parts.",
            source=Source(kind=kind, dataset="gsm8k", example_id=r.example_id, question=r.question),
        )
        store.upsert(e, by="test")
        ids.append(e.id)
    return ids


def test_skintern_stages_shrink_prompts_and_continue_from_previous_adapter(tiny_model, tmp_path):
    data = write_records(tmp_path / "sk" / "records.jsonl", n=6)
    _add_knowledge(data, "example_knowledge")
    # One Adam step moves every LoRA B weight by about ±lr from where the stage started (constant lr,
    # no warmup). A fresh stage starts at B = 0, so after its step |B| <= lr; a stage that continues
    # from the previous adapter starts at ±lr and reaches ±2·lr wherever both steps agree in sign.
    lr = 1e-2
    root = train(
        tiny_cfg(
            tiny_model,
            data,
            method="skintern",
            stages=3,
            demos=2,
            learning_rate=lr,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            max_steps=1,
        )
    )
    state = json.loads((root / "state.json").read_text())["stages"]
    assert list(state) == ["stage0", "stage1", "stage2"]
    tokens = [state[s]["prompt_tokens_mean"] for s in state]
    assert tokens[0] > tokens[1] > tokens[2]
    assert all(state[s]["truncated"] == 0 for s in state)  # max length fitted to the longest sample
    tok = real_tokenizer()
    records = load_records(str(data))
    from distill.train import question_of, task_description_of

    question_only = sum(
        len(
            tok(
                prompts.render(tok, prompts.cot_prompt(question_of(r), task_description_of(r)))[0],
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in records
    ) / len(records)
    assert tokens[2] == pytest.approx(question_only)  # last stage: the question only
    largest = [
        max(v.abs().max().item() for k, v in adapter_weights(root / "stages" / s).items() if "lora_B" in k)
        for s in state
    ]
    assert largest[0] == pytest.approx(lr, rel=0.05)
    assert largest[1] > 1.5 * lr and largest[2] > 2.5 * lr  # each stage went on from the previous one
    for key, value in adapter_weights(root).items():
        assert torch.equal(value, adapter_weights(root / "stages" / "stage2")[key])


def test_skintern_refuses_examples_without_knowledge_and_names_them(tiny_model, tmp_path):
    from distill.train import TrainingDataError

    data = write_records(tmp_path / "sk" / "records.jsonl", n=4)
    ids = _add_knowledge(data, "example_knowledge")
    from kb.store import KBStore

    KBStore().delete(ids[1], expected_version=None, by="test")
    missing = load_records(str(data))[1].example_id
    with pytest.raises(TrainingDataError, match=f"1 of 4 have no example_knowledge entry.*{missing}"):
        train(tiny_cfg(tiny_model, data, method="skintern", stages=2, demos=1, output="sk-missing"))
    assert not (tmp_path / "workspace" / "adapters" / "sk-missing").exists()


class FakeTeacher(QuietHandler):
    """An OpenAI-compatible chat-completions endpoint standing in for the teacher LLM."""

    calls: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeTeacher.calls.append(body)
        text = (
            "Learning Summary: Identify each quantity, write the operation it implies, and check "
            "the units before answering.\nSupplementary Knowledge: Half of a quantity is the "
            "quantity divided by two; totals add their parts.\nConcepts: halves, totals"
        )
        reply(self, 200, chat_completion(text, body["model"]))


@pytest.fixture
def fake_teacher():
    FakeTeacher.calls = []
    with serve(FakeTeacher) as url:
        yield url


def test_nesycd_full_pipeline_resumes_by_stage(tiny_model, tmp_path, fake_teacher):
    from kb.store import KBStore

    data = write_records(tmp_path / "ncd" / "records.jsonl", n=6)
    cfg = tiny_cfg(
        tiny_model,
        data,
        method="nesycd",
        output="ncd",
        max_steps=1,
        max_new_tokens=8,
        teacher=fake_teacher,
        teacher_model="fake-teacher",
        auto_accept=True,
    )
    root = train(cfg)
    errors = [json.loads(line) for line in (root / "errors.jsonl").read_text().splitlines()]
    # A random tiny student gets every question wrong; each error row has the documented fields.
    assert len(errors) == 6
    assert all(
        {"example_id", "dataset", "task", "question", "prompt", "response", "answer"} <= e.keys() for e in errors
    )
    assert "Question:" in errors[0]["prompt"] and prompts.ANSWER_FORMAT in errors[0]["prompt"]
    assert len(FakeTeacher.calls) == 6
    assert {c["temperature"] for c in FakeTeacher.calls} == {0.8}  # the reference's sampling
    assert all(c["max_tokens"] >= 1024 for c in FakeTeacher.calls)
    entries = KBStore().query(source_kind="error_analysis", limit=100).entries
    assert len(entries) == 6 and {e.status for e in entries} == {"accepted"}
    state = json.loads((root / "state.json").read_text())["stages"]
    assert list(state) == ["sp", "knowledge", "se"]
    assert state["se"]["prompt_tokens_mean"] > state["sp"]["prompt_tokens_mean"]  # knowledge in S_E prompts
    # Rerun with --resume: every stage is done, nothing is trained or asked again.
    before = adapter_weights(root)
    train(type(cfg)(**{**cfg.__dict__, "resume": True}))
    assert len(FakeTeacher.calls) == 6
    assert all(torch.equal(before[k], v) for k, v in adapter_weights(root).items())


def test_nesycd_reuses_a_std_cot_adapter_as_its_sp_only_when_trained_the_same_way(tiny_model, tmp_path, fake_teacher):
    from distill.train import ConfigError

    data = write_records(tmp_path / "reuse" / "records.jsonl", n=4)
    sp = train(tiny_cfg(tiny_model, data, method="std-cot", output="baseline", max_steps=1))
    cfg = tiny_cfg(
        tiny_model,
        data,
        method="nesycd",
        output="ncd-reuse",
        max_steps=1,
        max_new_tokens=8,
        teacher=fake_teacher,
        teacher_model="fake-teacher",
        sp_adapter="baseline",
    )
    root = train(cfg)
    state = json.loads((root / "state.json").read_text())["stages"]
    assert "sp" not in state and not (root / "stages" / "sp").exists()  # not trained again
    errors = [json.loads(line) for line in (root / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 4 and sp.name == "baseline"
    other = write_records(tmp_path / "other" / "records.jsonl", n=3)
    with pytest.raises(ConfigError, match="--sp-adapter baseline"):
        train(
            tiny_cfg(
                tiny_model,
                other,
                method="nesycd",
                output="ncd-bad",
                max_steps=1,
                teacher=fake_teacher,
                teacher_model="fake-teacher",
                sp_adapter="baseline",
            )
        )


# --- resume after a kill, stop on SIGTERM --------------------------------------------------------


def _train_cmd(model: str, data: Path, output: str, max_steps: int, save_steps: int, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.cli",
        "train",
        "std-cot",
        "--data",
        str(data),
        "--output",
        output,
        "--base-model",
        model,
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--max-steps",
        str(max_steps),
        "--batch-size",
        "2",
        "--save-steps",
        str(save_steps),
        *extra,
    ]


def _wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def test_resume_after_kill_gives_the_same_adapter(tiny_model, gsm8k_records, workspace):
    env = dict(os.environ, NESY_HOME=str(workspace))
    proc = subprocess.Popen(
        _train_cmd(tiny_model, gsm8k_records, "killed", 6, 2),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = workspace / "adapters" / "killed" / "stages" / "main" / "checkpoints" / "checkpoint-2"
    reached = _wait_for(lambda: (ckpt / "trainer_state.json").exists(), proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert reached, "training never wrote checkpoint-2"
    assert not (workspace / "adapters" / "killed" / "adapter_model.safetensors").exists()
    resumed = train(
        tiny_cfg(tiny_model, gsm8k_records, output="killed", max_steps=6, save_steps=2, batch_size=2, resume=True)
    )
    card = json.loads((resumed / "card.json").read_text())
    assert card["stages"]["main"]["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    straight = train(tiny_cfg(tiny_model, gsm8k_records, output="straight", max_steps=6, save_steps=2, batch_size=2))
    a, b = adapter_weights(resumed), adapter_weights(straight)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_sigterm_stops_at_next_step_with_a_checkpoint(tiny_model, gsm8k_records, workspace, tmp_path):
    env = dict(os.environ, NESY_HOME=str(workspace), NESY_JOB_DIR=str(tmp_path))
    proc = subprocess.Popen(
        _train_cmd(tiny_model, gsm8k_records, "stopped", 500, 1000),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 3, stderr[-2000:]
    checkpoints = list((workspace / "adapters" / "stopped" / "stages" / "main" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1  # save_steps=1000, so this one was written because of the stop
    step = int(checkpoints[0].name.split("-")[1])
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 2 <= step <= last_logged + 1 and step < 500
    assert not (workspace / "adapters" / "stopped" / "adapter_model.safetensors").exists()


# --- the real 135M student: a handful of steps per method ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["std-cot", "etd", "skintern"])
def test_real_student_smoke(method, tmp_path):
    from distill.models import student_path

    data = write_records(tmp_path / "real" / "records.jsonl", n=4, thoughts=("cot", "pot", "eot"))
    if method == "skintern":
        _add_knowledge(data, "example_knowledge")
    extra = dict(stages=2, demos=1) if method == "skintern" else {}
    cfg = METHODS[method].config(
        data=str(data),
        output=f"real-{method}",
        max_steps=2,
        batch_size=2,
        max_length=160,
        lora_r=8,
        lora_alpha=16,
        **extra,
    )
    root = train(cfg)
    card = json.loads((root / "card.json").read_text())
    assert card["base_model"] == student_path()
    assert all(m["train_loss"] < 20 for m in card["stages"].values() if "train_loss" in m)
    assert (root / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_real_student_nesycd_smoke(tmp_path, fake_teacher):
    data = write_records(tmp_path / "real" / "records.jsonl", n=2)
    cfg = METHODS["nesycd"].config(
        data=str(data),
        output="real-nesycd",
        max_steps=1,
        batch_size=2,
        lora_r=8,
        lora_alpha=16,
        max_new_tokens=16,
        teacher=fake_teacher,
        teacher_model="fake-teacher",
    )
    root = train(cfg)
    state = json.loads((root / "state.json").read_text())["stages"]
    assert list(state) == ["sp", "knowledge", "se"]
    rows = (root / "sp_answers.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all(json.loads(r)["response"] for r in rows)
