"""Std-CoT: fine-tune the student on verified teacher rationales (question -> rationale).

It is also NesyCD's first stage (S_P), so its prompt is NesyCD's without knowledge: the reference
code's task line, the question (options included), and "Answer: Let's think step by step. ".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from distill import prompts
from distill.train import (
    Sample,
    TrainingDataError,
    TrainOptions,
    load_records,
    prepare_output,
    publish,
    question_of,
    run_stage,
    task_description_of,
)

SUMMARY = "Std-CoT: fine-tune on teacher rationales (question → rationale)."


@dataclass
class StdCoTConfig(TrainOptions):
    """Std-CoT has only the shared options."""

    method: ClassVar[str] = "std-cot"

    def inference(self) -> dict:
        return {**super().inference(), "thought": "cot"}


def build_prompt(question: str, *, task_description: str = "", knowledge: Sequence = (), thought: str = "cot") -> str:
    """Training and inference text (knowledge only when inference retrieves some)."""
    return prompts.student_prompt(question, task_description, [prompts.knowledge_text(k) for k in knowledge])


def samples(records) -> list[Sample]:
    out = [
        Sample(build_prompt(question_of(r), task_description=task_description_of(r)), r.rationale, r.example_id)
        for r in records
        if (r.thought or "cot") == "cot"
    ]
    if not out:
        raise TrainingDataError("no chain-of-thought (cot) records to train on")
    return out


def run(cfg: StdCoTConfig) -> Path:
    records = load_records(cfg.data, cfg.limit)  # before touching the output: bad data fails fast
    root, stages = prepare_output(cfg)
    final = run_stage(cfg, stages, root, "main", lambda: samples(records))
    return publish(cfg, root, final, stages)
