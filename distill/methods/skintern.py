"""SKIntern (Liao et al., 2024): internalise symbolic knowledge by removing it stage by stage.

Each training example carries its own teacher knowledge (`example_knowledge` KB entries, found by
example id: `nesy teach knowledge --from-set DATA` on the training set, or `--dataset …
--with-answer`) and demonstrations; over T stages the knowledge is compressed to nothing and the
demonstrations removed, each stage continuing from the previous stage's adapter, so the final
student answers from the question alone. Prompt order as in the reference code:
task line, knowledge, demonstrations, question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from distill import prompts
from distill.methods.options import check_list
from distill.train import (
    ConfigError,
    Sample,
    TrainingDataError,
    TrainOptions,
    knowledge_by_example,
    load_records,
    option,
    prepare_output,
    publish,
    question_of,
    run_stage,
    task_description_of,
)

SUMMARY = (
    "SKIntern: staged training that removes knowledge and demonstrations step by step; answers from the question alone."
)
KIND = "example_knowledge"
STATUSES = ("accepted", "pending")


@dataclass
class SKInternConfig(TrainOptions):
    method: ClassVar[str] = "skintern"
    stages: int = option("number of stages T; the last is question-only", 4)
    demos: int = option("demonstrations at stage 0", 6)
    schedule: Literal["linear", "reference"] = option(
        "how demonstrations decrease: 'linear' to 0 over the stages, or 'reference' = the reference "
        "code's 6 − s at stage s (needs stages ≥ demos + 1 to end question-only)",
        "linear",
    )
    demo_selection: Literal["similar", "random"] = option(
        "demonstrations per example: most similar questions, or a seeded random sample (the reference)", "similar"
    )
    knowledge_statuses: tuple[Literal["accepted", "pending"], ...] = option(
        "statuses of the knowledge used in training", STATUSES
    )

    def __post_init__(self):
        super().__post_init__()
        if self.stages < 1 or self.demos < 0:
            raise ConfigError("--stages must be at least 1 and --demos at least 0")
        if self.schedule == "reference" and self.stages < self.demos + 1:
            raise ConfigError(
                f"--schedule reference shows {self.demos} − s demonstrations at stage s, so "
                f"it reaches question-only only with --stages {self.demos + 1} or more "
                f"(or use --schedule linear)"
            )
        check_list("knowledge_statuses", self.knowledge_statuses, STATUSES)

    def inference(self) -> dict:
        return {**super().inference(), "thought": "cot", "k": 0, "source_kinds": [KIND]}


def build_prompt(
    question: str,
    *,
    task_description: str = "",
    knowledge: Sequence = (),
    demos: Sequence[tuple[str, str]] = (),
    thought: str = "cot",
) -> str:
    """Training text of any stage; with no knowledge and no demos, the question-only inference text."""
    return prompts.student_prompt(question, task_description, [prompts.knowledge_text(k) for k in knowledge], demos)


def check_knowledge(records, knowledge: dict[str, list]) -> None:
    """Every training example needs its knowledge; list the ones that have none."""
    missing = sorted({r.example_id for r in records if not knowledge.get(r.example_id)})
    if missing:
        shown = ", ".join(missing[:20]) + (f" … ({len(missing)} in all)" if len(missing) > 20 else "")
        raise TrainingDataError(
            f"skintern needs knowledge for every training example; {len(missing)} of {len(records)} have "
            f"no {KIND} entry ({', '.join(STATUSES)}): {shown}. Create it with "
            f"`nesy teach knowledge --from-set <the --data set>`, or train on the examples that have it"
        )


def stage_samples(records, texts: dict[str, list[str]], demos: dict, schedule, idf) -> list[Sample]:
    """One stage: knowledge compressed to the stage's share; the stage's first demonstrations."""
    out = []
    for r in records:
        kept = [c for t in texts[r.example_id] if (c := prompts.compress(t, schedule.knowledge_share, idf))]
        full, *shorter = prompts.shrinking_prompts(
            question_of(r), task_description_of(r), kept, demos.get(r.example_id, [])[: schedule.demos]
        )
        out.append(Sample(full, r.rationale, r.example_id, tuple(shorter)))
    return out


def run(cfg: SKInternConfig) -> Path:
    records = [r for r in load_records(cfg.data, cfg.limit) if (r.thought or "cot") == "cot"]
    knowledge = knowledge_by_example(KIND, cfg.knowledge_statuses)
    check_knowledge(records, knowledge)  # before touching the output
    texts = {r.example_id: [prompts.knowledge_text(e) for e in knowledge[r.example_id]] for r in records}
    idf = prompts.idf_table(t for items in texts.values() for t in items)
    pool = [(question_of(r), r.rationale) for r in records]
    # Demonstrations chosen once at the largest count; later stages keep a prefix.
    demos = (
        {
            r.example_id: prompts.select_demos(question_of(r), pool, cfg.demos, cfg.demo_selection, cfg.seed)
            for r in records
        }
        if cfg.demos
        else {}
    )
    root, stages = prepare_output(cfg)
    previous = None
    for sched in prompts.skintern_schedule(cfg.stages, cfg.demos, cfg.schedule):
        previous = run_stage(
            cfg,
            stages,
            root,
            f"stage{sched.stage}",
            lambda sched=sched: stage_samples(records, texts, demos, sched, idf),
            init=previous,
        )
    return publish(cfg, root, previous, stages)
