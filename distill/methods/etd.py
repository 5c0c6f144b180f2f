"""ETD / EoTD (Zhu et al., 2024): thoughts of several types, selected by a trigger.

ETD trains on CoT, PoT (a program the sandbox runs) and EoT (equations sympy solves) rationales,
each marked by its trigger after the question; EoTD is ETD with the EoT type only. At inference
the trigger selects the type (default: the type the adapter was trained on, from its card), or
`vote` runs all three and takes the majority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from distill import prompts
from distill.methods.options import check_list
from distill.train import (
    Sample,
    TrainingDataError,
    TrainOptions,
    load_records,
    option,
    prepare_output,
    publish,
    question_of,
    run_stage,
)

SUMMARY = "ETD: a mix of CoT, PoT and EoT rationales, each selected by its trigger at inference."
EOTD_SUMMARY = "EoTD: equation-of-thought rationales (ETD with the EoT type only), solved by sympy."
THOUGHTS = tuple(prompts.TRIGGERS)


@dataclass
class ETDConfig(TrainOptions):
    method: ClassVar[str] = "etd"
    thoughts: tuple[Literal["cot", "pot", "eot"], ...] = option("thought types to mix", THOUGHTS)

    def __post_init__(self):
        super().__post_init__()
        check_list("thoughts", self.thoughts, THOUGHTS)

    def inference(self) -> dict:
        # Answer with the type trained on; with CoT among several, CoT (ETD's default trigger).
        default = "cot" if "cot" in self.thoughts else self.thoughts[0]
        return {**super().inference(), "thought": default, "thoughts": list(self.thoughts)}


@dataclass
class EoTDConfig(TrainOptions):
    method: ClassVar[str] = "eotd"
    thoughts: ClassVar[tuple[str, ...]] = ("eot",)

    def inference(self) -> dict:
        return {**super().inference(), "thought": "eot", "thoughts": ["eot"]}


def build_prompt(question: str, *, task_description: str = "", knowledge: Sequence = (), thought: str = "cot") -> str:
    """Training and inference text: `Question: {q}\\n{trigger}\\n` (knowledge block first if any)."""
    return prompts.etd_prompt(question, thought, [prompts.knowledge_text(k) for k in knowledge])


def samples(records, thoughts: Sequence[str]) -> list[Sample]:
    out = [
        Sample(build_prompt(question_of(r), thought=r.thought or "cot"), r.rationale, r.example_id)
        for r in records
        if (r.thought or "cot") in thoughts
    ]
    if not out:
        raise TrainingDataError(
            f"no records with a thought type in {', '.join(thoughts)}; make them with "
            f"`nesy teach rationales --thoughts {','.join(thoughts)}`"
        )
    return out


def run(cfg: ETDConfig | EoTDConfig) -> Path:
    records = load_records(cfg.data, cfg.limit)
    chosen = samples(records, cfg.thoughts)  # before touching the output: bad data fails fast
    root, stages = prepare_output(cfg)
    final = run_stage(cfg, stages, root, "main", lambda: chosen)
    return publish(cfg, root, final, stages)
