"""KBIndex with the real embedded MiniLM: incremental sync embeds only what changed, persistence,
search quality on a small real set, filters, similar / near-duplicates, exact -> IVF switch."""

from __future__ import annotations

import pytest

from kb.index import IndexConfig, KBIndex, indexed_text
from kb.schema import Entry
from kb.store import EntryNotFound, KBStore

TOPICS = {  # id -> (knowledge, a question it should answer, worded differently)
    "speed": (
        "Average speed is the total distance travelled divided by the total time taken.",
        "A car travels 150 km in 3 hours. How fast was it going?",
    ),
    "circle-area": (
        "The area of a circle equals pi times the radius squared.",
        "How much floor does a round rug with a radius of 2 m cover?",
    ),
    "percent": (
        "To take p percent of a quantity, multiply the quantity by p and divide by 100.",
        "What is 15% of 80 dollars?",
    ),
    "fractions": (
        "To add fractions, rewrite them over a common denominator, then add numerators.",
        "What is 1/4 + 1/6?",
    ),
    "pythagoras": (
        "In a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides.",
        "A 5 m ladder leans on a wall with its foot 3 m from the wall. How high does it reach?",
    ),
    "interest": (
        "Simple interest is principal times yearly rate times the number of years.",
        "A bank pays 5% a year on a $200 deposit. How much interest after 3 years?",
    ),
    "photosynthesis": (
        "Plants use sunlight, water and carbon dioxide to make glucose and oxygen in photosynthesis.",
        "Why do the leaves of a plant need light?",
    ),
    "boiling": (
        "At sea level pure water boils at 100 degrees Celsius.",
        "At what temperature does water turn into steam?",
    ),
    "primes": ("A prime number has exactly two divisors: 1 and itself.", "Is 91 a prime number?"),
    "gravity": (
        "Near the Earth's surface a falling object accelerates at about 9.8 m/s^2.",
        "A stone is dropped from a bridge. How fast is it falling after 2 seconds?",
    ),
}


def topic_entry(entry_id: str, status: str = "accepted", task: str = "science") -> Entry:
    text, _ = TOPICS[entry_id]
    return Entry(
        id=entry_id,
        task=task,
        title=entry_id.replace("-", " "),
        learning_summary=text,
        supplementary_knowledge=text,
        status=status,
    )


def filler(i: int) -> Entry:
    return Entry(
        id=f"f{i:02d}",
        task="filler",
        learning_summary=f"Fact number {i} about item {i}.",
        supplementary_knowledge=f"Item {i} is filed under shelf {i % 7}.",
        status="pending",
    )


@pytest.fixture
def store() -> KBStore:
    return KBStore()


def test_sync_embeds_only_what_changed(store):
    for i in range(50):
        store.add(filler(i), by="t")
    index = KBIndex(store)
    assert index.sync().embedded == 50
    assert index.sync().embedded == 0  # nothing changed

    store.update("f07", {"learning_summary": "Edited fact about comets."}, 1, by="t")
    report = index.sync()
    assert (report.embedded, report.removed, report.total) == (1, 0, 50)

    store.set_status(["f01", "f02"], "accepted", by="t")  # status does not change the text
    assert index.sync().embedded == 0
    store.delete("f03", None, by="t")
    store.add(filler(60), by="t")
    report = index.sync()
    assert (report.embedded, report.removed, report.total) == (1, 1, 50)
    assert index.embedded_total == 52

    hits = index.search("comets", k=1, statuses=None)  # the edit is searchable right away
    assert hits[0].entry.id == "f07"


def test_pending_count_reports_the_backlog_without_embedding(store):
    for i in range(30):
        store.add(filler(i), by="t")
    index = KBIndex(store)
    assert index.pending_count() == 30 and index.embedded_total == 0
    index.sync()
    assert index.pending_count() == 0
    store.update("f07", {"learning_summary": "Edited."}, 1, by="t")
    store.delete("f08", None, by="t")
    assert index.pending_count() == 2
    assert KBIndex(store, config=IndexConfig(embedder="other-model")).pending_count() == 29


