"""Property-based fuzzing of the JSONL importer (Hypothesis; the CI profile is in conftest.py).

Whatever the bytes, import_jsonl either accepts the file or raises ImportRejected with a one-line
first problem: never any other exception. A refused file changes nothing (export bytes and
stats, revisions and change sequence included). An accepted file's export is its canonical form
(dumps_entry of each validated entry, id order, with the metadata the store fills in when the
file has none), and export -> import -> export is byte-identical.
"""

from __future__ import annotations

import io
import json
import tempfile
from datetime import timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from kb.jsonl import ImportRejected, dumps_entry, export_jsonl, import_jsonl
from kb.schema import Entry, entry_from_json
from kb.store import KBStore

# Ids with a space can never come out of the id strategy below, so a valid generated file never
# collides with the seed and is always accepted.
SEED = "".join(
    json.dumps(
        {
            "id": i,
            "task": "gsm8k",
            "learning_summary": f"summary of {i}",
            "supplementary_knowledge": "a fact",
            "status": "accepted",
            "links": ["seed one"],
            "created_at": "2024-05-01T12:00:00.000000Z",
            "updated_at": "2024-05-01T12:00:00.000000Z",
            "updated_by": "ann",
        }
    )
    + "\n"
    for i in ("seed one", "seed two")
)
FIELDS = list(Entry.model_fields)
METADATA = ("created_at", "updated_at", "updated_by")
# The autouse `workspace` fixture is function-scoped; these tests never use it (each example
# opens its own stores in a temporary folder), so Hypothesis' warning about it does not apply.
fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------------
id_text = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=12)
prose = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(str.strip)
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.builds(
    lambda moment, spec: moment.isoformat(timespec=spec),
    st.datetimes(timezones=offsets),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
sources = st.fixed_dictionaries(
    {}, optional={k: prose for k in ("kind", "dataset", "example_id", "question", "student_response", "teacher_model")}
)
flag_codes = st.from_regex(r"[a-z][a-z0-9_]{0,39}", fullmatch=True)
flags = st.lists(
    st.fixed_dictionaries({"code": flag_codes}, optional={"detail": prose}), max_size=3, unique_by=lambda f: f["code"]
)
entries = st.fixed_dictionaries(
    {
        "id": id_text,
        "task": id_text,
        "learning_summary": prose,
        "supplementary_knowledge": prose,
        "status": st.sampled_from(["pending", "accepted", "rejected"]),
    },
    optional={
        "title": prose,
        "concepts": st.lists(prose, max_size=3),
        "source": sources,
        "flags": flags,
        "links": st.lists(id_text | st.just("seed one"), max_size=3),
        "version": st.integers(1, 2**53 - 1),
        "created_at": times,
        "updated_at": times,
        "updated_by": prose,
    },
)
# Any text at all, lone surrogates included (they must be refused, not crash a write).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_files(draw) -> bytes:
    lines = draw(st.lists(entries, min_size=1, max_size=5, unique_by=lambda e: e["id"]))
    ascii_only, end = draw(st.booleans()), draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return "".join(json.dumps(e, ensure_ascii=ascii_only) + end for e in lines).encode()


@st.composite
def json_lines(draw) -> bytes:
    """Lines of random JSON: any value, or an entry whose fields hold random JSON."""
    line = draw(
        st.one_of(
            json_values,
            st.dictionaries(st.sampled_from(FIELDS) | any_text, json_values, max_size=6),
            st.builds(lambda e, k, v: {**e, k: v}, entries, st.sampled_from(FIELDS), json_values),
        )
    )
    text = json.dumps(line, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass") + draw(st.sampled_from([b"\n", b"\r\n", b"\r", b""]))


SNIPPETS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xef\xbb\xbf",
    b'"',
    b"{",
    b"[[[",
    b"]",
    b",",
    b"\\u0000",
    b"\\ud800",
    b'"status": "rejected", ',
    b'"id": "seed one", ',
    b'"version": 123456789012345678901234, ',
    b'"created_at": "yesterday", ',
    b'"links": ["nowhere"], ',
    b'"x": 1, ',
]


@st.composite
def mutated_files(draw) -> bytes:
    """A valid file after one to three edits a broken tool or a hostile user might make."""
    data = bytearray(draw(valid_files()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "repeat_line", "line_endings"]))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(SNIPPETS) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "repeat_line":
            lines = bytes(data).splitlines(keepends=True)
            data = bytearray(b"".join(lines + lines[:1]))
        elif kind == "line_endings":
            data = bytearray(bytes(data).replace(b"\n", draw(st.sampled_from([b"\r", b"\r\n"]))))
    return bytes(data)


