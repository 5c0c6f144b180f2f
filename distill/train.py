"""LoRA training of the student: Std-CoT, NesyCD, SKIntern, ETD and EoTD as recipes.

One core, `fit_lora`, trains one LoRA stage with transformers' Trainer + peft:
- loss on the response only: prompt and padding labels are -100 (see `encode`);
- no compute spent on padding: length-grouped batches (`LengthGroupedSampler`: shuffled
  mega-batches, sorted by length inside) and dynamic padding to the longest sequence of each
  batch (`PadCollator`, which also counts the padding fraction it produced);
- checkpoints every `save_steps` under <stage>/checkpoints, `resume=True` continues from the
  last one with the same data order (the sampler is seeded by seed + epoch, not global RNG);
- `Progress` gets one metrics line per optimiser step (loss, lr, tokens/s, ETA), and a
  SIGTERM/SIGINT makes the callback save a checkpoint and stop at the next step
  (`StopRequested`, CLI exit code 3).

Recipes (one function each) turn rationale records (and KB knowledge) into prompt/response
samples and chain stages. Layout of $NESY_HOME/adapters/<output>/:
  adapter_config.json, adapter_model.safetensors, tokenizer files, card.json, README.md
  state.json             finished stages (a rerun with --resume skips them)
  stages/<stage>/        each stage's adapter + checkpoints/
  errors.jsonl, sp_answers.jsonl   (nesycd) the S_P pass over the training questions

Runs unchanged under `accelerate launch -m distill.cli train ...` (Trainer handles DDP).
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import typer
from torch.utils.data import Sampler
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from distill import prompts
from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested, install_stop_handler, stop_requested
from kb.workspace import OWNED_MARKER, create_owned, named_path, remove_owned

METHODS = ("std-cot", "nesycd", "skintern", "etd", "eotd")


@dataclass
class TrainConfig:
    """Everything one `nesy train` run needs; written into the adapter card."""
    method: str = "std-cot"
    data: str = ""                      # rationale set name ($NESY_HOME/datasets/<name>) or a records.jsonl path
    output: str = "student"             # -> $NESY_HOME/adapters/<output>
    base_model: str | None = None       # None -> the embedded SmolLM2-135M (models.student_path())
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"  # peft: every linear layer except the output head; or "q_proj,v_proj"
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    epochs: float = 3.0                 # per stage for multi-stage methods
    max_steps: int = -1                 # > 0 overrides epochs (per stage)
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 42
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = False
    limit: int | None = None            # use only the first N records (quick runs)
    # nesycd
    auto_accept: bool = False           # mark generated knowledge accepted (else stays pending for review)
    max_knowledge: int | None = None    # nesycd: teacher analyses at most this many errors (seeded sample)
    knowledge_statuses: tuple[str, ...] = ("accepted", "pending")  # knowledge S_E trains with
    teacher: str = "local"              # knowledge job: 'local' llama.cpp teacher or an OpenAI-compatible URL
    teacher_model: str | None = None    # local: GGUF path / packaged name; URL: the model name
    api_key_env: str = "OPENAI_API_KEY"
    error_batch_size: int = 8
    error_max_new_tokens: int = 256
    # skintern
    skintern_stages: int = 4
    skintern_demos: int = 6
    demo_selection: str = "similar"     # similar | random
    # etd
    thoughts: tuple[str, ...] = ("cot", "pot", "eot")


@dataclass
class Sample:
    user: str          # the user turn (prompt before the chat template)
    response: str      # the target the loss is computed on
    example_id: str = ""


# --- data -----------------------------------------------------------------------------------------

def load_records(data: str, limit: int | None = None) -> list:
    """Verified rationale records from a set name or a records.jsonl path (docs/ARCHITECTURE.md)."""
    from distill.data import load_rationales

    records = load_rationales(data)
    records = [r for r in records if r.verified is not False]
    if not records:
        raise ValueError(f"{data}: no verified rationale records")
    return records[:limit] if limit else records


def encode(tokenizer, sample: Sample, max_length: int) -> dict | None:
    """input_ids + labels with -100 on every prompt token; None if no response token fits.

    Prompt and response are tokenized separately and concatenated, so the boundary is exact
    (no BPE merge across it) and the label mask is a plain length cut. Too long: the prompt
    loses its oldest tokens first (SKIntern's early stages carry many demonstrations), but keeps
    at least half of max_length; then the response is cut at max_length.
    """
    prompt_text, response_text = prompts.render(tokenizer, sample.user, sample.response)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not has_template)["input_ids"]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    prompt_budget = max(max_length - len(response_ids), max_length // 2)
    prompt_ids = prompt_ids[-prompt_budget:]
    ids = (prompt_ids + response_ids)[:max_length]
    if len(ids) <= len(prompt_ids):
        return None
    labels = [-100] * len(prompt_ids) + response_ids
    return {"input_ids": ids, "labels": labels[:max_length]}


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
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real / self.padded if self.padded else 0.0


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
            chunk = order[start:start + self.group]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])


class _Trainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # 16 optimiser batches per mega-batch: enough spread to shuffle, tight enough to pad little.
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * 16
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
            self.progress = Progress(state.max_steps, desc=f"train {self.stage}", unit="step",
                                     initial=state.global_step - 1, stage=self.stage)
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
        self.progress.update(state.global_step - self.progress.step, loss=float(logs["loss"]),
                             lr=float(logs.get("learning_rate", 0.0)), tokens_per_s=round(rate, 1))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()


# --- one LoRA stage -------------------------------------------------------------------------------

def _lora(model, cfg: TrainConfig, init_adapter: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:  # SKIntern: each stage continues from the previous adapter
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    return get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM"))


def _training_args(cfg: TrainConfig, out: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # < 1 means a ratio in v5
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_steps=1, report_to="none", disable_tqdm=True, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a checkpoint a kill
    interrupted mid-save (no state file yet) is skipped in favour of the previous one."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()
            and p.name.split("-")[-1].isdigit()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def fit_lora(cfg: TrainConfig, samples: list[Sample], out: Path, *, stage: str,
             init_adapter: Path | None = None) -> dict:
    """Train one LoRA stage on samples, save the adapter in `out`, return its metrics.

    Raises StopRequested after writing a checkpoint when a stop was requested.
    """
    from transformers import set_seed

    from distill.infer import load_base

    set_seed(cfg.seed)  # same LoRA init on a fresh run and on a resumed one
    model, tokenizer = load_base(cfg.base_model)
    encoded = [e for s in samples if (e := encode(tokenizer, s, cfg.max_length)) is not None]
    if not encoded:
        raise ValueError(f"stage {stage}: no training sample fits max_length={cfg.max_length}")
    model = _lora(model, cfg, init_adapter)
    collator = PadCollator(tokenizer.pad_token_id)
    callback = ProgressCallback(stage)
    trainer = _Trainer(model=model, args=_training_args(cfg, out), train_dataset=encoded,
                       data_collator=collator, processing_class=tokenizer, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # Progress is the one place that reports
    last = last_checkpoint(out / "checkpoints")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last if cfg.resume else None)
    if callback.stopped:
        raise StopRequested(f"stopped at step {trainer.state.global_step}; rerun with --resume")
    trainer.save_model(str(out))
    runtime = time.monotonic() - started
    metrics = {"stage": stage, "samples": len(encoded), "dropped": len(samples) - len(encoded),
               "prompt_tokens_mean": sum(e["labels"].count(-100) for e in encoded) / len(encoded),
               "steps": trainer.state.global_step, "train_loss": round(result.training_loss, 5),
               "tokens": int(trainer.state.num_input_tokens_seen),
               "tokens_per_s": round(trainer.state.num_input_tokens_seen / runtime, 2),
               "padding_fraction": round(collator.padding_fraction, 4), "runtime_s": round(runtime, 2),
               "resumed_from": Path(last).name if (cfg.resume and last) else None}
    if trainer.is_world_process_zero():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


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
        if _distributed().is_main_process:
            self.path.write_text(json.dumps(self.state, indent=2))


def _distributed():
    """accelerate's process state (one process on a plain CPU run; N under accelerate launch)."""
    from accelerate import PartialState

    return PartialState()


def _prepare_root(cfg: TrainConfig) -> Path:
    root, state = adapter_root(cfg.output), _distributed()
    if state.is_main_process:
        if not cfg.resume:
            remove_owned(root)  # a fresh run means fresh; only a folder nesy created is removed
        create_owned(root)
        (root / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    state.wait_for_everyone()
    return root


def _run_stage(cfg, stages: Stages, root: Path, stage: str, samples_fn, init: Path | None = None) -> Path:
    out = root / "stages" / stage
    if not stages.done(stage):
        stages.finish(stage, fit_lora(cfg, samples_fn(), out, stage=stage, init_adapter=init))
    return out


def _publish(cfg: TrainConfig, root: Path, final: Path, stages: Stages) -> Path:
    """Copy the final stage's adapter to the output root and write the card."""
    state = _distributed()
    state.wait_for_everyone()
    if not state.is_main_process:
        return root
    for f in final.iterdir():
        if f.is_file():
            shutil.copy2(f, root / f.name)
    write_card(root, cfg, stages.state["stages"])
    return root


def write_card(root: Path, cfg: TrainConfig, metrics: dict) -> None:
    from distill.models import student_path

    card = {"method": cfg.method, "data": cfg.data, "base_model": cfg.base_model or student_path(),
            "prompt_format": "etd" if cfg.method in ("etd", "eotd") else "cot",
            "thoughts": list(cfg.thoughts) if cfg.method == "etd" else (["eot"] if cfg.method == "eotd" else ["cot"]),
            "hyperparameters": asdict(cfg), "stages": metrics,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (root / "card.json").write_text(json.dumps(card, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items())
    stage_rows = "\n".join(f"- **{k}**: " + ", ".join(f"{a}={b}" for a, b in m.items())
                           for k, m in metrics.items())
    (root / "README.md").write_text(
        f"# NeSy Studio student adapter `{cfg.output}`\n\nMethod **{cfg.method}**, data `{cfg.data}`, "
        f"base model `{card['base_model']}`.\n\nLoad with plain transformers + peft:\n\n```python\n"
        f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained('{root}')\n"
        f"```\n\n## Hyperparameters\n\n| name | value |\n|---|---|\n{rows}\n\n## Stages\n\n{stage_rows}\n")


# --- recipes --------------------------------------------------------------------------------------

def cot_samples(records) -> list[Sample]:
    return [Sample(prompts.cot_prompt(r.question), r.rationale, r.example_id)
            for r in records if (r.thought or "cot") == "cot"]


def train_std_cot(cfg: TrainConfig) -> Path:
    """Std-CoT: question -> teacher rationale."""
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    root = _prepare_root(cfg)
    stages = Stages(root)
    final = _run_stage(cfg, stages, root, "main", lambda: cot_samples(records))
    return _publish(cfg, root, final, stages)


def train_etd(cfg: TrainConfig) -> Path:
    """ETD (CoT+PoT+EoT, each marked by its trigger) or EoTD (EoT only)."""
    thoughts = ("eot",) if cfg.method == "eotd" else tuple(cfg.thoughts)
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    root = _prepare_root(cfg)
    stages = Stages(root)

    def samples():
        out = [Sample(prompts.etd_prompt(r.question, r.thought), r.rationale, r.example_id)
               for r in records if (r.thought or "cot") in thoughts]
        if not out:
            raise ValueError(f"{cfg.data}: no records with thought in {thoughts}")
        return out

    final = _run_stage(cfg, stages, root, "main", samples)
    return _publish(cfg, root, final, stages)


def _knowledge_by_example(kind: str, statuses) -> dict[str, list]:
    """KB entries of one source kind, keyed by source.example_id."""
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


def train_skintern(cfg: TrainConfig) -> Path:
    """SKIntern: T stages, knowledge share and demonstrations decay linearly to question-only."""
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    root = _prepare_root(cfg)
    stages = Stages(root)
    cot = [r for r in records if (r.thought or "cot") == "cot"]
    knowledge = _knowledge_by_example("example_knowledge", ("accepted", "pending"))
    texts = {r.example_id: "\n".join(prompts.knowledge_text(e) for e in knowledge.get(r.example_id, []))
             for r in cot}
    idf = prompts.idf_table(texts.values())
    pool = [(r.question, r.rationale) for r in cot]
    # Demos chosen once at the largest k; later stages keep a prefix (instance-level pruning).
    demos = {r.example_id: prompts.select_demos(r.question, pool, cfg.skintern_demos, cfg.demo_selection,
                                                cfg.seed) for r in cot} if cfg.skintern_demos else {}
    previous = None
    for sched in prompts.skintern_schedule(cfg.skintern_stages, cfg.skintern_demos):
        def samples(sched=sched):
            return [Sample(prompts.skintern_prompt(
                r.question, prompts.compress(texts[r.example_id], sched.knowledge_share, idf),
                demos.get(r.example_id, [])[:sched.demos]), r.rationale, r.example_id) for r in cot]
        previous = _run_stage(cfg, stages, root, f"stage{sched.stage}", samples, init=previous)
    return _publish(cfg, root, previous, stages)


def train_nesycd(cfg: TrainConfig) -> Path:
    """NesyCD: S_P on rationales -> errors of S_P -> teacher knowledge -> S_E with knowledge."""
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    root = _prepare_root(cfg)
    stages = Stages(root)
    sp = _run_stage(cfg, stages, root, "sp", lambda: cot_samples(records))
    errors, dist = root / "errors.jsonl", _distributed()
    if dist.is_main_process:  # generation and teacher calls once, not once per GPU
        if not stages.done("knowledge"):
            collect_errors(cfg, root, sp, records)
            stages.finish("knowledge", distil_knowledge(cfg, errors))
    dist.wait_for_everyone()
    stages = Stages(root)
    knowledge = _knowledge_by_example("error_analysis", cfg.knowledge_statuses)
    wrong = {json.loads(line)["example_id"] for line in errors.read_text().splitlines() if line.strip()}

    def samples():
        return [Sample(prompts.nesycd_prompt(r.question, knowledge.get(r.example_id, [])
                                             if r.example_id in wrong else []), r.rationale, r.example_id)
                for r in records if (r.thought or "cot") == "cot"]

    final = _run_stage(cfg, stages, root, "se", samples)  # fresh LoRA from the base model
    return _publish(cfg, root, final, stages)


def collect_errors(cfg: TrainConfig, root: Path, sp_adapter: Path, records) -> Path:
    """Run S_P on the training questions; wrong cases go to errors.jsonl (ARCHITECTURE.md format).

    Resumable: answers are appended per batch to sp_answers.jsonl and skipped on a rerun.
    """
    from distill.answers import check
    from distill.infer import Student

    answers_path, errors_path = root / "sp_answers.jsonl", root / "errors.jsonl"
    done = {json.loads(l)["example_id"] for l in answers_path.read_text().splitlines()
            if l.strip()} if answers_path.exists() else set()
    todo = list({r.example_id: r for r in records if r.example_id not in done}.values())
    student = Student(cfg.base_model, adapter=str(sp_adapter))
    with Progress(len(done) + len(todo), desc="S_P errors", initial=len(done), stage="errors") as bar:
        for i in range(0, len(todo), cfg.error_batch_size):
            bar.check_stop()
            batch = todo[i:i + cfg.error_batch_size]
            results = student.answer([r.question for r in batch], max_new_tokens=cfg.error_max_new_tokens)
            with open(answers_path, "a", encoding="utf-8") as f:
                for r, res in zip(batch, results):
                    _, correct = check(res.text, r.example())
                    f.write(json.dumps({"example_id": r.example_id, "dataset": r.dataset, "task": r.task,
                                        "question": r.question, "prompt": res.prompt,
                                        "response": res.text, "answer": r.answer,
                                        "correct": bool(correct)}) + "\n")
            bar.update(len(batch))
    rows = [json.loads(l) for l in answers_path.read_text().splitlines() if l.strip()]
    with open(errors_path, "w", encoding="utf-8") as f:
        for row in rows:
            if not row.pop("correct"):
                f.write(json.dumps(row) + "\n")
    return errors_path


def distil_knowledge(cfg: TrainConfig, errors: Path) -> dict:
    """The teacher's knowledge job (distill.teach) on every error case; optionally auto-accept.

    Finished teacher calls are cached by distill.teacher, so a stopped run repeats none.
    """
    from distill import teach

    cases = teach.read_error_cases(errors)
    if cfg.max_knowledge is not None and len(cases) > cfg.max_knowledge:
        # bounds the teacher bill; S_E still trains on every example, the unsampled errors plain
        cases = random.Random(cfg.seed).sample(cases, cfg.max_knowledge)
    if not cases:
        return {"errors": 0, "created": 0}
    client = teach.make_client(cfg.teacher, cfg.teacher_model, cfg.api_key_env, concurrency=4,
                               temperature=0.0, max_tokens=400, timeout=300.0)
    summary = teach.distil_knowledge(client, cases, "error_analysis", f"{cfg.output}-errors",
                                     auto_accept=cfg.auto_accept)
    return {"errors": len(cases), "created": summary.created, "malformed": summary.malformed,
            "failed_calls": summary.failed_calls, "auto_accepted": bool(cfg.auto_accept)}


RECIPES = {"std-cot": train_std_cot, "nesycd": train_nesycd, "skintern": train_skintern,
           "etd": train_etd, "eotd": train_etd}


def train(cfg: TrainConfig) -> Path:
    """Run the recipe of cfg.method; returns the adapter folder."""
    if cfg.method not in RECIPES:
        raise ValueError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    root = adapter_root(cfg.output)  # before any work: a bad name or a foreign folder stops here
    if root.exists() and not cfg.resume and not (root / OWNED_MARKER).is_file():
        remove_owned(root)  # raises NotOwned with the explanation
    if cfg.demo_selection not in ("similar", "random"):
        raise ValueError("demo selection must be 'similar' or 'random'")
    return RECIPES[cfg.method](cfg)


# --- CLI ------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, rich_markup_mode=None)


@cli.command()
def train_cmd(
    method: str = typer.Option("std-cot", help="std-cot | nesycd | skintern | etd | eotd"),
    data: str = typer.Option(..., help="rationale set name (nesy teach rationales) or records.jsonl path"),
    output: str = typer.Option(..., help="adapter name -> $NESY_HOME/adapters/<output>"),
    base_model: str = typer.Option(None, help="HF id or local path; default the embedded SmolLM2-135M"),
    lora_r: int = 32, lora_alpha: int = 64, lora_dropout: float = 0.0,
    target_modules: str = typer.Option("all-linear", help="'all-linear' or a comma list"),
    lr: float = typer.Option(2e-4, "--lr"), lr_scheduler: str = "cosine", warmup_ratio: float = 0.1,
    epochs: float = 3.0, max_steps: int = -1, batch_size: int = 4, grad_accum: int = 1,
    max_length: int = 512, seed: int = 42, save_steps: int = 50,
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint / finished stages"),
    limit: int = typer.Option(None, help="use only the first N records"),
    auto_accept: bool = typer.Option(False, "--auto-accept", help="nesycd: accept generated knowledge"),
    max_knowledge: int = typer.Option(None, help="nesycd: teacher knowledge for at most N errors (seeded sample)"),
    teacher: str = typer.Option("local", help="nesycd: 'local' or an OpenAI-compatible base URL"),
    teacher_model: str = typer.Option(None, help="nesycd: teacher model (GGUF/packaged name, or API model)"),
    stages: int = typer.Option(4, "--stages", help="skintern: number of stages T"),
    demos: int = typer.Option(6, "--demos", help="skintern: demonstrations at stage 0"),
    demo_selection: str = typer.Option("similar", help="skintern: similar | random"),
    thoughts: str = typer.Option("cot,pot,eot", help="etd: thought types to mix"),
) -> None:
    """Train a student LoRA adapter (std-cot, nesycd, skintern, etd, eotd)."""
    cfg = TrainConfig(
        method=method, data=data, output=output, base_model=base_model, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
        learning_rate=lr, lr_scheduler=lr_scheduler, warmup_ratio=warmup_ratio, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        seed=seed, save_steps=save_steps, resume=resume, limit=limit, auto_accept=auto_accept, max_knowledge=max_knowledge,
        teacher=teacher, teacher_model=teacher_model, skintern_stages=stages, skintern_demos=demos, demo_selection=demo_selection,
        thoughts=tuple(t.strip() for t in thoughts.split(",") if t.strip()))
    try:
        path = train(cfg)
    except StopRequested as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(STOPPED_EXIT_CODE)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(str(path))