class Stop(Exception):
    """What a progress callback raises when the user asks to stop (e.g. StopRequested)."""


def test_stopped_sync_keeps_embedded_batches_and_the_next_sync_resumes(store):
    for i in range(20):
        store.add(filler(i), by="t")
    config = IndexConfig(stage_every=8)
    calls = []

    def stop_after_first_batch(done, total):
        calls.append((done, total))
        if done >= 8:
            raise Stop

    with pytest.raises(Stop):
        KBIndex(store, config=config).sync(progress=stop_after_first_batch)
    assert calls == [(0, 20), (8, 20)]
    store.update("f00", {"learning_summary": "Changed while stopped."}, 1, by="t")

    resumed, calls = KBIndex(store, config=config), []
    report = resumed.sync(progress=lambda done, total: calls.append((done, total)))
    assert (report.embedded, report.resumed, report.total) == (20, 7, 20)
    assert resumed.embedded_total == 13  # f00's staged vector is stale: embedded again
    assert calls == [(0, 13), (8, 13), (13, 13)]
    assert resumed.search("Changed while stopped.", k=1, statuses=None)[0].entry.id == "f00"
    assert resumed.search(filler(3).learning_summary, k=1, statuses=None)[0].entry.id == "f03"


def test_index_persists_and_reloads_without_re_embedding(store, workspace):
    for entry_id in ("speed", "boiling", "primes"):
        store.add(topic_entry(entry_id), by="t")
    KBIndex(store).sync()
    assert (workspace / "index" / "vectors.sqlite").exists()
    store.update("boiling", {"title": "water boiling point"}, 1, by="t")

    reopened = KBIndex(store)
    report = reopened.sync()
    assert report.embedded == 1 and report.total == 3  # only the edit since the last sync
    assert reopened.search(TOPICS["primes"][1], k=1)[0].entry.id == "primes"
    assert reopened.rebuild().embedded == 3


def test_search_quality_on_a_small_real_set(store):
    for entry_id in TOPICS:
        store.add(topic_entry(entry_id), by="t")
    for i in range(20):
        store.add(filler(i), by="t")
    index = KBIndex(store)
    top1 = {
        entry_id: index.search(question, k=3, statuses=None)[0].entry.id for entry_id, (_, question) in TOPICS.items()
    }
    correct = sum(found == expected for expected, found in top1.items())
    assert correct >= 9, f"top-1 hits {correct}/10: {top1}"
    hits = index.search(TOPICS["speed"][1], k=3, statuses=None)
    assert hits[0].score > hits[1].score and 0 < hits[0].score <= 1.0001


def test_search_filters_by_status_and_task(store):
    store.add(topic_entry("speed", status="rejected"), by="t")
    store.add(topic_entry("boiling", task="physics"), by="t")
    store.add(topic_entry("primes", task="math"), by="t")
    index = KBIndex(store)
    question = TOPICS["speed"][1]
    assert "speed" not in [h.entry.id for h in index.search(question, k=3)]  # accepted only
    assert index.search(question, k=1, statuses=None)[0].entry.id == "speed"
    assert [h.entry.id for h in index.search(question, k=3, task="math")] == ["primes"]


def test_similar_and_near_duplicates_find_the_paraphrase(store):
    for entry_id in ("speed", "boiling", "primes", "interest"):
        store.add(topic_entry(entry_id), by="t")
    store.add(
        Entry(
            id="speed-2",
            task="science",
            title="speed",
            learning_summary="Speed on average is the whole distance covered divided by the whole time it took.",
            supplementary_knowledge="Average speed = total distance / total time.",
            status="pending",
        ),
        by="t",
    )
    index = KBIndex(store)
    assert index.similar("speed", k=1)[0].entry.id == "speed-2"
    pairs = index.near_duplicates(threshold=0.8)
    assert [(a, b) for a, b, _ in pairs] in ([("speed", "speed-2")], [("speed-2", "speed")])
    assert index.near_duplicates(threshold=0.8, statuses=["accepted"]) == []
    with pytest.raises(EntryNotFound):
        index.similar("nope")


