"""Edit one entry in an N-entry KB: time until the edit is searchable (incremental sync) vs a full
rebuild, measured side by side in one run.

Embedding 100k texts with MiniLM on 2 CPU cores takes many minutes, so the bulk of the KB is
embedded with a cheap deterministic hash embedder (named "synthetic" in the index, so its vectors
never mix with real ones); the rebuild is timed for real with it, and the real-model rebuild is
that time plus N / (measured MiniLM texts per second). The edit itself is embedded with the real
MiniLM.

    .venv/bin/python bench/bench_kb_edit.py --n 100000
    .venv/bin/python bench/bench_kb_edit.py --n 10000     # quick
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def hash_embed(texts: list[str]) -> np.ndarray:
    """Deterministic pseudo-embeddings: unit vectors seeded by the text (no model)."""
    out = np.empty((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        out[i] = np.random.default_rng(seed).standard_normal(384, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--real-sample", type=int, default=256,
                        help="texts embedded with MiniLM to measure its throughput")
    args = parser.parse_args()
    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-edit-")
    from bench_import import synthetic_jsonl
    from kb.index import IndexConfig, KBIndex, embed_texts, indexed_text
    from kb.jsonl import import_jsonl
    from kb.store import KBStore

    store = KBStore()
    import_jsonl(store, synthetic_jsonl(args.n), max_bytes=1 << 40, by="bench")
    index = KBIndex(store, config=IndexConfig(embedder="synthetic"), embed=hash_embed)
    start = time.perf_counter()
    first = index.sync()
    print(f"KB of {args.n:,} entries; first sync {time.perf_counter() - start:.1f}s "
          f"({first.kind}, {first.total:,} vectors)")

    # real MiniLM throughput (the rebuild cost a user would pay)
    sample = [indexed_text(e) for e in store.query(limit=args.real_sample).entries]
    embed_texts(sample[:8])  # load the model outside the timing
    start = time.perf_counter()
    embed_texts(sample)
    real_rate = len(sample) / (time.perf_counter() - start)

    start = time.perf_counter()
    rebuilt = index.rebuild()
    rebuild_s = time.perf_counter() - start
    synthetic_embed_s = _time(lambda: hash_embed(sample)) * args.n / len(sample)
    rebuild_real_s = rebuild_s - synthetic_embed_s + args.n / real_rate

    index.embed = lambda texts: embed_texts(texts)  # the edit goes through the real model
    target = store.query(sort="id", limit=1, offset=args.n // 2).entries[0]
    new_text = "Edited: when a tank fills at two different rates, add the rates, then divide."
    start = time.perf_counter()
    store.update(target.id, {"learning_summary": new_text}, target.version, by="bench")
    report = index.sync()
    searchable_s = time.perf_counter() - start
    edited = store.get(target.id)
    hit = index.search(indexed_text(edited), k=1, statuses=None)[0]
    assert report.embedded == 1 and hit.entry.id == target.id, (report, hit.entry.id)

    print(f"MiniLM embedding: {real_rate:.0f} texts/s on this machine")
    print(f"edit one entry -> searchable: {searchable_s * 1000:8.1f} ms "
          f"(update + sync, embedded {report.embedded}, {report.kind} index)")
    print(f"full rebuild, measured (hash embedder): {rebuild_s:8.1f} s  "
          f"-> {rebuild_s / searchable_s:8.0f}x slower")
    print(f"full rebuild, with MiniLM (estimated) : {rebuild_real_s:8.1f} s  "
          f"-> {rebuild_real_s / searchable_s:8.0f}x slower   (target >= 1000x)")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
