"""LoRA fitting of the student, shared by every method in `distill/methods/`.

Read top to bottom: the shared options (`TrainOptions`, which every method's config extends),
turning prompt/response samples into token ids without ever cutting a prompt's head (`encode`),
batching (`PadCollator`, `LengthGroupedSampler`), one LoRA stage (`fit_lora`), stage bookkeeping
and the adapter card, and the `nesy train METHOD` command generated from the method's config.

- loss on the response only: prompt and padding labels are -100;
- logits only where a response token is predicted (`ResponseLogits`): the prompt's positions,
  whose labels are -100, never reach the ~152k-word vocabulary matmul;
- no compute spent on padding: each batch is packed into one row (position ids restart per
  sample, so samples never attend to each other); a model whose attention ignores position ids
  gets length-grouped batches with dynamic padding instead (`packing_is_exact`);
- matmuls in the dtype this machine is fastest in (`distill.hardware.compute_dtype`: bf16
  autocast on AMX CPUs and bf16 GPUs, fp32 elsewhere; NESY_DTYPE overrides);
- nothing silently truncated: the length limit defaults to the longest sample (capped by the
  model's maximum); a sample that does not fit loses whole demonstrations / knowledge items first
  (the method supplies the shorter prompts), then its response's tail; every such case is counted
  in the stage metrics (state.json, card.json) and reported on stderr;
- checkpoints every `save_steps`; `resume=True` continues from the last one with the same data
  order; a SIGTERM/SIGINT saves a checkpoint and stops at the next step (`StopRequested`, exit 3).

Layout of $NESY_HOME/adapters/<output>/:
  adapter_config.json, adapter_model.safetensors, tokenizer files, card.json, README.md
  state.json             finished stages (a rerun with --resume skips them)
  stages/<stage>/        each stage's adapter, checkpoints/, prompt_samples.jsonl (exact texts)

Runs unchanged under `accelerate launch --multi_gpu --num_processes N -m distill.cli train METHOD ...`
(Trainer handles DDP; tests/test_scale_out.py): on GPUs with NCCL, on a machine without one as N CPU
processes with gloo (`on_cpu`). Every process walks the same seeded sample order and accelerate hands
out its batches round-robin, so N processes × batch B × accumulation A train on exactly the samples
of one process at batch N·B × A; the mega-batches the sampler sorts by length are sized by that
global batch, so the order itself does not depend on N.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import typer
from torch.utils.data import Sampler
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from typer.core import TyperGroup

from distill import prompts
from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested, install_stop_handler, stop_requested
from kb.errors import NesyError
from kb.workspace import OWNED_MARKER, create_owned, named_path, remove_owned


class ConfigError(NesyError, ValueError):
    """A training option that cannot work, found before anything runs."""


class TrainingDataError(NesyError, ValueError):
    """The training data cannot make this method's samples (no records, missing knowledge, …)."""


# Fields a preset fills when left as None; the "cpu" preset is this machine's (2 shared cores),
# "paper" the papers' schedule: 10 epochs (NesyCD's house standard), global batch 32 (8 × 4
# accumulation on one device), max length 2048 (the reference's cutoff_len), 1,024 new tokens.
PRESETS: dict[str, dict] = {
    "cpu": {"epochs": 3.0, "batch_size": 4, "grad_accum": 1, "max_length": None, "max_new_tokens": 256},
    "paper": {"epochs": 10.0, "batch_size": 8, "grad_accum": 4, "max_length": 2048, "max_new_tokens": 1024},
}


