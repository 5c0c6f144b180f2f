"""Teacher throughput against a real local llama.cpp server: items/s at concurrency 1, 4, 8, and a
cached re-run vs the first run.

    .venv/bin/python bench/bench_teacher.py [--gguf PATH] [--n 8] [--max-tokens 32]

Default model: the small SmolLM2-135M Q4_1 GGUF (fast; the numbers show the client and server
scaling, not teacher quality). Pass --gguf for the 1.5B teacher (`make setup-teacher`).
Each concurrency level gets its own questions (GSM8K test) so llama.cpp's prompt cache cannot
favour a later level. The server has 8 slots; on a 2-core machine the gain from concurrency
comes from batching decode steps of parallel requests.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from distill.data import get_dataset
from distill.models import student_gguf_path
from distill.teacher import LocalTeacherServer, TeacherCache, TeacherClient


def prompts(offset: int, n: int) -> list[list[dict]]:
    examples = get_dataset("gsm8k").load("test")[offset:offset + n]
    return [[{"role": "user", "content": f"Question: {e.question}\nLet's think step by step."}]
            for e in examples]


def timed(client: TeacherClient, requests) -> float:
    start = time.perf_counter()
    results = client.complete_many(requests)
    assert not any(isinstance(r, Exception) for r in results), results
    return len(requests) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: half the cores")
    args = parser.parse_args()
    os.environ.setdefault("NESY_HOME", tempfile.mkdtemp(prefix="nesy-bench-"))
    gguf = args.gguf or str(student_gguf_path())
    print(f"model: {gguf}\nitems per run: {args.n}, max_tokens: {args.max_tokens}")
    with LocalTeacherServer(gguf, n_parallel=8, n_ctx=1024, threads=args.threads) as info:
        for k, concurrency in enumerate((1, 4, 8)):
            client = TeacherClient(info.config(concurrency=concurrency, max_tokens=args.max_tokens))
            print(f"concurrency {concurrency}: {timed(client, prompts(k * args.n, args.n)):.3f} items/s"
                  f"  ({client.usage.completion_tokens} completion tokens)")
        cache = TeacherCache()
        requests = prompts(3 * args.n, args.n)
        first = TeacherClient(info.config(concurrency=4, max_tokens=args.max_tokens), cache)
        first_rate = timed(first, requests)
        again = TeacherClient(info.config(concurrency=4, max_tokens=args.max_tokens), cache)
        again_rate = timed(again, requests)
        print(f"first run (concurrency 4): {first_rate:.3f} items/s, {first.usage.requests} calls")
        print(f"cached re-run:            {again_rate:.1f} items/s, {again.usage.requests} calls, "
              f"{again.usage.cached} from cache ({again_rate / first_rate:.0f}x)")


if __name__ == "__main__":
    main()
