"""NesyCD (Liao et al., 2024): neural-symbolic collaborative distillation.

Recipe: S_P (Std-CoT on the teacher's rationales) -> S_P answers every training question; the
wrong ones go to errors.jsonl -> the teacher analyses each error into a Learning Summary +
Supplementary Knowledge, stored as `error_analysis` KB entries -> S_E, a fresh LoRA from the base
model, trained with each error case's own knowledge in its prompt -> at inference the student
retrieves the top-k `error_analysis` entries for the question.

The prompt is the reference code's (docs/METHODS.md): task line, knowledge block, question.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from distill import prompts
from distill.jsonlines import read_jsonl, resume_jsonl
from distill.methods.options import check_list
from distill.methods.std_cot import samples as std_cot_samples
from distill.progress import Progress
from distill.train import (
    ConfigError,
    Sample,
    TrainOptions,
    distributed,
    knowledge_by_example,
    load_records,
    option,
    prepare_output,
    publish,
    question_of,
    run_stage,
    task_description_of,
)
from kb.workspace import check_name

SUMMARY = (
    "NesyCD: S_P on rationales → collect its errors → teacher knowledge into the KB → S_E "
    "trained with that knowledge; answers with retrieval."
)
KIND = "error_analysis"  # the KB entries this method writes and retrieves
STATUSES = ("accepted", "pending")
RETRIEVERS = ("dense", "bm25", "hybrid")


@dataclass
class NesyCDConfig(TrainOptions):
    method: ClassVar[str] = "nesycd"
    teacher: str = option(
        "knowledge teacher: 'local' (the packaged llama.cpp teacher) or the base URL of an OpenAI-compatible server",
        "local",
    )
    teacher_model: str | None = option(
        "teacher model: a GGUF path / packaged name for 'local', the server's model name for a URL (required then)"
    )
    api_key_env: str = option("environment variable holding the teacher's API key (never stored)", "OPENAI_API_KEY")
    teacher_temperature: float = option("teacher sampling temperature (the reference: 0.8)", 0.8)
    teacher_max_tokens: int = option("room for the teacher's analysis, in tokens", 1024)
    max_knowledge: int | None = option("analyse at most N errors (a seeded sample) to bound the teacher bill")
    auto_accept: bool = option("accept generated knowledge at once (else it waits as pending for review)", False)
    knowledge_statuses: tuple[Literal["accepted", "pending"], ...] = option(
        "statuses of the knowledge S_E trains with", STATUSES
    )
    error_batch_size: int = option("questions per batch in S_P's error pass", 8)
    sp_adapter: str | None = option(
        "a finished std-cot adapter (name) trained on the same --data, base "
        "model and options, used as S_P instead of training it again (S_P is "
        "Std-CoT by definition)"
    )
    k: int = option(
        "inference: knowledge entries retrieved into the prompt (the reference retrieves 3; its scripts insert 1)", 3
    )
    retriever: Literal["dense", "bm25", "hybrid"] = option(
        "inference: dense (MiniLM), bm25, or hybrid (reciprocal rank fusion)", "dense"
    )
    min_score: float | None = option("inference: ignore retrieved entries scoring below this")
    adaptive: bool = option(
        "inference: skip retrieval when the student is confident (the reference's "
        "probe: 16 tokens sampled at T=0.6, mean top-1 − top-2 gap)",
        False,
    )
    adaptive_threshold: float = option("inference: the confidence gap above which retrieval is skipped", 0.68)

    def __post_init__(self):
        super().__post_init__()
        if self.teacher != "local" and not self.teacher.startswith(("http://", "https://")):
            raise ConfigError("--teacher must be 'local' or an http(s):// base URL")
        if self.teacher != "local" and not self.teacher_model:
            raise ConfigError("a URL teacher needs a model name: add --teacher-model NAME")
        check_list("knowledge_statuses", self.knowledge_statuses, STATUSES)
        if self.k < 0 or (self.max_knowledge is not None and self.max_knowledge < 0):
            raise ConfigError("--k and --max-knowledge cannot be negative")
        if self.teacher_max_tokens < 1 or self.error_batch_size < 1:
            raise ConfigError("--teacher-max-tokens and --error-batch-size must be at least 1")

    def inference(self) -> dict:
        return {
            **super().inference(),
            "thought": "cot",
            "k": self.k,
            "retriever": self.retriever,
            "source_kinds": [KIND],
            "min_score": self.min_score,
            "adaptive_threshold": self.adaptive_threshold if self.adaptive else None,
        }


def build_prompt(question: str, *, task_description: str = "", knowledge: Sequence = (), thought: str = "cot") -> str:
    """Training (S_E) and inference text: task line, the knowledge block if any, the question."""
    return prompts.student_prompt(question, task_description, [prompts.knowledge_text(k) for k in knowledge])


def samples(records, knowledge: dict[str, list], wrong: set[str]) -> list[Sample]:
    """S_E: error cases get their own knowledge (items droppable when too long); the rest plain."""
    out = []
    for r in records:
        if (r.thought or "cot") != "cot":
            continue
        items = [prompts.knowledge_text(e) for e in knowledge.get(r.example_id, [])] if r.example_id in wrong else []
        full, *shorter = prompts.shrinking_prompts(question_of(r), task_description_of(r), items)
        out.append(Sample(full, r.rationale, r.example_id, tuple(shorter)))
    return out


def run(cfg: NesyCDConfig) -> Path:
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    sp = reused_sp(cfg) if cfg.sp_adapter else None
    root, stages = prepare_output(cfg)
    sp = sp or run_stage(cfg, stages, root, "sp", lambda: std_cot_samples(records))
    errors, dist = root / "errors.jsonl", distributed()
    if dist.is_main_process and not stages.done("knowledge"):  # generation + teacher once, not per GPU
        collect_errors(cfg, root, sp, records)
        stages.finish("knowledge", distil_knowledge(cfg, errors))
    dist.wait_for_everyone()
    wrong = {row["example_id"] for row in read_jsonl(errors)}
    knowledge = knowledge_by_example(KIND, cfg.knowledge_statuses)
    final = run_stage(cfg, stages, root, "se", lambda: samples(records, knowledge, wrong))  # fresh LoRA
    return publish(cfg, root, final, stages)


def reused_sp(cfg: NesyCDConfig) -> Path:
    """The Std-CoT adapter named by --sp-adapter, refused unless it was trained like S_P would be."""
    from distill.infer import adapter_dir

    path = adapter_dir(check_name(cfg.sp_adapter, "--sp-adapter"))
    card = json.loads((path / "card.json").read_text()) if (path / "card.json").exists() else {}
    trained = card.get("hyperparameters", {})
    if (
        card.get("method") != "std-cot"
        or card.get("data") != cfg.data
        or trained.get("base_model") != cfg.base_model
        or trained.get("limit") != cfg.limit
    ):
        raise ConfigError(
            f"--sp-adapter {cfg.sp_adapter}: not a std-cot adapter trained on --data "
            f"{cfg.data} with this base model and limit (its card: method "
            f"{card.get('method')}, data {card.get('data')})"
        )
    return path


def collect_errors(cfg: NesyCDConfig, root: Path, sp_adapter: Path, records) -> Path:
    """S_P answers the training questions with its own prompt; wrong cases go to errors.jsonl.

    Resumable: answers are appended per batch to sp_answers.jsonl and skipped on a rerun.
    """
    from distill.answers import check
    from distill.infer import Student

    answers_path, errors_path = root / "sp_answers.jsonl", root / "errors.jsonl"
    done = {row["example_id"] for row in resume_jsonl(answers_path)}
    todo = list({r.example_id: r for r in records if r.example_id not in done}.values())
    student = Student(cfg.base_model, adapter=str(sp_adapter), method="std-cot", template=cfg.template)
    by_task = defaultdict(list)  # one call per task description: it is part of the prompt
    for r in todo:
        by_task[task_description_of(r)].append(r)
    with Progress(len(done) + len(todo), desc="S_P errors", initial=len(done), stage="errors") as bar:
        for description, group in by_task.items():
            for i in range(0, len(group), cfg.error_batch_size):
                bar.check_stop()
                batch = group[i : i + cfg.error_batch_size]
                results = student.answer(
                    [question_of(r) for r in batch],
                    task_description=description,
                    max_new_tokens=cfg.max_new_tokens,
                    thought="cot",
                )
                _append_answers(answers_path, batch, results, check)
                bar.update(len(batch))
    rows = read_jsonl(answers_path)
    with open(errors_path, "w", encoding="utf-8") as f:
        for row in rows:
            if not row.pop("correct"):
                f.write(json.dumps(row) + "\n")
    return errors_path


def _append_answers(path: Path, batch, results, check) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r, res in zip(batch, results):
            _, correct = check(res.text, r.example())
            f.write(
                json.dumps(
                    {
                        "example_id": r.example_id,
                        "dataset": r.dataset,
                        "task": r.task,
                        "question": r.question,
                        "prompt": res.prompt,
                        "response": res.text,
                        "answer": r.answer,
                        "correct": bool(correct),
                    }
                )
                + "\n"
            )


def distil_knowledge(cfg: NesyCDConfig, errors: Path) -> dict:
    """The teacher's knowledge job (distill.knowledge) on the error cases; optionally auto-accept.

    Finished teacher calls are cached by distill.teacher, so a stopped run repeats none.
    """
    from distill import knowledge, teacher

    cases = knowledge.read_error_cases(errors)
    if cfg.max_knowledge is not None and len(cases) > cfg.max_knowledge:
        # bounds the teacher bill; S_E still trains on every example, the unsampled errors plain
        cases = random.Random(cfg.seed).sample(cases, cfg.max_knowledge)
    if not cases:
        return {"errors": 0, "created": 0}
    client = teacher.make_client(
        cfg.teacher,
        cfg.teacher_model,
        cfg.api_key_env,
        concurrency=4,
        temperature=cfg.teacher_temperature,
        max_tokens=cfg.teacher_max_tokens,
        timeout=300.0,
    )
    summary = knowledge.distil_knowledge(client, cases, KIND, f"{cfg.output}-errors", auto_accept=cfg.auto_accept)
    return {
        "errors": len(cases),
        "created": summary.created,
        "malformed": summary.malformed,
        "failed_calls": summary.failed_calls,
        "auto_accepted": bool(cfg.auto_accept),
    }
