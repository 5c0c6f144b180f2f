"""Import of N KB entries from JSONL: ours (kb.jsonl.import_jsonl) vs a plain `executemany` of the
same rows into SQLite, in interleaved rounds.

    .venv/bin/python bench/bench_import.py --n 100000            # README (3 rounds)

Each round runs, back to back, on the same file:
  validate   kb.jsonl.validate_jsonl alone (parse + schema checks, nothing written)
  ours       kb.jsonl.import_jsonl into a fresh KBStore: validate, then one transaction with
             revisions, FTS and concept rows
  plain      the plain library way: json.loads each line, one `executemany` of (id, task, status,
             title, line) into a fresh SQLite table with an id primary key, one transaction
The ratio ours/plain (entries/s) is the share of plain SQLite's rate our import keeps: what the
checks, revisions and search tables cost (bench/_measure.py: median with its min–max, machine
load). Runs in a throwaway $NESY_HOME. Peak memory: ru_maxrss of this process (tracemalloc would
slow the import 3x), measured before the first round so the import's share is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Load, Spread, interleave, per_second, ratio  # noqa: E402


def synthetic_jsonl(n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(
            json.dumps(
                {
                    "id": f"gsm8k-{i:07d}-error_analysis",
                    "task": f"task{i % 25}",
                    "learning_summary": f"When a problem mentions rate {i % 97}, write the quantities "
                    f"first, then set up the equation step by step ({i}).",
                    "supplementary_knowledge": f"Formula {i % 13}: distance = speed * time; "
                    f"percent p of x is x * p / 100.",
                    "status": ("pending", "accepted", "rejected")[i % 3],
                    "title": f"Rate problems #{i}",
                    "concepts": [f"concept{i % 50}", "rates"],
                    "source": {
                        "kind": "error_analysis",
                        "dataset": "gsm8k",
                        "example_id": str(i),
                        "question": f"A train goes {i % 300} km in {i % 7 + 1} hours. Speed?",
                    },
                },
                ensure_ascii=False,
            )
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


def plain_executemany(path: Path, db: Path) -> None:
    """The baseline: parse each line and insert its columns and text, no checks, one transaction."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            rows.append((d["id"], d["task"], d["status"], d["title"], line))
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE entries (id TEXT PRIMARY KEY, task TEXT, status TEXT, title TEXT, data TEXT)")
    with con:
        con.executemany("INSERT INTO entries VALUES (?,?,?,?,?)", rows)
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nesy-bench-import-"))
    os.environ["NESY_HOME"] = str(home)
    from kb.jsonl import import_jsonl, validate_jsonl
    from kb.store import KBStore

    data = synthetic_jsonl(args.n)
    path = home / "kb.jsonl"
    path.write_bytes(data)
    print(f"file: {args.n:,} entries, {len(data) / 1e6:.1f} MB")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    db_mb = []

    def ours() -> None:
        db = home / "ours.sqlite"
        report = import_jsonl(KBStore(db), path, max_bytes=1 << 40, by="bench")
        assert report.added == args.n, report
        db_mb.append(db.stat().st_size / 1e6)
        for f in home.glob("ours.sqlite*"):  # a fresh store each round
            f.unlink()

    def plain() -> None:
        plain_executemany(path, home / "plain.sqlite")
        (home / "plain.sqlite").unlink()

    sides = {
        "validate": lambda: per_second(args.n, lambda: validate_jsonl(path, max_bytes=1 << 40)),
        "ours": lambda: per_second(args.n, ours),
        "plain": lambda: per_second(args.n, plain),
    }
    with Load() as load:
        rounds = interleave(sides, args.rounds)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_share = [1 - o / v for o, v in zip(rounds["ours"], rounds["validate"])]  # 1 - validate s / import s
    print(f"validate only : {Spread(rounds['validate'], ' entries/s')}")
    print(
        f"ours (import) : {Spread(rounds['ours'], ' entries/s')} (validate + one transaction with "
        f"revisions, FTS and concept rows); writing is {Spread([100 * s for s in write_share], ' %')} "
        f"of its time"
    )
    print(f"plain executemany: {Spread(rounds['plain'], ' entries/s')} (parse + insert, no checks)")
    print(
        f"ours/plain entries/s: {ratio(rounds['ours'], rounds['plain'])} (the share of plain SQLite's "
        f"rate our import keeps)"
    )
    print(
        f"peak memory   : {rss_mb:.0f} MB max RSS ({rss_before:.0f} MB before the first round, "
        f"file bytes included); our database {db_mb[-1]:.0f} MB"
    )
    print(load)


if __name__ == "__main__":
    main()
