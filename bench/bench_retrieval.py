"""Retrieval: the index KBIndex ships (kb.index.build_faiss) vs exact FAISS flat search, side by side.

Scale (synthetic 384-d unit vectors drawn around cluster centres, like sentence embeddings):
for each --sizes N, top-10 latency per single query (p50/p95, one query at a time as the app
asks) and recall@10 against exact inner-product search. "ours" searches as KBIndex does
(kb.index.search_one: one OpenMP thread); "omp" is the same index searched with all threads.
--lists and --nprobe sweep the IVF shape (lists per sqrt(N); lists scanned, 0 = shipped rule).
Quality (real, --real): every bundled question and rationale embedded once with the embedded
MiniLM (bench/_real_vectors.py caches them in the workspace); 1,000 held out as queries; the IVF
shape KBIndex builds at 100k and at 1M forced on them, and HNSW32 beside it, recall@10 vs exact.

    .venv/bin/python bench/bench_retrieval.py --sizes 100000,1000000     # full run
    .venv/bin/python bench/bench_retrieval.py --sizes 100000 --lists 2,4 --nprobe 0,32,64  # sweep
    .venv/bin/python bench/bench_retrieval.py --sizes 20000               # quick run
    .venv/bin/python bench/bench_retrieval.py --sizes "" --real           # real vectors
    .venv/bin/python bench/bench_retrieval.py --sizes "" --build 1000000 --rounds 2   # build time
    .venv/bin/python bench/bench_retrieval.py --sizes "" --bm25 100000    # BM25 / hybrid

--bm25 N: a KB of N synthetic entries (bench_import.synthetic_jsonl) searched through KBIndex in
bm25 and hybrid mode (a hash embedder stands in for MiniLM): the first search (load + tokenise +
build), query p50, and the next search after a status change, a text edit and a delete.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "bench"))
from _measure import Load, Spread, interleave, ratio  # noqa: E402

from kb.index import DIM, IndexConfig, build_faiss, ivf_lists, ivf_nprobe, search_one  # noqa: E402


def clustered_vectors(n: int, rng: np.random.Generator, clusters: int = 4096, spread: float = 0.9) -> np.ndarray:
    """Unit vectors around random centres (a point's cosine to its centre is ~0.7)."""
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep the temporaries small
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, DIM), dtype=np.float32) * (spread / np.sqrt(DIM))
        block = centres[rng.integers(0, clusters, m)] + noise
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latencies_ms(index, queries: np.ndarray, k: int, search=search_one) -> tuple[np.ndarray, np.ndarray]:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, labels = search(index, q.reshape(1, -1), k)
        times.append((time.perf_counter() - start) * 1000)
        found.append(labels[0])
    return np.array(times), np.array(found)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def all_threads(index, vectors: np.ndarray, k: int):
    return index.search(vectors, k)


def compare(
    base: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
    k: int,
    flat_latency_queries: int,
    nprobes: list[int],
    rounds: int = 3,
) -> list[dict]:
    """Build the index KBIndex would build once, then measure it at each nprobe (0 = the one it
    ships) against exact search: per round, ours over all queries, then exact flat search over
    the first `flat_latency_queries` (interleaved, so load hits both alike); p50 and the speed-up
    are medians over rounds (with min–max)."""
    labels = np.arange(len(base), dtype=np.int64)
    start = time.perf_counter()
    ours, kind = build_faiss(base, labels, config)
    build_s = time.perf_counter() - start
    flat = faiss.IndexFlatIP(DIM)
    flat.add(base)
    _, truth = flat.search(queries, k)  # batched exact ground truth
    ivf = faiss.extract_index_ivf(ours) if kind == "ivf" else None
    shipped = ivf.nprobe if ivf else 0
    results = []
    for nprobe in nprobes if kind == "ivf" else [0]:
        if ivf:
            ivf.nprobe = nprobe or shipped
        found = None

        def run_ours():
            nonlocal found
            ms, found = latencies_ms(ours, queries, k)
            return float(np.percentile(ms, 50))

        sides = {
            "ours": run_ours,
            "flat": lambda: float(np.percentile(latencies_ms(flat, queries[:flat_latency_queries], k)[0], 50)),
            "omp": lambda: float(np.percentile(latencies_ms(ours, queries, k, search=all_threads)[0], 50)),
        }
        r = interleave(sides, rounds, progress=False)
        results.append(
            {
                "kind": kind,
                "nlist": ivf.nlist if ivf else 0,
                "nprobe": ivf.nprobe if ivf else 0,
                "build_s": build_s,
                "recall": recall_at_k(found, truth),
                "p50": Spread(r["ours"], " ms"),
                "omp_p50": Spread(r["omp"], " ms"),
                "flat_p50": Spread(r["flat"], " ms"),
                "speedup": ratio(r["flat"], r["ours"]),
            }
        )
    return results


