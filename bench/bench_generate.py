"""Batched vs one-at-a-time generation with the student (target >= 3x questions per second).

Same model, same GSM8K test questions, greedy, same max_new_tokens. One-at-a-time calls
Student.answer([q]) per question; batched calls Student.answer(questions, batch_size=--batch)
(left padding). Both produce the same answers (tests/test_infer.py checks that on a tiny model;
the count of identical answers is printed here). Each round runs both passes back to back
(bench/_measure.py: median ratio with its min–max and the machine load). Tokens/s counts the
tokens each pass generated (up to the first end-of-sequence of each answer).

    .venv/bin/python bench/bench_generate.py --questions 8                                      # README
    .venv/bin/python bench/bench_generate.py --questions 16 --batch 16 --max-new-tokens 200     # evaluation

The same student served by llama.cpp (GGUF, its own batching) is measured by
bench/bench_student_backends.py.
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
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("NESY_HOME", tempfile.mkdtemp(prefix="nesy-bench-"))

from _measure import Load, Spread, interleave, ratio, timed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--batch", type=int, default=None, help="default: all the questions in one batch")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    import torch

    from distill.infer import Student

    with gzip.open(REPO / "data" / "gsm8k" / "test.jsonl.gz", "rt") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(args.questions), f)]
    batch = args.batch or len(questions)
    student = Student(args.model)
    student.answer(questions[:1], max_new_tokens=4)  # warm-up
    answers, tokens = {}, {}

    def run(name: str, call):
        def go():
            seconds = timed(lambda: answers.__setitem__(name, call()))
            tokens[name] = sum(
                len(student.tokenizer(a.text, add_special_tokens=False)["input_ids"]) + 1 for a in answers[name]
            )
            return seconds

        return go

    sides = {
        "single": run(
            "single", lambda: [student.answer([q], max_new_tokens=args.max_new_tokens)[0] for q in questions]
        ),
        "batched": run(
            "batched", lambda: student.answer(questions, max_new_tokens=args.max_new_tokens, batch_size=batch)
        ),
    }
    with Load() as load:
        rounds = interleave(sides, args.rounds)
    same = sum(a.text == b.text for a, b in zip(answers["single"], answers["batched"]))
    print(
        f"{len(questions)} questions, batch {batch}, max_new_tokens {args.max_new_tokens}, greedy, "
        f"torch threads {torch.get_num_threads()}, weights {next(student.model.parameters()).dtype}"
    )
    for name in sides:
        secs = rounds[name]
        print(
            f"{name:8s}: {Spread(secs, ' s')} per pass = {Spread([len(questions) / s for s in secs], ' q/s')}, "
            f"{Spread([tokens[name] / s for s in secs], ' tok/s')} (~{tokens[name]} tokens per pass)"
        )
    print(
        f"speed-up batched/single: {ratio(rounds['single'], rounds['batched'])} (target >= 3x); "
        f"identical answers {same}/{len(questions)}"
    )
    print(load)


if __name__ == "__main__":
    main()
