"""Every question and rationale text the project bundles, embedded once with the embedded MiniLM.

The texts: `question` and `rationale` of every record in data/*/*.jsonl.gz (the datasets) and
data/rationales/*.jsonl.gz (the shipped rationale sets), each distinct text once, in file order.
The vectors are cached under $NESY_HOME/cache/bench-real-vectors/ (not in git): embedding ~50k
texts takes a while on 2 shared cores, so it is saved in chunks and resumes where it stopped.

    nice -n 19 .venv/bin/python bench/_real_vectors.py     # embed (or finish embedding) once
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHUNK = 2048  # texts per saved file: the resume unit


def bundled_texts() -> list[str]:
    seen, texts = set(), []
    for path in sorted(REPO.glob("data/*/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for key in ("question", "rationale"):
                    text = row.get(key)
                    if isinstance(text, str) and text.strip() and text not in seen:
                        seen.add(text)
                        texts.append(text)
    # a seeded shuffle: any finished prefix of the cache is a fair sample of all the texts
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order]


def cache_dir(texts: list[str]) -> Path:
    from kb.workspace import home

    digest = hashlib.sha1("\n\x00".join(texts).encode()).hexdigest()[:12]
    return home() / "cache" / "bench-real-vectors" / digest


def real_vectors(embed_missing: bool = False, prefix: bool = False) -> tuple[list[str], np.ndarray | None]:
    """(texts, unit vectors) from the cache; with embed_missing, embed the chunks not cached yet.
    When the cache is incomplete and embed_missing is False: vectors None, or with prefix=True the
    texts and vectors of the chunks finished so far (a uniform sample, see bundled_texts)."""
    texts = bundled_texts()
    folder = cache_dir(texts)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for n, start in enumerate(range(0, len(texts), CHUNK)):
        path = folder / f"{n:04d}.npy"
        if not path.exists():
            if not embed_missing:
                if prefix and chunks:
                    done = np.concatenate(chunks)
                    return texts[: len(done)], done
                return texts, None
            from kb.index import embed_texts

            began = time.perf_counter()
            vectors = embed_texts(texts[start : start + CHUNK])
            np.save(folder / f"{n:04d}.tmp.npy", vectors)
            os.replace(folder / f"{n:04d}.tmp.npy", path)
            print(
                f"chunk {n + 1}/{-(-len(texts) // CHUNK)}: {len(vectors)} texts in {time.perf_counter() - began:.0f}s",
                flush=True,
            )
        chunks.append(np.load(path))
    return texts, np.concatenate(chunks)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, vectors = real_vectors(embed_missing=True)
    print(f"{len(texts)} distinct bundled texts embedded: {vectors.shape}, cached in {cache_dir(texts)}")
