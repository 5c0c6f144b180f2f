"""AppTest of the Export / import page with hostile files: the page never crashes, never calls a
bad file valid, shows the same problem (line, field, message) as `nesy kb import`, and a
refused or failed import changes nothing."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kb.jsonl import validate_jsonl
from kb.store import KBStore

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
ENTRY = (
    '{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    '"status": "pending"'
)  # without its closing brace: add fields, then "}"


def line(entry_id: str, **fields) -> str:
    return json.dumps(
        {
            "id": entry_id,
            "task": "gsm8k",
            "learning_summary": f"summary {entry_id}",
            "supplementary_knowledge": f"knowledge {entry_id}",
            "status": "pending",
            **fields,
        }
    )


def import_page() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("views/transfer.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def paste(at: AppTest, text: str) -> AppTest:
    at.text_area(key="x:paste").set_value(text).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(at: AppTest, kind: str) -> str:
    return re.sub(r"\\(.)", r"\1", "\n".join(str(e.value) for e in getattr(at, kind)))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000 + "\n",
        ENTRY + ', "title": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        ENTRY + ', "version": 12345678901234567890123}\n',
        ENTRY + ', "title": "\\ud800"}\n',  # (a browser cannot send a raw one: UTF-8 only)
        ENTRY + ', "status": "accepted"}\n',
        line("x\nforged") + "\n",
        line("x", created_at="garbage") + "\n",
    ],
    ids=["nested", "nested-field", "big-version", "surrogate", "duplicate-key", "newline-id", "garbage-time"],
)
def test_hostile_paste_shows_the_clis_problem_and_changes_nothing(text):
    KBStore().import_entries(validate_jsonl(f"{line('keep')}\n".encode()).entries, by="seed")
    at = paste(import_page(), text)
    expected = validate_jsonl(text.encode()).problems[0]  # what `nesy kb import` prints first
    assert "The file is valid" not in shown(at, "success")
    assert f"First: {expected.describe('pasted text')}" in shown(at, "error")
    row = at.dataframe[0].value.iloc[0]
    assert (row["line"], row["field"], row["problem"]) == (expected.line, expected.field or "", expected.message)
    assert not [b for b in at.button if b.key == "x:apply"]
    assert [e.id for e in KBStore().iter_entries()] == ["keep"]


def test_cr_only_paste_is_valid_and_missing_links_are_shown_before_applying():
    at = paste(import_page(), line("a", links=["b", "gone"]) + "\r" + line("b") + "\r")
    assert "The file is valid" in shown(at, "success")
    assert "1 links point to ids that are neither in the file nor in the knowledge base" in shown(at, "warning")
    warning_row = at.dataframe[0].value.iloc[0]
    assert (warning_row["line"], warning_row["field"]) == (1, "links.1")
    at.button(key="x:apply").click().run()
    assert "Imported: 2 added" in shown(at, "success")
    assert KBStore().get("a").links == ["b", "gone"]


def test_a_locked_kb_at_apply_is_one_message_and_nothing_is_imported(monkeypatch, workspace):
    monkeypatch.setenv("NESY_KB_LOCK_TIMEOUT", "1")
    at = paste(import_page(), line("a") + "\n")
    holder = sqlite3.connect(workspace / "kb.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock past our patience
    try:
        at.button(key="x:apply").click().run()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not at.exception, [e.value for e in at.exception]
    assert "Nothing was imported: the knowledge base" in shown(at, "error")
    assert "is locked by another process (waited 1 s)" in shown(at, "error")
    assert KBStore().stats()["total"] == 0