def test_large_index_switches_to_ivf_and_stays_correct(store):
    for i in range(40):
        store.add(filler(i), by="t")
    for entry_id in TOPICS:
        store.add(topic_entry(entry_id), by="t")
    index = KBIndex(store, config=IndexConfig(approx_threshold=45, nprobe=8))
    assert index.sync().kind == "ivf"
    assert index.search(TOPICS["gravity"][1], k=1)[0].entry.id == "gravity"
    store.update("gravity", {"title": "falling bodies"}, 1, by="t")  # incremental on IVF
    assert index.sync().embedded == 1
    assert index.search(TOPICS["gravity"][1], k=1)[0].entry.id == "gravity"
    store.set_status([f"f{i:02d}" for i in range(40)], "rejected", by="t")
    for i in range(30):
        store.delete(f"f{i:02d}", None, by="t")
    report = index.sync()
    assert (report.kind, report.total) == ("flat", 20)  # back to exact below threshold / 2


def test_indexed_text_mirrors_the_question():
    entry = Entry.model_validate({**topic_entry("speed").model_dump(), "source": {"question": "How fast?"}})
    text = indexed_text(entry)
    assert text.startswith("How fast?\nspeed\nLearning summary: Average speed")


# ---------------------------------------------------------------- retrieval modes (issue 9)

RARE = Entry(
    id="rare-note",
    task="science",
    title="photosynthesis",
    learning_summary="Plants turn light, water and carbon dioxide into sugar and oxygen; see note xq9417.",
    supplementary_knowledge="Chlorophyll absorbs red and blue light and reflects green light.",
    status="accepted",
)
RARE_QUERY = "What does note xq9417 say?"


def modes_store(store: KBStore) -> KBStore:
    for entry_id in TOPICS:
        store.add(topic_entry(entry_id), by="t")
    for i in range(20):
        store.add(filler(i).model_copy(update={"status": "accepted"}), by="t")
    store.add(RARE, by="t")
    return store


def test_bm25_finds_an_exact_rare_term_that_dense_misses(store):
    index = KBIndex(modes_store(store))
    dense = [h.entry.id for h in index.search(RARE_QUERY, k=10)]
    assert "rare-note" not in dense  # MiniLM: the code is noise next to the entry's topic
    bm25 = index.search(RARE_QUERY, k=3, mode="bm25")
    assert bm25[0].entry.id == "rare-note" and bm25[0].score == bm25[0].bm25 > 0
    assert index.search("xq9417", k=3, mode="bm25")[0].entry.id == "rare-note"
    assert index.search("zzz unheard of", k=3, mode="bm25") == []  # no shared word: no hit
    assert index.search(RARE_QUERY, k=3, mode="hybrid")[0].entry.id == "rare-note"


