"""Prompt tokens per question: SKIntern question-only vs knowledge + demonstrations (~4x).

Builds the exact prompts SKIntern trains on (distill.prompts, chat template of the student) for
GSM8K test questions: stage 0 (full knowledge + `--demos` similar demonstrations from the train
set), every intermediate stage of the linear schedule, and the question-only prompt used at
inference. Knowledge: the KB's `example_knowledge` entries when $NESY_HOME has them; otherwise
the reference solution of a similar training question stands in for a teacher's knowledge
(same order of length: a paragraph). Forward FLOPs per question = 2 x params x prompt tokens.
The ratio is knowledge + demonstrations (stage 0) / question-only prompt tokens.

    .venv/bin/python bench/bench_prompt_tokens.py                # README: 50 questions, 4 stages, 6 demos
    .venv/bin/python bench/bench_prompt_tokens.py [--questions 50] [--stages 4] [--demos 6]

Unlike the other bench/ scripts this one times nothing: the counts are deterministic (the same
tokenizer on the same prompts), so they are the same on every run and under any machine load.
It therefore runs once, with no rounds and no load line (bench/_measure.py would only add noise).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("NESY_HOME", tempfile.mkdtemp(prefix="nesy-bench-"))

STUDENT_PARAMS = 134_515_008  # SmolLM2-135M


def rows(split: str, n: int) -> list[dict]:
    with gzip.open(REPO / "data" / "gsm8k" / f"{split}.jsonl.gz", "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--pool", type=int, default=500)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--demos", type=int, default=6)
    args = p.parse_args()
    from transformers import AutoTokenizer

    from distill import prompts
    from distill.data import get_dataset
    from distill.models import student_path

    TASK = get_dataset("gsm8k").task_description()
    tok = AutoTokenizer.from_pretrained(student_path())
    pool = [(r["question"], f"{r['rationale']}\nThe answer is {r['answer']}.") for r in rows("train", args.pool)]
    tests = rows("test", args.questions)
    idf = prompts.idf_table(r for _, r in pool)

    def n_tokens(user: str) -> int:
        return len(tok(prompts.render(tok, user)[0], add_special_tokens=False)["input_ids"])

    schedule = prompts.skintern_schedule(args.stages, args.demos)
    totals = [0] * len(schedule)
    for r in tests:
        demos = prompts.select_demos(r["question"], pool, args.demos, "similar")
        knowledge = prompts.select_demos(r["question"], pool, 1, "similar")[0][1]  # stand-in knowledge
        for i, s in enumerate(schedule):
            user = prompts.student_prompt(
                r["question"], TASK, [prompts.compress(knowledge, s.knowledge_share, idf)], demos[: s.demos]
            )
            totals[i] += n_tokens(user)
    means = [t / len(tests) for t in totals]
    print(f"{len(tests)} GSM8K test questions, {args.stages} stages, {args.demos} similar demonstrations at stage 0")
    for s, m in zip(schedule, means):
        print(
            f"stage {s.stage}: knowledge {100 * s.knowledge_share:5.1f}%, {s.demos} demos -> "
            f"{m:7.1f} prompt tokens, {2 * STUDENT_PARAMS * m / 1e9:6.1f} GFLOPs forward"
        )
    print(
        f"knowledge + demonstrations vs question-only: {means[0] / means[-1]:.1f}x prompt tokens "
        f"(the question-only prompt is what the SKIntern student sees at inference; a count, the "
        f"same on every run and under any load)"
    )


if __name__ == "__main__":
    main()
