"""JSONL interchange: byte-identical round trip, and every bad file refused whole with a message
that names the line and field, leaving the store unchanged."""

from __future__ import annotations

import json

import pytest

from kb.jsonl import ImportRejected, dumps_entry, export_jsonl, import_jsonl, validate_jsonl
from kb.schema import Entry
from kb.store import KBStore


def line(entry_id: str, **fields) -> str:
    base = {
        "id": entry_id,
        "task": "gsm8k",
        "learning_summary": f"summary {entry_id}",
        "supplementary_knowledge": f"knowledge {entry_id}",
        "status": "pending",
    }
    return json.dumps({**base, **fields}, ensure_ascii=False)


def write(tmp_path, text: str | bytes, name: str = "kb.jsonl"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def store() -> KBStore:
    return KBStore()


def seeded(store: KBStore) -> KBStore:
    store.add(
        Entry.model_validate(
            json.loads(
                line(
                    "ünï-1",
                    title="Ωmega ≥ 2 “quoted”",
                    concepts=["área", "fraction"],
                    source={"kind": "error_analysis", "question": "What's 1/2 + 1/3?\nTab\there"},
                    links=["b"],
                )
            )
        ),
        by="ann",
    )
    store.add(Entry.model_validate(json.loads(line("b", status="accepted"))), by="bob")
    store.update("b", {"title": "edited"}, 1, by="cat")
    return store


def test_export_import_export_is_byte_identical(store, tmp_path, workspace, monkeypatch):
    first = tmp_path / "first.jsonl"
    assert export_jsonl(seeded(store), first) == 2
    data = first.read_bytes()
    assert data.endswith(b"\n") and b" \n" not in data and "Ωmega".encode() in data

    monkeypatch.setenv("NESY_HOME", str(tmp_path / "other"))
    other = KBStore()
    report = import_jsonl(other, first, by="importer")
    assert report.added == 2
    second = tmp_path / "second.jsonl"
    export_jsonl(other, second)
    assert second.read_bytes() == data
    assert other.get("b").version == 2 and other.get("b").updated_by == "cat"


def test_export_filters_by_status(store, tmp_path):
    out = tmp_path / "accepted.jsonl"
    assert export_jsonl(seeded(store), out, status="accepted") == 1
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["b"]


def test_dumps_entry_is_canonical():
    entry = Entry.model_validate(json.loads(line("x", concepts=["z", "a"])))
    text = dumps_entry(entry)
    assert list(json.loads(text)) == [
        "id",
        "task",
        "learning_summary",
        "supplementary_knowledge",
        "status",
        "concepts",
        "links",
        "version",
    ]
    assert dumps_entry(Entry.model_validate_json(text)) == text


def assert_rejected(store, source, expected: str, **kwargs):
    before = store.stats()
    with pytest.raises(ImportRejected) as err:
        import_jsonl(store, source, **kwargs)
    assert expected in str(err.value), str(err.value)
    assert store.stats() == before  # nothing changed
    return err.value.report


def test_bad_field_names_line_and_field_and_imports_nothing(store, tmp_path):
    path = write(
        tmp_path, "\n".join([line("a"), line("b"), line("c", status="done"), line("d", concepts="not a list")]) + "\n"
    )
    report = assert_rejected(store, path, f"{path} line 3, field 'status'")
    assert [(p.line, p.field) for p in report.problems] == [(3, "status"), (4, "concepts")]
    assert store.query().total == 0  # lines 1-2 were fine but nothing is written


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "file is empty"),
        (b"\n  \n", "file is empty"),
        (line("a").encode() + b"\n" + line("b").encode()[:-5], "line 2: truncated"),
        (line("a").encode() + b"\n[1, 2]\n", "line 2: expected a JSON object, got an array"),
        (line("a").encode() + b"\n{not json}\n", "line 2: not valid JSON"),
        (
            line("a").encode() + b"\n" + line("caf\xe9").encode("latin-1") + b"\n",
            "line 2: not valid UTF-8 at byte offset",
        ),
        (
            (line("a") + "\n" + line("a", title="again") + "\n").encode(),
            "line 2, field 'id': duplicate id 'a' (first on line 1)",
        ),
        (line("a", extra=1).encode() + b"\n", "line 1, field 'extra': is not a known field"),
        (line("a", source={"kind": "x", "oops": 1}).encode() + b"\n", "field 'source.oops'"),
    ],
)
def test_each_bad_file_gets_a_clear_message(store, tmp_path, content, expected):
    seeded(store)
    assert_rejected(store, write(tmp_path, content), expected)


