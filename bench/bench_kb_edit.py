"""Edit one entry in an N-entry KB: time until the edit is searchable (incremental sync) vs a full
rebuild of the index, in interleaved rounds.

    .venv/bin/python bench/bench_kb_edit.py --n 100000            # README (3 rounds)
    .venv/bin/python bench/bench_kb_edit.py --n 10000             # quick

Embedding 100k texts with MiniLM on 2 CPU cores takes hours, so the bulk of the KB is embedded
with a cheap deterministic hash embedder (named "synthetic" in the index, so its vectors never
mix with real ones). Each round runs, back to back:
  edit      update one entry (a different one each round) and sync: the entry is embedded with
            the real MiniLM and patched into the index; checked searchable
  rebuild   KBIndex.rebuild() over all N entries with the hash embedder (timed for real)
  embed     MiniLM and the hash embedder on --real-sample texts (texts/s of each)
Ratios (bench/_measure.py: median with its min–max, machine load): rebuild/edit as measured, and
rebuild with MiniLM / edit, where that rebuild is the measured one minus its hash embedding
(N / hash texts/s) plus N / MiniLM texts/s of the same round (target >= 1000x).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Load, Spread, column, interleave, per_second, ratio, timed  # noqa: E402


def hash_embed(texts: list[str]) -> np.ndarray:
    """Deterministic pseudo-embeddings: unit vectors seeded by the text (no model)."""
    out = np.empty((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        out[i] = np.random.default_rng(seed).standard_normal(384, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--real-sample", type=int, default=256, help="texts embedded with MiniLM each round to measure its throughput"
    )
    args = parser.parse_args()
    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-edit-")
    from bench_import import synthetic_jsonl

    from kb.index import IndexConfig, KBIndex, embed_texts, indexed_text
    from kb.jsonl import import_jsonl
    from kb.store import KBStore

    store = KBStore()
    import_jsonl(store, synthetic_jsonl(args.n), max_bytes=1 << 40, by="bench")
    index = KBIndex(store, config=IndexConfig(embedder="synthetic"), embed=hash_embed)
    first = []
    seconds = timed(lambda: first.append(index.sync()))
    print(f"KB of {args.n:,} entries; first sync {seconds:.1f}s ({first[0].kind}, {first[0].total:,} vectors)")
    sample = [indexed_text(e) for e in store.query(limit=args.real_sample).entries]
    embed_texts(sample[:8])  # load the model outside the timing
    edited = iter(store.query(sort="id", limit=args.rounds + 1, offset=args.n // 2).entries)

    def edit() -> float:
        """Seconds from the update until the entry is in the index, embedded by the real model."""
        index.embed = embed_texts
        target = next(edited)
        new_text = f"Edited: when a tank fills at two rates, add the rates, then divide ({target.id})."
        reports = []

        def update_and_sync() -> None:
            store.update(target.id, {"learning_summary": new_text}, target.version, by="bench")
            reports.append(index.sync())

        seconds = timed(update_and_sync)
        hit = index.search(indexed_text(store.get(target.id)), k=1, statuses=None)[0]
        assert reports[0].embedded == 1 and hit.entry.id == target.id, (reports, hit.entry.id)
        return seconds

    def rebuild() -> float:
        index.embed = hash_embed
        return timed(index.rebuild)

    sides = {
        "edit": edit,
        "rebuild": rebuild,
        "embed": lambda: {
            "minilm": per_second(len(sample), lambda: embed_texts(sample)),
            "hash": per_second(len(sample), lambda: hash_embed(sample)),
        },
    }
    with Load() as load:
        rounds = interleave(sides, args.rounds)
    minilm, hashed = column(rounds["embed"], "minilm"), column(rounds["embed"], "hash")
    with_minilm = [s - args.n / h + args.n / m for s, h, m in zip(rounds["rebuild"], hashed, minilm)]
    print(f"MiniLM embedding: {Spread(minilm, ' texts/s')} on this machine")
    print(f"edit one entry -> searchable: {Spread([s * 1000 for s in rounds['edit']], ' ms')} (update + sync)")
    print(
        f"full rebuild, measured (hash embedder): {Spread(rounds['rebuild'], ' s')} "
        f"-> {ratio(rounds['rebuild'], rounds['edit'])} the edit's time"
    )
    print(
        f"full rebuild, with MiniLM (estimated) : {Spread(with_minilm, ' s')} "
        f"-> {ratio(with_minilm, rounds['edit'])} the edit's time (target >= 1000x)"
    )
    print(load)


if __name__ == "__main__":
    main()