def test_hybrid_is_reciprocal_rank_fusion_of_dense_and_bm25(store):
    index = KBIndex(modes_store(store))
    query = "A car travels 150 km in 3 hours, see note xq9417. How fast was it going?"
    everything = store.stats()["total"]
    dense = index.search(query, k=everything, mode="dense")
    bm25 = index.search(query, k=everything, mode="bm25")
    assert len(dense) == everything and 3 < len(bm25) < everything
    fused, best = {}, {}
    for hits in (dense, bm25):
        for rank, hit in enumerate(hits, start=1):
            fused[hit.entry.id] = fused.get(hit.entry.id, 0.0) + 1 / (60 + rank)
            best[hit.entry.id] = min(best.get(hit.entry.id, rank), rank)
    expected = sorted(fused, key=lambda i: (-fused[i], best[i], i))[:8]
    hybrid = index.search(query, k=8, mode="hybrid")
    assert [h.entry.id for h in hybrid] == expected
    assert [h.score for h in hybrid] == pytest.approx([fused[i] for i in expected])
    # neither single list is the fused order, and each hit carries both sides' scores
    assert expected != [h.entry.id for h in dense[:8]] and expected != [h.entry.id for h in bm25[:8]]
    cosine = {h.entry.id: h.score for h in dense}
    lexical = {h.entry.id: h.score for h in bm25}
    for hit in hybrid:
        assert hit.dense == pytest.approx(cosine[hit.entry.id], abs=1e-5)
        assert hit.bm25 == (pytest.approx(lexical[hit.entry.id]) if hit.entry.id in lexical else None)


def _kind_entry(entry_id: str, kind: str | None, text: str) -> Entry:
    source = {"kind": kind, "dataset": "gsm8k"} if kind else None
    return Entry.model_validate(
        {
            "id": entry_id,
            "task": "gsm8k",
            "learning_summary": text,
            "supplementary_knowledge": text,
            "status": "accepted",
            "source": source,
        }
    )


def test_search_is_limited_to_source_kinds_in_every_mode(store):
    store.add(_kind_entry("err", "error_analysis", "Average speed is distance divided by time."), by="t")
    store.add(
        _kind_entry(
            "ex", "example_knowledge", "Average speed is the total distance travelled divided by the total time."
        ),
        by="t",
    )
    store.add(_kind_entry("hand", None, "Speed: distance over time, on average."), by="t")
    index = KBIndex(store)
    question = "What is the average speed over a distance of 150 km in 3 hours?"
    for mode in ("dense", "bm25", "hybrid"):
        assert {h.entry.id for h in index.search(question, k=3, mode=mode)} == {"err", "ex", "hand"}
        assert [h.entry.id for h in index.search(question, k=3, mode=mode, source_kinds=["error_analysis"])] == ["err"]
        assert [h.entry.id for h in index.search(question, k=3, mode=mode, source_kinds="example_knowledge")] == ["ex"]
        both = index.search(question, k=3, mode=mode, source_kinds=("error_analysis", "example_knowledge"))
        assert {h.entry.id for h in both} == {"err", "ex"}
        assert index.search(question, k=3, mode=mode, source_kinds=["nope"]) == []


def test_min_score_returns_nothing_when_nothing_passes(store):
    index = KBIndex(modes_store(store))
    question = TOPICS["speed"][1]
    top = index.search(question, k=3)
    middle = (top[0].score + top[1].score) / 2  # a cosine only the best hit reaches
    assert top[0].entry.id == "speed" and top[1].score < middle < top[0].score
    assert [h.entry.id for h in index.search(question, k=3, min_score=middle)] == ["speed"]
    assert index.search(question, k=3, min_score=0.99) == []
    assert [h.entry.id for h in index.search(question, k=3, mode="hybrid", min_score=middle)] == ["speed"]
    assert index.search(question, k=3, mode="hybrid", min_score=0.99) == []
    bm25 = index.search(RARE_QUERY, k=3, mode="bm25")
    assert [h.entry.id for h in index.search(RARE_QUERY, k=3, mode="bm25", min_score=bm25[0].score)] == ["rare-note"]
    assert index.search(RARE_QUERY, k=3, mode="bm25", min_score=bm25[0].score + 1) == []


