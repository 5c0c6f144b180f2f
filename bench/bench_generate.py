"""Batched vs one-at-a-time generation with the student (target >= 3x questions per second).

Same model, same GSM8K test questions, greedy, same max_new_tokens. One-at-a-time calls
Student.answer([q]) per question; batched calls Student.answer(questions) once (left padding).
Both produce the same answers (tests/test_infer.py checks that on a tiny model).

    .venv/bin/python bench/bench_generate.py [--questions 8] [--max-new-tokens 48] [--model PATH]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("NESY_HOME", tempfile.mkdtemp(prefix="nesy-bench-"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    from distill.infer import Student

    with gzip.open(REPO / "data" / "gsm8k" / "test.jsonl.gz", "rt") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(args.questions), f)]
    student = Student(args.model)
    student.answer(questions[:1], max_new_tokens=4)  # warm-up
    start = time.perf_counter()
    single = [student.answer([q], max_new_tokens=args.max_new_tokens)[0] for q in questions]
    t_single = time.perf_counter() - start
    start = time.perf_counter()
    batched = student.answer(questions, max_new_tokens=args.max_new_tokens, batch_size=len(questions))
    t_batched = time.perf_counter() - start
    same = sum(a.text == b.text for a, b in zip(single, batched))
    print(f"{len(questions)} questions, max_new_tokens {args.max_new_tokens}, greedy")
    print(f"one at a time: {t_single:.1f}s ({len(questions) / t_single:.2f} q/s)")
    print(f"batched      : {t_batched:.1f}s ({len(questions) / t_batched:.2f} q/s)")
    print(f"speed-up: {t_single / t_batched:.2f}x (target >= 3x); identical answers {same}/{len(questions)}")


if __name__ == "__main__":
    main()