def option(help: str, default=None, **meta):
    """A config field with its help text (and widget hints) beside it, TRL-style."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainOptions:
    """Options every method shares: data, output, base model, LoRA, optimiser, lengths, seed, preset."""

    method: ClassVar[str] = ""
    data: str = option(
        "rationale set name (`nesy teach rationales --out NAME`) or a records.jsonl path",
        "",
        required=True,
        widget="rationale_set",
    )
    output: str = option(
        "adapter name: saved as $NESY_HOME/adapters/<output> (a name, not a path)", "", required=True, widget="name"
    )
    base_model: str | None = option(
        "Hugging Face id or local path of the student; empty = the embedded SmolLM2-135M", widget="hf_model"
    )
    preset: Literal["cpu", "paper"] = option(
        "defaults for epochs, batch, accumulation, max length and new tokens: 'cpu' (3 epochs, batch 4, "
        "length fitted to the data, 256 new tokens) or 'paper' (10 epochs, global batch 32 = 8 × 4 "
        "accumulation, max length 2048, 1,024 new tokens)",
        "cpu",
    )
    template: Literal["auto", "chat", "plain"] = option(
        "prompt template: 'chat' = the tokenizer's chat template, 'plain' = raw text as in the reference "
        "code (for base models), 'auto' = chat when the tokenizer has one",
        "auto",
    )
    lora_r: int = option("LoRA rank", 32)
    lora_alpha: int = option("LoRA alpha (the reference uses 2 × r)", 64)
    lora_dropout: float = option("LoRA dropout", 0.0)
    target_modules: str = option("'all-linear' (every linear layer but the head) or a comma list", "all-linear")
    learning_rate: float = option("peak learning rate", 2e-4)
    lr_scheduler: Literal["cosine", "linear", "constant"] = option("learning-rate schedule", "cosine")
    warmup_ratio: float = option("share of steps spent warming up", 0.1)
    epochs: float | None = option("epochs per stage [preset: cpu 3, paper 10]")
    max_steps: int = option("> 0: stop each stage after this many optimiser steps (overrides epochs)", -1)
    batch_size: int | None = option("samples per device per step [preset: cpu 4, paper 8]")
    grad_accum: int | None = option("gradient accumulation steps [preset: cpu 1, paper 4]")
    max_length: int | None = option(
        "token limit per sample; empty = the longest sample, capped by the "
        "model's maximum [preset: cpu fitted, paper 2048]"
    )
    max_new_tokens: int | None = option(
        "new tokens when this adapter answers (evaluation default, NesyCD's error pass) [preset: cpu 256, paper 1024]"
    )
    seed: int = option("seed for LoRA init, data order, sampling", 42)
    gradient_checkpointing: bool = option(
        "recompute each layer's activations in the backward pass instead of keeping them: far less "
        "memory for long prompts (SKIntern's first stages) at about a third more compute",
        False,
    )
    save_steps: int = option("checkpoint every N optimiser steps", 50)
    save_total_limit: int = option("checkpoints kept per stage", 2)
    limit: int | None = option("use only the first N records (quick runs)")
    resume: bool = option("continue from the last checkpoint and skip finished stages", False)

    def __post_init__(self):
        for name, value in PRESETS.get(self.preset, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}")
        if not self.data:
            raise ConfigError("--data is required: a rationale set name or a records.jsonl path")
        named_path("adapters", self.output, "--output")  # a bad name stops here, before any work
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError("--max-length must be at least 16 tokens (or empty: fitted to the data)")
        if self.template not in prompts.TEMPLATES:
            raise ConfigError(f"--template must be one of {', '.join(prompts.TEMPLATES)}")

    def inference(self) -> dict:
        """What the adapter card tells inference (methods add retrieval, thought type)."""
        return {"max_new_tokens": self.max_new_tokens}


@dataclass
class Sample:
    user: str  # the user text (before the template)
    response: str  # the target the loss is computed on
    example_id: str = ""
    shorter: tuple[str, ...] = ()  # the same prompt with fewer whole parts, longest first


# --- data -----------------------------------------------------------------------------------------


def load_records(data: str, limit: int | None = None) -> list:
    """Verified rationale records from a set name or a records.jsonl path (docs/ARCHITECTURE.md).

    `a+b+c` joins several sets on purpose (e.g. ETD's CoT, PoT and EoT from different sources);
    each record keeps its own provenance, so mixing is explicit, never silent."""
    from distill.data import load_rationales

    records = [r for name in data.split("+") for r in load_rationales(name) if r.verified is not False]
    if not records:
        raise TrainingDataError(f"{data}: no verified rationale records")
    return records[:limit] if limit else records


def question_of(record) -> str:
    """The question as every prompt shows it: the one formatter, options included."""
    from distill.data import format_question

    return format_question(record.example())


def task_description_of(record) -> str:
    """The dataset's task description for the record's task ("" for a dataset no longer known)."""
    from distill.data import DatasetError, get_dataset

    try:
        return get_dataset(record.dataset).task_description(record.task)
    except DatasetError:
        return ""


def knowledge_by_example(kind: str, statuses) -> dict[str, list]:
    """KB entries of one source kind and the given statuses, keyed by source.example_id."""
    from kb.store import KBStore

    store, out, offset = KBStore(), {}, 0
    while True:
        page = store.query(source_kind=kind, offset=offset, limit=500, sort="updated_at")
        for e in page.entries:
            if e.status in statuses and e.source and e.source.example_id:
                out.setdefault(e.source.example_id, []).append(e)
        offset += len(page.entries)
        if not page.entries or offset >= page.total:
            return out


# --- samples -> token ids ---------------------------------------------------------------------------

FITS = ("whole", "shortened", "response_cut", "skipped")


def encode(tokenizer, sample: Sample, max_length: int, template: str = "auto") -> tuple[dict | None, str]:
    """(input_ids + labels with -100 on every prompt token, how it fit: one of FITS).

    Prompt and response are tokenized separately and concatenated, so the boundary is exact and
    the label mask is a plain length cut. A prompt is never cut: the first of the full prompt and
    its shorter versions that leaves room for the whole response is taken; if none does, the
    shortest prompt keeps what fits of the response ("response_cut"), and a sample whose prompt
    alone does not fit is skipped.
    """
    candidates = (sample.user, *sample.shorter)
    response_text = None
    for i, user in enumerate(candidates):
        prompt_text, response_text = prompts.render(tokenizer, user, sample.response, template)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(response_ids) <= max_length:
            fit = "whole" if i == 0 else "shortened"
            return {"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids}, fit
    if len(prompt_ids) >= max_length:
        return None, "skipped"
    room = max_length - len(prompt_ids)
    return {
        "input_ids": prompt_ids + response_ids[:room],
        "labels": [-100] * len(prompt_ids) + response_ids[:room],
    }, "response_cut"


def length_limit(tokenizer, model, samples: list[Sample], max_length: int | None, template: str) -> int:
    """max_length if given, else the longest full sample; never above the model's maximum."""
    model_max = getattr(model.config, "max_position_embeddings", None) or 10**9
    if max_length:
        return min(max_length, model_max)
    longest = 0
    for s in samples:
        prompt_text, response_text = prompts.render(tokenizer, s.user, s.response, template)
        longest = max(
            longest,
            len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            + len(tokenizer(response_text, add_special_tokens=False)["input_ids"]),
        )
    return min(longest, model_max)


class PadCollator:
    """Right-pads each batch to its own longest sequence; counts real vs padded tokens."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.real = 0
        self.padded = 0

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            gap = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_id] * gap)
            labels.append(f["labels"] + [-100] * gap)
            mask.append([1] * len(f["input_ids"]) + [0] * gap)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.padded += width * len(features)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real / self.padded if self.padded else 0.0


class PackCollator:
    """Padding-free batches: transformers' DataCollatorWithFlattening concatenates a batch into one
    row with position ids restarting at 0 for each sample, so the model's causal mask keeps every
    sample to itself (masking_utils finds the sample boundaries from the position ids) and the
    first label of each sample is -100 (no loss across a boundary). No token is padding, so the
    matmuls do only useful work; `packing_is_exact` checks the model honours the boundaries."""

    padding_fraction = 0.0

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: list[dict]) -> dict:
        return self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])


@torch.no_grad()
def packing_is_exact(model, features: list[dict], tolerance: float = 1e-3) -> bool:
    """True when the model's logits for two packed samples equal their logits one at a time: its
    attention reads the position ids (Llama, Qwen, Mistral, … through masking_utils, with
    use_cache off). Models that ignore them would let packed samples attend to each other, so
    they train padded instead."""
    pair = sorted(features[:2], key=lambda f: len(f["input_ids"]))
    if len(pair) < 2:
        return True
    was_training = model.training
    model.eval()
    try:
        packed = model(**{k: v for k, v in PackCollator()(pair).items() if k != "labels"}).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in pair]
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed, torch.cat(alone), atol=tolerance, rtol=tolerance))


class ResponseLogits:
    """Wraps a collator so the model projects onto the vocabulary only where a response token is
    predicted. With a ~152k-word vocabulary the logits of the prompt positions, all discarded by
    their -100 labels, are the largest tensors of a step (a micro-batch of 4 SKIntern stage-0
    samples, ~4,800 tokens: 2.9 GB in fp32, several copies through the loss) and the vocabulary
    matmul a fifth or more of its FLOPs. transformers' boolean
    `logits_to_keep` keeps the predicting positions; `shift_labels` are their targets, so the loss
    and its normalisation (the Trainer counts `shift_labels`) are the full batch's."""

    def __init__(self, collate):
        self.collate = collate

    @property
    def padding_fraction(self) -> float:
        return self.collate.padding_fraction

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        targets = torch.nn.functional.pad(batch["labels"][..., 1:], (0, 1), value=-100)
        keep = targets.ne(-100)
        return {**batch, "logits_to_keep": keep, "shift_labels": targets[keep]}


@torch.no_grad()
def response_logits_exact(model, collate, features: list[dict], tolerance: float = 1e-4) -> bool:
    """True when the model, given ResponseLogits' batch, computes the full batch's loss: it slices
    its hidden states with a boolean `logits_to_keep` (transformers 5's causal LMs). Models that
    do not train with every position's logits instead."""
    pair = features[:2]
    was_training = model.training
    model.eval()
    try:
        full = model(**collate(pair)).loss
        kept = model(**ResponseLogits(collate)(pair)).loss
    except (TypeError, ValueError, IndexError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    return bool(torch.isclose(full, kept, atol=tolerance, rtol=tolerance))


class LengthGroupedSampler(Sampler):
    """Shuffled mega-batches of `group` samples, each sorted by length (longest first).

    Neighbouring samples have similar lengths, so dynamic padding wastes little; the order
    depends only on (seed, epoch), so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, lengths: list[int], group: int, seed: int):
        self.lengths, self.group, self.seed, self.epoch = lengths, max(group, 1), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        for start in range(0, len(order), self.group):
            chunk = order[start : start + self.group]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])


class _Trainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # 16 optimiser batches per mega-batch: enough spread to shuffle, tight enough to pad little.
        # An optimiser batch is global (every process's share of it), so the same global batch gives
        # the same order whatever the number of processes; accelerate then deals the batches out.
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size * 16
        return LengthGroupedSampler([len(f["input_ids"]) for f in dataset], group, self.args.seed)


class ProgressCallback(TrainerCallback):
    """Feeds Progress (metrics JSONL) and turns a stop request into checkpoint + stop."""

    def __init__(self, stage: str):
        install_stop_handler()  # before the first step, so SIGTERM never kills mid-write
        self.stage, self.progress, self.stopped = stage, None, False
        self._last = None  # (time, tokens) at the previous log: tokens/s is per logged step

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = (time.monotonic(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None and state.is_world_process_zero:
            self.progress = Progress(
                state.max_steps,
                desc=f"train {self.stage}",
                unit="step",
                initial=state.global_step - 1,
                stage=self.stage,
            )
        if stop_requested():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs or "loss" not in logs:
            return
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        t0, tokens0 = self._last or (now, tokens)
        self._last = (now, tokens)
        rate = (tokens - tokens0) / (now - t0) if now > t0 else 0.0
        self.progress.update(
            state.global_step - self.progress.step,
            loss=float(logs["loss"]),
            lr=float(logs.get("learning_rate", 0.0)),
            tokens_per_s=round(rate, 1),
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()


# --- one LoRA stage -------------------------------------------------------------------------------


def _lora(model, cfg: TrainOptions, init_adapter: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:  # SKIntern: each stage continues from the previous adapter
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    targets = (
        cfg.target_modules
        if cfg.target_modules == "all-linear"
        else [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    )
    return get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )


def _training_args(cfg: TrainOptions, out: Path, packed: bool) -> TrainingArguments:
    from distill.hardware import compute_dtype

    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # < 1 means a ratio in v5
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        # packed batches hold no padding (and the pad id may be the end-of-turn token, which they
        # do contain), so every token counts
        include_num_input_tokens_seen="all" if packed else "non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # autocast to bf16 where the matmul is faster in it (distill/hardware.py), fp32 weights kept
        bf16=compute_dtype() == "bf16",
        activation_checkpointing=cfg.gradient_checkpointing,
        # non-reentrant: LoRA leaves the embeddings frozen, which the reentrant variant cannot train through
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=on_cpu(),
    )  # bf16 on a CPU asks for it; several CPU processes need it to use gloo


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a checkpoint a kill
    interrupted mid-save (no state file yet) is skipped in favour of the previous one."""
    if not folder.is_dir():
        return None
    done = [
        p
        for p in folder.glob("checkpoint-*")
        if (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


PROMPT_SAMPLES = 20  # exact rendered texts kept per stage, to audit train = test prompts


def fit_lora(
    cfg: TrainOptions, samples: list[Sample], out: Path, *, stage: str, init_adapter: Path | None = None
) -> dict:
    """Train one LoRA stage on samples, save the adapter in `out`, return its metrics.

    Raises StopRequested after writing a checkpoint when a stop was requested.
    """
    from transformers import set_seed

    from distill.hardware import compute_dtype
    from distill.infer import load_base

    set_seed(cfg.seed)  # same LoRA init on a fresh run and on a resumed one
    model, tokenizer = load_base(cfg.base_model)
    template = prompts.resolve_template(tokenizer, cfg.template)
    limit = length_limit(tokenizer, model, samples, cfg.max_length, template)
    encoded, fits = [], dict.fromkeys(FITS, 0)
    for s in samples:
        features, fit = encode(tokenizer, s, limit, template)
        fits[fit] += 1
        if features is not None:
            encoded.append(features)
    if not encoded:
        raise TrainingDataError(f"stage {stage}: no training sample fits max_length={limit}")
    if fits["whole"] < len(samples):
        print(
            f"warning: stage {stage}: of {len(samples)} samples at max_length={limit}, "
            f"{fits['shortened']} lost whole demonstrations/knowledge items, {fits['response_cut']} "
            f"lost the end of their response, {fits['skipped']} were skipped",
            file=sys.stderr,
        )
    _write_prompt_samples(out, tokenizer, samples[:PROMPT_SAMPLES], template)
    # Training never reads a KV cache, and with one masking_utils ignores the packed-sample
    # boundaries (samples would attend to each other): off, as TRL does for padding-free batches.
    model.config.use_cache = False
    model = _lora(model, cfg, init_adapter)
    packed = packing_is_exact(model, encoded)
    collator = PackCollator() if packed else PadCollator(tokenizer.pad_token_id)
    response_only = response_logits_exact(model, collator, encoded)
    if response_only:
        collator = ResponseLogits(collator)
    callback = ProgressCallback(stage)
    trainer = _Trainer(
        model=model,
        args=_training_args(cfg, out, packed),
        train_dataset=encoded,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # Progress is the one place that reports
    last = last_checkpoint(out / "checkpoints")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last if cfg.resume else None)
    if callback.stopped:
        raise StopRequested(f"stopped at step {trainer.state.global_step}; rerun with --resume")
    trainer.save_model(str(out))
    runtime = time.monotonic() - started
    metrics = {
        "stage": stage,
        "samples": len(encoded),
        "max_length": limit,
        "template": template,
        "fit": fits,
        "truncated": len(samples) - fits["whole"],
        "prompt_tokens_mean": sum(e["labels"].count(-100) for e in encoded) / len(encoded),
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 5),
        "tokens": int(trainer.state.num_input_tokens_seen),
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / runtime, 2),
        "padding_fraction": round(collator.padding_fraction, 4),
        "packed": packed,
        "response_logits_only": response_only,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "processes": trainer.args.world_size,
        "distributed_backend": distributed().backend,
        "global_batch": cfg.batch_size * cfg.grad_accum * trainer.args.world_size,
        "dtype": compute_dtype(),
        "runtime_s": round(runtime, 2),
        "resumed_from": Path(last).name if (cfg.resume and last) else None,
    }
    if trainer.is_world_process_zero():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _write_prompt_samples(out: Path, tokenizer, samples: list[Sample], template: str) -> None:
    """The exact user texts and rendered prompts of the first samples (the prompt contract)."""
    if not distributed().is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prompt_samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            rendered = prompts.render(tokenizer, s.user, None, template)[0]
            f.write(
                json.dumps(
                    {"example_id": s.example_id, "user": s.user, "prompt": rendered, "response": s.response},
                    ensure_ascii=False,
                )
                + "\n"
            )


# --- stage bookkeeping ----------------------------------------------------------------------------


def adapter_root(name: str) -> Path:
    """$NESY_HOME/adapters/<name>; the name is validated (never a path)."""
    return named_path("adapters", name, "--output")


class Stages:
    """state.json in the output folder: which stages are done and their metrics."""

    def __init__(self, root: Path):
        self.path = root / "state.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def done(self, stage: str) -> dict | None:
        return self.state["stages"].get(stage)

    def finish(self, stage: str, info: dict) -> None:
        self.state["stages"][stage] = info
        if distributed().is_main_process:
            self.path.write_text(json.dumps(self.state, indent=2))


def on_cpu() -> bool:
    """True on a machine with no GPU. accelerate then needs to be told (`cpu=True`): its processes,
    started by `accelerate launch --multi_gpu`, otherwise each train alone instead of joining one
    gloo process group (and `--cpu` launches one process only, unless through MPI)."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def distributed():
    """accelerate's process state (one process on a plain run; N under accelerate launch)."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu())


def prepare_output(cfg: TrainOptions) -> tuple[Path, Stages]:
    """The adapter folder (emptied unless resuming; only a folder nesy created is ever removed)."""
    root, state = adapter_root(cfg.output), distributed()
    if state.is_main_process:
        if not cfg.resume:
            remove_owned(root)
        create_owned(root)
        (root / "train_config.json").write_text(json.dumps(config_record(cfg), indent=2))
    state.wait_for_everyone()
    return root, Stages(root)


def check_output(cfg: TrainOptions) -> None:
    """Before any work: a folder nesy did not create is never replaced (raises NotOwned)."""
    root = adapter_root(cfg.output)
    if root.exists() and not cfg.resume and not (root / OWNED_MARKER).is_file():
        remove_owned(root)


def run_stage(cfg: TrainOptions, stages: Stages, root: Path, stage: str, samples_fn, init: Path | None = None) -> Path:
    """Fit one stage unless state.json says it is done; returns the stage's adapter folder."""
    out = root / "stages" / stage
    if not stages.done(stage):
        stages.finish(stage, fit_lora(cfg, samples_fn(), out, stage=stage, init_adapter=init))
    return out


def config_record(cfg: TrainOptions) -> dict:
    return {"method": cfg.method, **asdict(cfg)}


def publish(cfg: TrainOptions, root: Path, final: Path, stages: Stages) -> Path:
    """Copy the final stage's adapter to the output root and write the card."""
    state = distributed()
    state.wait_for_everyone()
    if not state.is_main_process:
        return root
    for f in final.iterdir():
        if f.is_file() and f.name != "prompt_samples.jsonl":
            shutil.copy2(f, root / f.name)
    write_card(root, cfg, stages.state["stages"])
    return root


def write_card(root: Path, cfg: TrainOptions, metrics: dict) -> None:
    """card.json (read by inference: method, template, inference defaults) and a README."""
    from distill.models import student_path

    template = next((m["template"] for m in metrics.values() if "template" in m), cfg.template)
    card = {
        "method": cfg.method,
        "data": cfg.data,
        "base_model": cfg.base_model or student_path(),
        "template": template,
        "inference": cfg.inference(),
        "hyperparameters": config_record(cfg),
        "stages": metrics,
        "truncated": sum(m.get("truncated", 0) for m in metrics.values()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (root / "card.json").write_text(json.dumps(card, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in config_record(cfg).items())
    stage_rows = "\n".join(f"- **{k}**: " + ", ".join(f"{a}={b}" for a, b in m.items()) for k, m in metrics.items())
    (root / "README.md").write_text(
        f"# NeSy Studio student adapter `{cfg.output}`\n\nMethod **{cfg.method}**, data `{cfg.data}`, "
        f"base model `{card['base_model']}`, template `{template}`.\n\nLoad with plain transformers + "
        f"peft:\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n"
        f"model = AutoPeftModelForCausalLM.from_pretrained('{root}')\n```\n\n"
        f"## Hyperparameters\n\n| name | value |\n|---|---|\n{rows}\n\n## Stages\n\n{stage_rows}\n"
    )


# --- CLI: `nesy train METHOD [options]`, one command per method, generated from its config -------


class MethodCommands(TyperGroup):
    """`nesy train` lists the registered methods; each one's options come from its config."""

    def list_commands(self, ctx):
        from distill.methods import METHODS

        return list(METHODS)

    def get_command(self, ctx, name):
        from distill.methods import METHODS
        from distill.methods.options import cli_command

        return cli_command(METHODS[name], run_from_cli) if name in METHODS else None


def run_from_cli(cfg: TrainOptions) -> None:
    """Run a parsed config; a stop request exits 3 (domain errors reach distill.cli.run)."""
    from distill.methods import train

    try:
        path = train(cfg)
    except StopRequested as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(STOPPED_EXIT_CODE) from None
    typer.echo(str(path))


cli = typer.Typer(cls=MethodCommands, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@cli.callback()
def train_group() -> None:
    """Train a student LoRA adapter: `nesy train METHOD --data SET --output NAME [options]`.

    `nesy train METHOD --help` lists that method's options (shared + its own)."""