def test_bm25_follows_edits_deletes_and_status_changes(store):
    index = KBIndex(modes_store(store))
    assert index.search("heliotrope", k=3, mode="bm25") == []
    store.update("boiling", {"supplementary_knowledge": "Heliotrope water boils sooner."}, 1, by="t")
    assert [h.entry.id for h in index.search("heliotrope", k=3, mode="bm25")] == ["boiling"]
    assert index.search("at sea level pure water", k=3, mode="bm25")[0].entry.id == "boiling"
    store.update("boiling", {"learning_summary": "Nothing about seas."}, 2, by="t")
    assert "boiling" not in [h.entry.id for h in index.search("sea level", k=3, mode="bm25")]

    rebuilds = index._lexical.rebuilds
    store.set_status(["rare-note"], "rejected", by="t")  # status: a new mask, no rebuild
    assert index.search(RARE_QUERY, k=3, mode="bm25") == []
    assert index.search(RARE_QUERY, k=3, mode="bm25", statuses=None)[0].entry.id == "rare-note"
    assert index._lexical.rebuilds == rebuilds

    store.delete("rare-note", None, by="t")
    store.add(
        Entry(
            id="new",
            task="science",
            learning_summary="A heliotrope turns to the sun.",
            supplementary_knowledge="-",
            status="accepted",
        ),
        by="t",
    )
    assert index.search(RARE_QUERY, k=3, mode="bm25", statuses=None) == []
    assert {h.entry.id for h in index.search("heliotrope", k=3, mode="hybrid")} >= {"boiling", "new"}
    assert [h.entry.id for h in index.search("heliotrope", k=1, mode="bm25")] in (["new"], ["boiling"])
    # a second index object (another process) builds its own BM25 from the store
    assert {h.entry.id for h in KBIndex(store).search("heliotrope", k=3, mode="bm25")} == {"boiling", "new"}


def test_search_defaults_to_three_hits_and_refuses_a_bad_request(store):
    from kb.errors import NesyError

    index = KBIndex(modes_store(store))
    assert len(index.search(TOPICS["speed"][1])) == 3
    with pytest.raises(NesyError, match="mode"):
        index.search("x", mode="sparse")
    with pytest.raises(NesyError, match="k must"):
        index.search("x", k=0)


def test_vectorised_bm25_gives_bm25s_own_scores():
    import bm25s

    from kb.index import _bm25_class, lexical_tokens

    texts = [indexed_text(topic_entry(i)) for i in TOPICS] + [indexed_text(filler(i)) for i in range(30)]
    texts += ["speed speed speed of the car", "item item 3 3 3 shelf", "x"]
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in lexical_tokens(text)] for text in texts]
    ours, theirs = _bm25_class()(), bm25s.BM25()
    ours.index((ids, dict(vocab)), show_progress=False)
    theirs.index((ids, dict(vocab)), show_progress=False)
    for query in ("average speed of a car", "item 3 shelf", "water boils", "x", "prime divisors"):
        q = [vocab[t] for t in lexical_tokens(query) if t in vocab]
        expected = theirs.get_scores(q)
        assert expected.max() > 0
        assert ours.get_scores(q) == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- IVF build (issue 13)


def test_ivf_build_puts_every_vector_in_its_nearest_list_and_keeps_recall():
    """build_faiss trains the lists with torch k-means and adds with precomputed lists: each vector
    must be found by itself, and recall@10 against exact search must stay high."""
    import faiss
    import numpy as np

    from kb.index import build_faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, 384)).astype(np.float32)
    x = centres[rng.integers(0, 64, 4000)] + 0.6 * rng.standard_normal((4000, 384)).astype(np.float32) / 20
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(10_000, 14_000, dtype=np.int64)
    index, kind = build_faiss(x, labels, IndexConfig(approx_threshold=1000))
    assert kind == "ivf" and index.ntotal == 4000 and index.nlist == 252
    _, found = index.search(x[:200], 1)
    assert (found[:, 0] == labels[:200]).mean() >= 0.99  # a vector sits in the list it is nearest to
    _, truth = faiss.knn(x[:200], x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, approx = index.search(x[:200], 10)
    recall = np.mean([len(set(a) & set(labels[t])) / 10 for a, t in zip(approx, truth)])
    assert recall >= 0.9