def scale_run(
    sizes: list[int], n_queries: int, k: int, configs: list[IndexConfig], nprobes: list[int], rounds: int = 3
) -> None:
    rng = np.random.default_rng(0)
    print(
        f"threads={faiss.omp_get_max_threads()} approx_threshold={configs[0].approx_threshold} "
        f"shipped: {configs[0].lists_per_sqrt_n:g}*sqrt(N) lists, nprobe "
        f"{configs[0].nprobe or f'{configs[0].probe_factor:g}*sqrt(lists)'}"
    )
    for n in sizes:
        vectors = clustered_vectors(n + n_queries, rng)
        base, queries = vectors[:n], vectors[n:]
        for config in configs:
            for r in compare(base, queries, config, k, min(n_queries, 30), nprobes, rounds):
                print(
                    f"N={n:>9,}  ours={r['kind']}(nlist {r['nlist']:>5}, nprobe {r['nprobe']:>3}) "
                    f"build {r['build_s']:6.1f}s  recall@{k} {r['recall']:.3f}  p50 {r['p50']}  | "
                    f"all-threads p50 {r['omp_p50']}  | flat p50 {r['flat_p50']} -> ours {r['speedup']} "
                    f"faster",
                    flush=True,
                )
        del vectors, base, queries


def faiss_build(vectors: np.ndarray, labels: np.ndarray, config: IndexConfig):
    """The previous build: faiss's own IVF training and add (same lists, sample and nprobe)."""
    n = len(vectors)
    nlist = ivf_lists(n, config.lists_per_sqrt_n)
    index = faiss.index_factory(DIM, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add_with_ids(vectors, labels)
    index.nprobe = ivf_nprobe(nlist, config)
    return index


def build_run(n: int, n_queries: int, k: int, config: IndexConfig, rounds: int) -> None:
    """IVF build at N synthetic vectors: the shipped build (torch k-means + precomputed lists) vs
    faiss's own train + add, alternately; recall@k of each against exact search."""
    rng = np.random.default_rng(0)
    vectors = clustered_vectors(n + n_queries, rng)
    base, queries = vectors[:n], vectors[n:]
    labels = np.arange(n, dtype=np.int64)
    _, truth = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    recall = {}
    config = IndexConfig(**{**config.__dict__, "approx_threshold": 1})  # IVF at any N

    def side(name, build):
        def go():
            start = time.perf_counter()
            index = build()
            seconds = time.perf_counter() - start
            recall[name] = recall_at_k(index.search(queries, k)[1], truth)
            return seconds

        return go

    r = interleave(
        {
            "ours": side("ours", lambda: build_faiss(base, labels, config)[0]),
            "faiss": side("faiss", lambda: faiss_build(base, labels, config)),
        },
        rounds,
    )
    print(
        f"IVF build at N={n:,} ({ivf_lists(n, config.lists_per_sqrt_n)} lists): ours {Spread(r['ours'], ' s')} "
        f"recall@{k} {recall['ours']:.3f}; faiss train+add {Spread(r['faiss'], ' s')} recall@{k} "
        f"{recall['faiss']:.3f}; ours {ratio(r['faiss'], r['ours'])} faster (target < 60 s at 1M)"
    )


def real_run(k: int, config: IndexConfig, partial: bool, held_out: int = 1000) -> None:
    """Real MiniLM vectors of every bundled question and rationale (bench/_real_vectors.py, cached
    in the workspace): `held_out` of them are the queries, the rest the KB. The index is forced
    into the IVF shape KBIndex builds at 100k and at 1M entries (kb.index.build_faiss with
    `scale`: lists and nprobe of that size, its k-means on these vectors), and HNSW32 is measured
    beside it; recall@k against exact search."""
    from _real_vectors import real_vectors

    texts, vectors = real_vectors(prefix=partial)
    if vectors is None:
        print(
            "real vectors: not embedded yet; run `nice -n 19 .venv/bin/python bench/_real_vectors.py` "
            "once (resumable), or pass --real-partial to use the chunks finished so far"
        )
        return
    queries, base = vectors[:held_out], vectors[held_out:]
    flat = faiss.IndexFlatIP(DIM)
    flat.add(base)
    _, truth = flat.search(queries, k)
    flat_ms = Spread([float(np.percentile(latencies_ms(flat, queries[:100], k)[0], 50)) for _ in range(3)], " ms")
    print(
        f"real MiniLM vectors: {len(base):,} bundled texts + {len(queries):,} held-out queries"
        f"{' (PARTIAL: the chunks embedded so far, a uniform sample)' if partial and len(texts) < 70_000 else ''}; "
        f"exact flat p50 {flat_ms}"
    )
    labels = np.arange(len(base), dtype=np.int64)
    forced = IndexConfig(**{**config.__dict__, "approx_threshold": 1})  # IVF at any N
    for scale in (100_000, 1_000_000):
        start = time.perf_counter()
        index, _ = build_faiss(base, labels, forced, scale=scale)
        build = time.perf_counter() - start
        ms, found = latencies_ms(index, queries, k)
        print(
            f"  IVF as shipped at {scale:>9,}: nlist {index.nlist} "
            f"(would be {ivf_lists(scale, config.lists_per_sqrt_n)}), "
            f"nprobe {index.nprobe}, built in {build:.1f}s: recall@{k} {recall_at_k(found, truth):.3f}, "
            f"p50 {np.percentile(ms, 50):.2f} ms"
        )
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    hnsw.add(base)
    build = time.perf_counter() - start
    ms, found = latencies_ms(hnsw, queries, k)
    print(
        f"  HNSW32 (efSearch {hnsw.hnsw.efSearch}): build {build:.1f}s, recall@{k} {recall_at_k(found, truth):.3f}, "
        f"p50 {np.percentile(ms, 50):.2f} ms"
    )


def bm25_run(n: int, queries: int, k: int) -> None:
    import os
    import tempfile

    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-bm25-")
    sys.path.insert(0, str(REPO / "bench"))
    from bench_import import synthetic_jsonl
    from bench_kb_edit import hash_embed

    from kb.index import KBIndex
    from kb.jsonl import import_jsonl
    from kb.store import KBStore

    store = KBStore()
    import_jsonl(store, synthetic_jsonl(n), max_bytes=1 << 40, by="bench")
    index = KBIndex(store, config=IndexConfig(embedder="synthetic"), embed=hash_embed)
    texts = [
        f"A train goes {i % 300} km in {i % 7 + 1} hours, rate {i % 97}, item ({i * 7 % n})" for i in range(queries)
    ]

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    first = timed(lambda: index.search(texts[0], k=k, mode="bm25"))
    p50 = np.median([timed(lambda: index.search(t, k=k, mode="bm25")) for t in texts]) * 1000
    some = store.get("gsm8k-0000001-error_analysis")
    status = timed(
        lambda: (store.set_status([some.id], "rejected", by="bench"), index.search(texts[0], k=k, mode="bm25"))
    )
    edit = timed(
        lambda: (
            store.update(some.id, {"title": "an edited title"}, some.version + 1, by="bench"),
            index.search("edited", k=k, mode="bm25"),
        )
    )
    delete = timed(
        lambda: (
            store.delete("gsm8k-0000002-error_analysis", None, by="bench"),
            index.search(texts[0], k=k, mode="bm25"),
        )
    )
    print(
        f"BM25, {n:,} entries ({len(index._lexical.vocab):,} distinct words): first search "
        f"{first:.1f} s (load + tokenise + build), query p50 {p50:.1f} ms (accepted filter); "
        f"next search after a status change {status * 1000:.0f} ms (re-mask), after a text edit "
        f"{edit:.2f} s, after a delete {delete:.2f} s (each rebuilds bm25s)",
        flush=True,
    )
    sync = timed(lambda: index.sync())
    hybrid = np.median([timed(lambda: index.search(t, k=k, mode="hybrid")) for t in texts]) * 1000
    dense = np.median([timed(lambda: index.search(t, k=k, mode="dense")) for t in texts]) * 1000
    print(
        f"hybrid query p50 {hybrid:.1f} ms vs dense {dense:.1f} ms (hash embedder; MiniLM adds "
        f"~10 ms per query to both); dense first sync {sync:.0f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", default="0", help="comma list of lists scanned per query; 0 = the shipped rule")
    parser.add_argument(
        "--lists",
        default=str(IndexConfig().lists_per_sqrt_n),
        help="comma list of IVF lists per sqrt(N); the first is the shipped one",
    )
    parser.add_argument("--build", type=int, default=0, help="N: time the IVF build, ours vs faiss's own")
    parser.add_argument(
        "--real",
        action="store_true",
        help="recall on the real MiniLM vectors of the bundled texts (bench/_real_vectors.py)",
    )
    parser.add_argument("--real-partial", action="store_true", help="--real on the chunks embedded so far")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (ours, flat)")
    parser.add_argument("--bm25", type=int, default=0, help="KB size for the BM25/hybrid run; 0 skips")
    args = parser.parse_args()
    nprobes = [int(p) for p in args.nprobe.split(",")]
    configs = [IndexConfig(lists_per_sqrt_n=float(c)) for c in args.lists.split(",")]
    with Load() as load:
        scale_run([int(s) for s in args.sizes.split(",") if s], args.queries, args.k, configs, nprobes, args.rounds)
        if args.build:
            build_run(args.build, args.queries, args.k, configs[0], args.rounds)
        if args.real or args.real_partial:
            real_run(args.k, configs[0], partial=args.real_partial)
        if args.bm25:
            bm25_run(args.bm25, min(args.queries, 50), args.k)
    print(load)


if __name__ == "__main__":
    main()
