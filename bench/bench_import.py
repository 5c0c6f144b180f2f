"""Import of N KB entries from JSONL: entries/s and peak memory, validate vs write side by side.

    .venv/bin/python bench/bench_import.py --n 100000
Runs in a throwaway $NESY_HOME. Peak memory: ru_maxrss of this process (tracemalloc would slow
the import 3x and distort entries/s), measured before and after so the import's share is visible.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic_jsonl(n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(json.dumps({
            "id": f"gsm8k-{i:07d}-error_analysis", "task": f"task{i % 25}",
            "learning_summary": f"When a problem mentions rate {i % 97}, write the quantities "
                                f"first, then set up the equation step by step ({i}).",
            "supplementary_knowledge": f"Formula {i % 13}: distance = speed * time; "
                                       f"percent p of x is x * p / 100.",
            "status": ("pending", "accepted", "rejected")[i % 3],
            "title": f"Rate problems #{i}", "concepts": [f"concept{i % 50}", "rates"],
            "source": {"kind": "error_analysis", "dataset": "gsm8k", "example_id": str(i),
                       "question": f"A train goes {i % 300} km in {i % 7 + 1} hours. Speed?"},
        }, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-import-")
    from kb.jsonl import import_jsonl, validate_jsonl
    from kb.store import KBStore

    data = synthetic_jsonl(args.n)
    path = Path(os.environ["NESY_HOME"]) / "kb.jsonl"
    path.write_bytes(data)
    print(f"file: {args.n} entries, {len(data) / 1e6:.1f} MB")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    report = validate_jsonl(path, max_bytes=1 << 40)
    validate_s = time.perf_counter() - start
    del report
    start = time.perf_counter()
    report = import_jsonl(KBStore(), path, max_bytes=1 << 40, by="bench")
    import_s = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert report.added == args.n
    db_mb = (Path(os.environ["NESY_HOME"]) / "kb.sqlite").stat().st_size / 1e6
    print(f"validate only : {validate_s:6.1f} s  {args.n / validate_s:9.0f} entries/s")
    print(f"full import   : {import_s:6.1f} s  {args.n / import_s:9.0f} entries/s "
          f"(validate + one transaction with revisions, FTS and concept rows)")
    print(f"write share   : {(import_s - validate_s) / import_s:.0%} of import time")
    print(f"peak memory   : {rss_mb:.0f} MB max RSS ({rss_before:.0f} MB before validating, "
          f"file bytes included); database {db_mb:.0f} MB")


if __name__ == "__main__":
    main()
