"""Teacher client against a real local llama.cpp server: items/s at concurrency 4 and 8 vs one
request at a time, and a cached re-run vs its first run, in interleaved rounds.

    .venv/bin/python bench/bench_teacher.py --n 8                 # README (3 rounds)
    .venv/bin/python bench/bench_teacher.py --gguf PATH --max-tokens 32 --threads 2

Default model: the small SmolLM2-135M Q4_1 GGUF (fast; the numbers show the client and server
scaling, not teacher quality). Pass --gguf for the 1.5B teacher (`make setup-teacher`). One
server (8 slots) serves every run. Each round runs, back to back, --n GSM8K test questions per
side, every side and every round its own questions, so llama.cpp's prompt cache cannot favour a
later one:
  c1        TeacherClient.complete_many at concurrency 1: the plain way, one request at a time
  c4, c8    the same at concurrency 4 and 8 (c4 through a TeacherCache)
  cached    c4's requests again through that cache: no teacher call
Ratios (bench/_measure.py: median with its min–max, machine load): c4/c1 and c8/c1 items/s (on
a 2-core machine the gain can only come from batching the decode steps of parallel requests),
and cached/c4 items/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Load, Spread, interleave, per_second, ratio  # noqa: E402

from distill.data import get_dataset  # noqa: E402
from distill.llama_server import LocalTeacherServer  # noqa: E402
from distill.models import student_gguf_path  # noqa: E402
from distill.teacher import TeacherCache, TeacherClient, TeacherConfig, Usage  # noqa: E402


def prompts(questions, offset: int, n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Question: {e.question}\nLet's think step by step."}]
        for e in questions[offset : offset + n]
    ]


def check(results: list) -> None:
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        sys.exit(f"error: {len(failed)} of {len(results)} calls failed, first: {failed[0]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--n", type=int, default=8, help="questions per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: ServerOptions' (every core)")
    args = parser.parse_args()
    os.environ.setdefault("NESY_HOME", tempfile.mkdtemp(prefix="nesy-bench-"))
    gguf = args.gguf or str(student_gguf_path())
    questions = get_dataset("gsm8k").load("test")
    fresh = iter(range(0, len(questions), args.n))  # offsets of unused questions
    usage = {name: Usage() for name in ("c1", "c4", "c8", "cached")}
    print(f"model: {gguf}\nitems per side and round: {args.n}, max_tokens: {args.max_tokens}")

    with LocalTeacherServer(gguf, n_parallel=8, n_ctx=1024, threads=args.threads) as info:
        cache, last = TeacherCache(), {}

        def run(name: str, concurrency: int, requests, with_cache: bool = False) -> float:
            client = TeacherClient(
                TeacherConfig.for_server(info, concurrency=concurrency, max_tokens=args.max_tokens),
                cache if with_cache else None,
            )
            rate = per_second(len(requests), lambda: check(client.complete_many(requests)))
            for key, value in client.usage.__dict__.items():
                setattr(usage[name], key, getattr(usage[name], key) + value)
            return rate

        def first_run() -> float:
            last["requests"] = prompts(questions, next(fresh), args.n)
            return run("c4", 4, last["requests"], with_cache=True)

        sides = {
            "c1": lambda: run("c1", 1, prompts(questions, next(fresh), args.n)),
            "c4": first_run,
            "cached": lambda: run("cached", 4, last["requests"], with_cache=True),
            "c8": lambda: run("c8", 8, prompts(questions, next(fresh), args.n)),
        }
        with Load() as load:
            rounds = interleave(sides, args.rounds)

    for name, rates in rounds.items():
        u = usage[name]
        print(
            f"{name:7s}: {Spread(rates, ' items/s')}; {u.requests} teacher calls, {u.cached} from cache, "
            f"{u.completion_tokens} completion tokens"
        )
    print(f"concurrency 4 / 1: {ratio(rounds['c4'], rounds['c1'])} items/s")
    print(f"concurrency 8 / 1: {ratio(rounds['c8'], rounds['c1'])} items/s")
    print(f"cached re-run / first run (concurrency 4): {ratio(rounds['cached'], rounds['c4'])} items/s")
    print(load)


if __name__ == "__main__":
    main()