# -- the properties -----------------------------------------------------------------------------
def export_bytes(store: KBStore) -> bytes:
    out = io.StringIO()
    export_jsonl(store, out)
    return out.getvalue().encode("utf-8")


def check_import(data: bytes) -> str:
    """Import data into a seeded store and check every property; 'accepted' or 'refused'."""
    with tempfile.TemporaryDirectory() as folder:
        store = KBStore(Path(folder) / "kb.sqlite")
        import_jsonl(store, SEED.encode(), by="seed")
        before, stats = export_bytes(store), store.stats()
        try:
            report = import_jsonl(store, data, by="fuzz")
        except ImportRejected as e:  # the only exception a file may cause
            assert e.report.problems and len(str(e).splitlines()) == 1, str(e)
            assert export_bytes(store) == before and store.stats() == stats  # nothing changed
            return "refused"
        exported = export_bytes(store)
        assert exported == canonical(store, report.entries)
        for line in exported.decode("utf-8").split("\n")[:-1]:  # canonical form: a fixed point
            assert dumps_entry(entry_from_json(line)) == line
        again = KBStore(Path(folder) / "again.sqlite")
        import_jsonl(again, exported, by="round trip")
        assert export_bytes(again) == exported
        return "accepted"


def canonical(store: KBStore, imported: list[Entry]) -> bytes:
    """Seed + imported entries as canonical lines in id order; metadata the file left out is
    filled by the store (updated_by = the importer)."""
    lines = {e.id: dumps_entry(e) for e in map(entry_from_json, SEED.split("\n")[:-1])}
    for entry in imported:
        stored = store.get(entry.id)
        filled = {k: getattr(stored, k) for k in METADATA if getattr(entry, k) is None}
        assert entry.updated_by is not None or stored.updated_by == "fuzz"
        lines[entry.id] = dumps_entry(entry.model_copy(update=filled))
    return "".join(lines[i] + "\n" for i in sorted(lines)).encode("utf-8")


@fuzz
@given(valid_files())
def test_valid_files_are_accepted_and_round_trip(data):
    assert check_import(data) == "accepted"


@fuzz
@given(st.binary(max_size=300))
@example(b"[" * 100_000 + b"]" * 100_000 + b"\n")
@example(b"\xed\xa0\x80\n")  # a surrogate encoded as UTF-8 (invalid UTF-8)
def test_random_bytes_never_crash_and_refusals_change_nothing(data):
    event(check_import(data))


@fuzz
@given(st.lists(json_lines(), min_size=1, max_size=4).map(b"".join))
@example(
    b'{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    b'"title": ' + b"[" * 100_000 + b"]" * 100_000 + b', "status": "pending"}\n'
)
@example(
    b'{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    b'"status": "pending", "version": 12345678901234567890123}\n'
)
@example(
    b'{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    b'"status": "pending", "version": ' + b"9" * 5000 + b"}\n"
)
@example(
    b'{"id": "a", "task": "t", "learning_summary": "\\ud800", "supplementary_knowledge": "k", "status": "pending"}\n'
)
@example(
    b'{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    b'"status": "rejected", "status": "accepted"}\n'
)
def test_random_json_never_crashes_and_refusals_change_nothing(data):
    event(check_import(data))


@fuzz
@given(mutated_files())
@example(
    SEED.replace('"id": "seed one", ', '"id": "x", "version": 123456789012345678901234, ')
    .replace('"seed two"', '"y"')
    .encode()
)
@example(
    SEED.replace('"status": "accepted"', '"status": "rejected", "status": "accepted"')
    .replace("seed", "copy of seed")
    .encode()
)
def test_mutated_valid_files_never_crash_and_refusals_change_nothing(data):
    event(check_import(data))