ENTRY = (
    '{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    '"status": "pending"'
)  # without its closing brace: add fields, then "}"


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: nested too deeply"),
        (ENTRY + ', "title": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1, field 'title': nested too deeply"),
        (
            ENTRY + ', "version": 12345678901234567890123}\n',
            "line 1, field 'version': must be at most 9007199254740991 (got 12345678901234567890123)",
        ),
        (
            ENTRY + ', "version": ' + "9" * 5000 + "}\n",
            "line 1, field 'version': Input should be a valid integer (got a number with 5000 digits)",
        ),
        (ENTRY + ', "version": true}\n', "line 1, field 'version': Input should be a valid integer"),
        (ENTRY + ', "title": "\\ud800"}\n', "line 1, field 'title': contains a lone surrogate U+D800"),
        (
            ENTRY + ', "concepts": ["ok", "x\\udfff"]}\n',
            "line 1, field 'concepts.1': contains a lone surrogate U+DFFF at position 2",
        ),
        (ENTRY + ', "\\ud800": 1}\n', "line 1, field '\\ud800': field name contains a lone surrogate"),
        (ENTRY + ', "status": "accepted"}\n', "line 1, field 'status': is given 2 times in one object"),
        (ENTRY + ', "source": {"kind": "a", "kind": "b"}}\n', "line 1, field 'source.kind': is given 2"),
        (
            line("a\nb\taccepted") + "\n",
            "line 1, field 'id': must be printable characters only, no "
            "control characters or line breaks (U+000A at position 2)",
        ),
        (line("a\x00") + "\n", "line 1, field 'id': must be printable characters only"),
        (line("x" * 2_000_000) + "\n", "line 1, field 'id': must be at most 256 characters (this one has 2,000,000)"),
        (line("a", links=["ok", "b\nc"]) + "\n", "line 1, field 'links.1': must be printable"),
        (
            line("a", created_at="garbage") + "\n",
            "line 1, field 'created_at': must be an ISO 8601 time with a time zone",
        ),
        (line("a", updated_at="2024-05-01T12:00:00") + "\n", "field 'updated_at': must be an ISO 8601"),
        (line("a", updated_at="1700000000") + "\n", "field 'updated_at': must be an ISO 8601"),
        (line("a", updated_at="2024-13-01T12:00:00Z") + "\n", "field 'updated_at': must be an ISO"),
        (line("a") + "\n" + "[" * 100_000, "line 2: nested too deeply"),  # not called "truncated"
    ],
)
def test_hostile_lines_are_refused_naming_line_and_field(store, tmp_path, content, expected):
    seeded(store)
    report = assert_rejected(store, write(tmp_path, content), expected)
    assert len(report.first_error().splitlines()) == 1


def test_cr_only_line_endings_are_line_ends(store, tmp_path):
    path = write(tmp_path, line("a") + "\r" + line("b") + "\r\n" + line("c") + "\r")
    assert import_jsonl(store, path).added == 3
    bad = write(tmp_path, (line("a") + "\r" + line("b") + "\r").encode() + b"\xff\r")
    assert_rejected(store, bad, "line 3: not valid UTF-8")
    # JSON strings may hold U+2028 and U+0085 raw; they end no line
    odd = write(tmp_path, line("odd", title="a\u2028b\x85c") + "\n")
    assert import_jsonl(store, odd).added == 1 and store.get("odd").title == "a\u2028b\x85c"


def test_timestamps_are_stored_as_fixed_width_utc(store, tmp_path):
    path = write(
        tmp_path, line("a", created_at="2024-05-01T12:00:00+02:00", updated_at="2024-05-01T12:00:00.5Z") + "\n"
    )
    import_jsonl(store, path)
    entry = store.get("a")
    assert (entry.created_at, entry.updated_at) == ("2024-05-01T10:00:00.000000Z", "2024-05-01T12:00:00.500000Z")


def test_links_to_missing_ids_are_imported_and_reported(store, tmp_path):
    seeded(store)
    path = write(tmp_path, line("c", links=["b", "d", "gone"]) + "\n" + line("d") + "\n")
    report = import_jsonl(store, path)
    assert report.added == 2 and store.get("c").links == ["b", "d", "gone"]
    assert [(w.line, w.field) for w in report.warnings] == [(1, "links.2")]
    assert report.first_warning() == (
        f"{path} line 1, field 'links.2': links to 'gone', which is neither in this file nor in the knowledge base"
    )


def test_utf8_error_gives_byte_offset(store, tmp_path):
    good = (line("a") + "\n").encode()
    report = assert_rejected(store, write(tmp_path, good + b"\xff\n"), "not valid UTF-8")
    assert f"byte offset {len(good)}" in report.first_error()


def test_oversized_file_is_refused_before_reading(store, tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:  # sparse: 51 MB on disk costs nothing
        f.truncate(51 * 1024 * 1024)
    report = assert_rejected(store, path, "53.5 MB, over the import limit of 52.4 MB")
    assert report.lines == 0
    small = write(tmp_path, line("a") + "\n")
    assert_rejected(store, small, "over the import limit of 0.0 MB", max_bytes=10)


def test_duplicates_against_the_store_follow_the_policy(store, tmp_path):
    seeded(store)
    path = write(tmp_path, line("b", title="from file") + "\n" + line("new") + "\n")
    report = assert_rejected(store, path, "line 1, field 'id': id 'b' already exists")
    assert report.duplicates == [(1, "b", "store")]

    skipped = import_jsonl(store, path, on_duplicate="skip")
    assert (skipped.added, skipped.skipped) == (1, 1)
    assert store.get("b").title == "edited"

    overwritten = import_jsonl(store, path, on_duplicate="overwrite", by="dan")
    assert overwritten.overwritten == 1 and overwritten.unchanged == 1  # "new" is identical
    b = store.get("b")
    assert b.title == "from file" and b.version == 3  # version moves forward, never back
    assert store.history("b")[-1].action == "import" and store.history("b")[-1].by == "dan"


def test_duplicates_within_a_file_skip_keeps_first_overwrite_keeps_last(store, tmp_path):
    path = write(tmp_path, line("a", title="first") + "\n" + line("a", title="last") + "\n")
    assert import_jsonl(store, path, on_duplicate="skip").skipped == 1
    assert store.get("a").title == "first"
    store.delete("a", None, by="x")
    import_jsonl(store, path, on_duplicate="overwrite")
    assert store.get("a").title == "last"


def test_validate_reports_without_touching_anything(store, tmp_path):
    report = validate_jsonl(write(tmp_path, line("a") + "\n\n" + line("b") + "\r\n"))
    assert report.ok and [e.id for e in report.entries] == ["a", "b"]
    assert store.query().total == 0
    with pytest.raises(ValueError, match="on_duplicate"):
        validate_jsonl(b"", on_duplicate="merge")
