"""KBStore against a real SQLite file: CRUD, revisions/restore, conflicts (also across processes),
bulk status, queries, change feed, merge."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time

import pytest

from kb.schema import Entry, EntryInvalid, entry_from_json, validate_entry
from kb.store import ConflictError, DuplicateEntry, EntryNotFound, KBLocked, KBStore


def make(entry_id: str, **fields) -> Entry:
    base = dict(
        id=entry_id,
        task="gsm8k",
        learning_summary=f"summary of {entry_id}",
        supplementary_knowledge=f"knowledge of {entry_id}",
        status="pending",
    )
    return Entry(**{**base, **fields})


@pytest.fixture
def store() -> KBStore:
    return KBStore()


def test_store_lives_in_the_workspace(store, workspace):
    assert store.path == workspace / "kb.sqlite" and store.path.exists()


def test_add_get_update_delete(store):
    created = store.add(make("a", concepts=["area"]), by="ann")
    assert (created.version, created.updated_by) == (1, "ann") and created.created_at
    assert store.get("a") == created
    updated = store.update("a", {"title": "Circle area"}, expected_version=1, by="bob")
    assert updated.version == 2 and updated.updated_by == "bob"
    assert store.get("a").title == "Circle area"
    store.delete("a", expected_version=2, by="bob")
    with pytest.raises(EntryNotFound):
        store.get("a")
    assert store.query().total == 0


def test_add_existing_id_is_refused(store):
    store.add(make("a"), by="ann")
    with pytest.raises(DuplicateEntry, match="'a'"):
        store.add(make("a", title="other"), by="bob")
    assert store.get("a").title is None


def test_invalid_fields_are_named_and_nothing_changes(store):
    store.add(make("a"), by="ann")
    with pytest.raises(EntryInvalid) as err:
        store.update("a", {"status": "maybe", "learning_summary": "  "}, 1, by="bob")
    fields = {field for field, _ in err.value.problems}
    assert fields == {"status", "learning_summary"}
    assert "maybe" in str(err.value)
    assert store.get("a").version == 1 and len(store.history("a")) == 1
    with pytest.raises(ValueError, match="cannot change field"):
        store.update("a", {"version": 9}, 1, by="bob")


def test_entry_from_json_names_fields():
    with pytest.raises(EntryInvalid) as err:
        entry_from_json('{"id": "x", "task": "t", "status": "accepted", "source": {"kind": 1, "x": 2}}')
    fields = {f for f, _ in err.value.problems}
    assert {"learning_summary", "supplementary_knowledge", "source.kind", "source.x"} <= fields
    assert make("k").knowledge_text() == "Learning summary: summary of k\nSupplementary knowledge: knowledge of k"
    with pytest.raises(EntryInvalid, match="expected a JSON object"):
        entry_from_json("[1, 2]")
    with pytest.raises(EntryInvalid, match="field 'id'"):
        validate_entry({**make("k").model_dump(), "id": " padded"})


@pytest.mark.parametrize(
    "changes, field, message",
    [
        (
            {"id": "a\nb"},
            "id",
            "must be printable characters only, no control characters or line breaks (U+000A at position 2)",
        ),
        ({"id": "a\x00"}, "id", "U+0000 at position 2"),
        ({"id": "x" * 257}, "id", "must be at most 256 characters (this one has 257)"),
        ({"links": ["ok", "a\tb"]}, "links.1", "must be printable characters only"),
        ({"title": "\ud800"}, "title", "contains a lone surrogate U+D800 at position 1"),
        ({"source": {"question": "x\udc00"}}, "source.question", "contains a lone surrogate"),
        ({"created_at": "yesterday"}, "created_at", "must be an ISO 8601 time with a time zone"),
        ({"version": 2**53}, "version", "must be at most 9007199254740991"),
    ],
)
def test_schema_refuses_unsafe_ids_text_times_and_versions(changes, field, message):
    with pytest.raises(EntryInvalid) as err:
        validate_entry({**make("k").model_dump(), **changes})
    assert [f for f, _ in err.value.problems] == [field]
    assert message in str(err.value)


def test_schema_keeps_printable_unicode_ids_and_normalises_times():
    entry = validate_entry(
        {**make("écart-Ω 1/2 (v2)").model_dump(), "created_at": "2024-05-01 12:00:00.123456789-05:30"}
    )
    assert entry.id == "écart-Ω 1/2 (v2)" and entry.created_at == "2024-05-01T17:30:00.123456Z"
    assert validate_entry({**make("x" * 256).model_dump()}).id == "x" * 256


def hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another connection takes the write lock now and keeps it for `seconds` (in a thread)."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")

    def release():
        time.sleep(seconds)
        con.execute("ROLLBACK")
        con.close()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_a_locked_database_is_retried_then_refused_with_one_sentence(store):
    store.add(make("a"), by="ann")
    patient = KBStore(store.path, lock_timeout=1.5)
    release = hold_write_lock(store.path, 4)
    started = time.monotonic()
    with pytest.raises(KBLocked) as err:
        patient.add(make("b"), by="bob")
    assert 1.5 <= time.monotonic() - started < 4  # waited lock_timeout, not SQLite's 30 s
    assert str(err.value) == (
        f"the knowledge base {store.path} is locked by another process "
        "(waited 1.5 s); try again when that process has finished"
    )
    # readers do not wait for the writer, and opening an existing store writes nothing
    assert KBStore(store.path, lock_timeout=0).get("a").id == "a"
    assert patient.query().total == 1
    release.join()
    assert store.stats()["total"] == 1  # the refused add wrote nothing
    hold_write_lock(store.path, 0.5)  # shorter than lock_timeout: waited out, then written
    assert patient.add(make("b"), by="bob").version == 1


def test_lock_timeout_comes_from_the_environment(monkeypatch, workspace):
    monkeypatch.setenv("NESY_KB_LOCK_TIMEOUT", "2.5")
    assert KBStore().lock_timeout == 2.5
    monkeypatch.setenv("NESY_KB_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NESY_KB_LOCK_TIMEOUT must be a number of seconds"):
        KBStore()


def test_stale_version_is_a_conflict_not_an_overwrite(store):
    store.add(make("a"), by="ann")
    store.update("a", {"title": "Ann's title"}, expected_version=1, by="ann")
    with pytest.raises(ConflictError) as err:
        store.update("a", {"title": "Bob's title"}, expected_version=1, by="bob")
    assert err.value.current.title == "Ann's title" and err.value.current.version == 2
    assert "ann" in str(err.value)
    assert store.get("a").title == "Ann's title"
    with pytest.raises(ConflictError):
        store.delete("a", expected_version=1, by="bob")


def _race(path, barrier, results, who):
    store = KBStore(path)
    barrier.wait()
    try:
        store.update("a", {"title": f"by {who}"}, expected_version=1, by=who)
        results.put((who, "won"))
    except ConflictError:
        results.put((who, "conflict"))


def test_two_processes_racing_on_one_version_cannot_both_win(store):
    store.add(make("a"), by="ann")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_race, args=(store.path, barrier, results, f"p{i}")) for i in range(4)]
    for w in workers:
        w.start()
    outcomes = dict(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    winners = [who for who, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1 and list(outcomes.values()).count("conflict") == 3
    final = store.get("a")
    assert final.version == 2 and final.title == f"by {winners[0]}"
    assert [r.action for r in store.history("a")] == ["create", "update"]


def test_history_records_who_when_what_and_restore_brings_content_back(store):
    store.add(make("a", concepts=["area"]), by="ann")
    store.update(
        "a", {"learning_summary": "a better summary", "concepts": ["area", "circle"]}, expected_version=1, by="bob"
    )
    store.set_status(["a"], "accepted", by="cat")
    revisions = store.history("a")
    assert [(r.action, r.by, r.version) for r in revisions] == [
        ("create", "ann", 1),
        ("update", "bob", 2),
        ("status", "cat", 3),
    ]
    assert revisions[1].changes == {
        "learning_summary": ["summary of a", "a better summary"],
        "concepts": [["area"], ["area", "circle"]],
    }
    assert revisions[2].snapshot["status"] == "accepted" and revisions[0].at <= revisions[2].at

    restored = store.restore("a", revisions[0].revision_id, expected_version=3, by="dan")
    assert restored.learning_summary == "summary of a" and restored.concepts == ["area"]
    assert restored.status == "pending" and restored.version == 4
    last = store.history("a")[-1]
    assert last.action == "restore" and last.changes["revision"] == [None, revisions[0].revision_id]
    with pytest.raises(ConflictError):
        store.restore("a", revisions[1].revision_id, expected_version=3, by="dan")


def test_restore_undeletes(store):
    store.add(make("a"), by="ann")
    store.delete("a", expected_version=1, by="ann")
    delete_rev = store.history("a")[-1]
    assert delete_rev.action == "delete"
    store.restore("a", delete_rev.revision_id, expected_version=2, by="ann")
    assert store.get("a").version == 3


def test_bulk_status_is_one_transaction(store):
    for i in range(5):
        store.add(make(f"e{i}"), by="ann")
    assert store.set_status([f"e{i}" for i in range(3)], "accepted", by="bob") == 3
    assert store.query(status="accepted").total == 3
    with pytest.raises(EntryNotFound, match="missing"):
        store.set_status(["e3", "e4", "missing"], "rejected", by="bob")
    assert store.query(status="rejected").total == 0  # e3/e4 untouched
    with pytest.raises(ValueError, match="status must be one of"):
        store.set_status(["e3"], "done", by="bob")
    assert store.set_status(["e0", "e1"], "accepted", by="bob") == 0  # already accepted


def test_bulk_status_with_stale_version_refuses_the_whole_batch(store):
    for i in range(3):
        store.add(make(f"e{i}"), by="ann")
    store.update("e2", {"title": "edited meanwhile"}, 1, by="bob")  # e2 is now version 2
    shown = {"e0": 1, "e1": 1, "e2": 1}
    with pytest.raises(ConflictError) as err:
        store.set_status(["e0", "e1", "e2"], "accepted", by="cat", expected_versions=shown)
    assert err.value.entry_id == "e2" and err.value.current.version == 2
    assert store.query(status="accepted").total == 0  # e0 / e1 untouched too
    assert [r.action for r in store.history("e0")] == ["create"]
    assert store.set_status(["e0", "e1", "e2"], "accepted", by="cat", expected_versions={**shown, "e2": 2}) == 3
    assert store.set_status(["e0"], "rejected", by="cat", expected_versions={}) == 1  # unchecked


def test_query_filters_sort_paging_and_text(store):
    store.add(
        make(
            "c1",
            task="bbh",
            concepts=["Percentages"],
            status="accepted",
            learning_summary="Convert the percentage to a fraction first",
        ),
        by="a",
    )
    store.add(make("c2", task="gsm8k", concepts=["area"], status="accepted", title="Circle area"), by="a")
    store.add(
        make(
            "c3",
            task="gsm8k",
            concepts=["percentages", "area"],
            source={"kind": "error_analysis", "question": "What is 20% of the garden?"},
        ),
        by="a",
    )
    assert {e.id for e in store.query(status="accepted").entries} == {"c1", "c2"}
    assert {e.id for e in store.query(task="gsm8k").entries} == {"c2", "c3"}
    assert {e.id for e in store.query(concept="percentages").entries} == {"c1", "c3"}
    assert {e.id for e in store.query(text="fract").entries} == {"c1"}  # prefix match
    assert {e.id for e in store.query(text="percent").entries} == {"c1", "c3"}  # + concepts
    assert {e.id for e in store.query(text="garden").entries} == {"c3"}  # source question
    assert {e.id for e in store.query(source_kind="error_analysis").entries} == {"c3"}
    assert store.query(text="circle area", status="accepted").total == 1
    page = store.query(sort="id", descending=False, offset=1, limit=1)
    assert [e.id for e in page.entries] == ["c2"] and page.total == 3
    assert [e.id for e in store.query(sort="id").entries] == ["c3", "c2", "c1"]
    assert store.query(text='"; DROP TABLE entries; --').total == 0  # user text is data
    with pytest.raises(ValueError, match="cannot sort by"):
        store.query(sort="data; --")
    facets = store.facets()  # concepts are case-insensitive: one facet per concept
    assert sorted(c.lower() for c in facets["concepts"]) == ["area", "percentages"]
    assert facets["tasks"] == ["bbh", "gsm8k"] and facets["source_kinds"] == ["error_analysis"]
    stats = store.stats()
    assert stats["total"] == 3 and stats["by_status"]["accepted"] == 2
    assert stats["by_task"] == {"bbh": 1, "gsm8k": 2}


def test_changes_since_reports_changed_and_deleted_ids(store):
    store.add(make("a"), by="x")
    store.add(make("b"), by="x")
    seq, changed, deleted = store.changes_since(0)
    assert set(changed) == {"a", "b"} and deleted == []
    store.update("a", {"title": "t"}, 1, by="x")
    store.delete("b", None, by="x")
    seq2, changed, deleted = store.changes_since(seq)
    assert seq2 > seq and changed == ["a"] and deleted == ["b"]
    assert store.changes_since(seq2) == (seq2, [], [])


def test_merge_keeps_both_histories(store):
    store.add(make("keep", concepts=["area"], links=["x"]), by="ann")
    store.add(make("drop", concepts=["circle", "area"], links=["keep", "y"]), by="bob")
    store.update("drop", {"title": "dropped title"}, 1, by="bob")
    merged = store.merge("keep", "drop", by="cat")
    assert merged.concepts == ["area", "circle"] and merged.links == ["x", "y"]
    with pytest.raises(EntryNotFound):
        store.get("drop")
    history = store.history("keep")
    assert {r.entry_id for r in history} == {"keep", "drop"}
    assert any(r.action == "merge" and r.changes.get("merged_from") == [None, "drop"] for r in history)
    drop_title = next(r for r in history if r.entry_id == "drop" and r.action == "update")
    restored = store.restore("keep", drop_title.revision_id, merged.version, by="cat")
    assert restored.title == "dropped title"  # the dropped entry's revisions stay usable
    with pytest.raises(ValueError, match="itself"):
        store.merge("keep", "keep", by="cat")


def test_merge_repoints_links_of_other_entries(store):
    store.add(make("kept"), by="ann")
    store.add(make("dröp"), by="ann")
    store.add(make("x", links=["dröp", "y"]), by="ann")
    store.add(make("both", links=["kept", "dröp"]), by="ann")
    store.add(make("mentions", concepts=["dröp"]), by="ann")
    store.merge("kept", "dröp", by="cat")
    assert store.get("x").links == ["kept", "y"]
    assert store.get("both").links == ["kept"]  # no duplicate link
    last = store.history("x")[-1]
    assert (last.action, last.by) == ("update", "cat")
    assert last.changes["links"] == [["dröp", "y"], ["kept", "y"]]
    assert last.changes["relinked"] == ["dröp", "kept"]
    assert store.get("mentions").version == 1  # a concept named like the id is not a link


def test_upsert_creates_then_updates_without_duplicating(store):
    store.upsert(make("g", learning_summary="v1"), by="teacher")
    store.upsert(make("g", learning_summary="v1"), by="teacher")  # identical: no new revision
    store.upsert(make("g", learning_summary="v2"), by="teacher")
    assert store.get("g").learning_summary == "v2"
    assert [r.action for r in store.history("g")] == ["create", "update"]


def test_upsert_never_reverts_human_curation(store):
    for entry_id in ("edited", "accepted", "deleted", "untouched"):
        store.upsert(make(entry_id, learning_summary="generated v1"), by="teacher:m")
    store.update("edited", {"learning_summary": "fixed by a person"}, 1, by="ann")
    store.set_status(["accepted"], "accepted", by="ann")
    store.delete("deleted", None, by="ann")

    rerun = {
        i: store.upsert(make(i, learning_summary="generated v2"), by="teacher:m")
        for i in ("edited", "accepted", "deleted", "untouched")
    }
    assert store.get("edited").learning_summary == "fixed by a person"
    assert rerun["edited"] == store.get("edited")  # the stored entry comes back as it is
    accepted = store.get("accepted")
    assert (accepted.learning_summary, accepted.status) == ("generated v1", "accepted")
    with pytest.raises(EntryNotFound):
        store.get("deleted")  # a person's delete stands
    assert store.get("untouched").learning_summary == "generated v2"  # still refreshed
    assert [r.action for r in store.history("edited")] == ["create", "update"]


def test_query_stays_fast_at_scale(store):
    n = 20_000
    entries = [
        make(
            f"e{i:05d}",
            task=f"task{i % 20}",
            status=("accepted", "pending")[i % 2],
            concepts=[f"c{i % 50}"],
            learning_summary=f"rule number {i} about topic{i % 97}",
        )
        for i in range(n)
    ]
    store.import_entries(entries, by="bench")
    start = time.perf_counter()
    for _ in range(10):
        page = store.query(status="accepted", task="task4", sort="updated_at", limit=50)
        store.query(concept="c7", limit=50)
        store.query(text="topic13", limit=50)
    per_query = (time.perf_counter() - start) / 30
    assert page.total == sum(e.task == "task4" and e.status == "accepted" for e in entries)
    assert per_query < 0.05, f"{per_query * 1000:.1f} ms per query at {n} entries"
