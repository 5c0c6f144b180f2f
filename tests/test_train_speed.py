"""Training speed levers that must not change what is learned: packing and the compute dtype.

Tiny randomly initialised Llama + the real SmolLM2 tokenizer (tests/student_fixtures.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from student_fixtures import gsm8k_records, real_tokenizer, tiny_model, write_records  # noqa: F401

from distill import hardware, prompts
from distill.methods import METHODS, train
from distill.train import (
    PackCollator,
    PadCollator,
    ResponseLogits,
    Sample,
    encode,
    packing_is_exact,
    response_logits_exact,
)


@pytest.fixture(scope="module")
def tokenizer():
    return real_tokenizer()


@pytest.fixture
def features(tokenizer):
    questions = ["Tom has 3 apples and buys 2. How many?", "A train goes 60 km in 2 hours. Speed?", "Half of 18 is?"]
    answers = ["3 + 2 = 5. The answer is 5.", "60 / 2 = 30 km per hour. The answer is 30.", "The answer is 9."]
    return [encode(tokenizer, Sample(prompts.cot_prompt(q), a), 512)[0] for q, a in zip(questions, answers)]


@pytest.fixture
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
    model.config.use_cache = False  # as fit_lora trains it
    return model


@pytest.fixture(autouse=True)
def fresh_dtype(monkeypatch):
    monkeypatch.delenv("NESY_DTYPE", raising=False)
    hardware.compute_dtype.cache_clear()
    yield
    hardware.compute_dtype.cache_clear()


@torch.no_grad()
def test_packed_batch_has_the_loss_of_the_padded_batch(model, features, tokenizer):
    padded = PadCollator(tokenizer.pad_token_id)(features)
    packed = PackCollator()(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert "attention_mask" not in packed  # no padding: the position ids carry the boundaries
    assert model(**padded).loss.item() == pytest.approx(model(**packed).loss.item(), abs=1e-5)
    # Without the position ids, or with a KV cache on, the samples would read each other.
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    assert abs(model(**leaky).loss.item() - model(**padded).loss.item()) > 1e-3
    assert abs(model(**packed, use_cache=True).loss.item() - model(**padded).loss.item()) > 1e-3


def test_packing_check_refuses_a_model_that_ignores_position_ids(model, features):
    assert packing_is_exact(model, features)
    model.config.use_cache = True  # the default: a cache hides the packed-sample boundaries
    assert not packing_is_exact(model, features)
    model.config.use_cache = False

    class IgnoresPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, position_ids=None, **kwargs):
            return self.inner(**kwargs)

    assert not packing_is_exact(IgnoresPositions(model), features)


@pytest.mark.parametrize("collate", ["packed", "padded"])
def test_logits_only_at_response_positions_give_the_full_loss_and_gradients(model, features, tokenizer, collate):
    collate = PackCollator() if collate == "packed" else PadCollator(tokenizer.pad_token_id)
    full, kept = collate(features), ResponseLogits(collate)(features)
    targets = sum(sum(label != -100 for label in f["labels"]) for f in features)
    out = model(**kept)
    assert out.logits.shape[0] == targets < sum(len(f["input_ids"]) for f in features)
    out.loss.backward()
    kept_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(**full).loss.backward()
    assert out.loss.item() == pytest.approx(model(**full).loss.item(), abs=1e-5)
    for p, g in zip(model.parameters(), kept_grads):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert response_logits_exact(model, collate, features)


def test_response_logits_check_refuses_a_model_that_ignores_logits_to_keep(model, features):
    class AllLogits(torch.nn.Module):  # an older model: projects every position whatever it is asked
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits_to_keep=None, **kwargs):
            return self.inner(**kwargs)  # the targets of the kept positions meet every position's logits

    assert response_logits_exact(model, PackCollator(), features)
    assert not response_logits_exact(AllLogits(model), PackCollator(), features)


def tiny_run(monkeypatch, tiny_model, records, job, **options) -> dict:
    """Std-CoT on the tiny model, its progress in `job`; the main stage's metrics from the card."""
    job.mkdir()
    monkeypatch.setenv("NESY_JOB_DIR", str(job))
    cfg = METHODS["std-cot"].config(
        data=str(records), base_model=tiny_model, lora_r=4, lora_alpha=8, batch_size=4, learning_rate=1e-2, **options
    )
    return json.loads((train(cfg) / "card.json").read_text())["stages"]["main"]


def losses(job_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_packs_counts_every_token_and_autocasts_to_the_machine_dtype(
    tiny_model, gsm8k_records, tmp_path, monkeypatch
):
    runs = {}
    for dtype in ("fp32", "bf16"):
        monkeypatch.setenv("NESY_DTYPE", dtype)
        hardware.compute_dtype.cache_clear()
        job = tmp_path / dtype
        stage = tiny_run(monkeypatch, tiny_model, gsm8k_records, job, max_steps=3, output=f"speed-{dtype}")
        runs[dtype] = (stage, losses(job))
    stage, fp32 = runs["fp32"]
    assert stage["packed"] and stage["padding_fraction"] == 0 and stage["dtype"] == "fp32"
    assert stage["response_logits_only"]
    # 12 samples, 3 steps of 4 = one epoch: every token of every sample counted once (the pad id
    # is the end-of-turn token, so counting "non-padding" ids would miss real tokens)
    tok = real_tokenizer()
    from distill.methods.std_cot import samples
    from distill.train import load_records

    total = sum(
        len(encode(tok, s, stage["max_length"])[0]["input_ids"]) for s in samples(load_records(str(gsm8k_records)))
    )
    assert stage["tokens"] == total
    stage, bf16 = runs["bf16"]
    assert stage["dtype"] == "bf16"
    assert bf16 != fp32  # bf16 autocast really ran …
    assert bf16 == pytest.approx(fp32, rel=0.02)  # … and the loss curve is the same within noise


def test_gradient_checkpointing_recomputes_layers_and_learns_the_same(tiny_model, gsm8k_records, tmp_path, monkeypatch):
    """The memory lever for long prompts: each layer runs again in the backward pass (its activations
    were not kept), and the loss curve is the one training without it gives."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    calls = {"n": 0}  # the MLP inside each decoder layer (the layer's own forward is the checkpoint wrapper)
    forward = LlamaMLP.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaMLP, "forward", counted)
    monkeypatch.setenv("NESY_DTYPE", "fp32")
    runs = {}
    for checkpointing in (False, True):
        job = tmp_path / str(checkpointing)
        calls["n"] = 0
        stage = tiny_run(
            monkeypatch,
            tiny_model,
            gsm8k_records,
            job,
            max_steps=2,
            output=f"ckpt-{checkpointing}",
            gradient_checkpointing=checkpointing,
        )
        runs[checkpointing] = (calls["n"], losses(job), stage["gradient_checkpointing"])
    (plain_calls, plain, plain_flag), (ckpt_calls, ckpt, ckpt_flag) = runs[False], runs[True]
    assert (plain_flag, ckpt_flag) == (False, True)
    layers_per_step = 2  # the tiny model's depth; 2 steps each way, and the exactness checks run once
    assert ckpt_calls - plain_calls == 2 * layers_per_step
    assert ckpt == pytest.approx(plain, abs=1e-5)
