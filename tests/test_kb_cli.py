"""`nesy kb ...` run as a real subprocess: exit codes, one-line errors, and the files it writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def nesy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", "kb", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )


def line(entry_id: str, **fields) -> str:
    base = {
        "id": entry_id,
        "task": "gsm8k",
        "learning_summary": f"summary {entry_id}",
        "supplementary_knowledge": f"knowledge {entry_id}",
        "status": "pending",
    }
    return json.dumps({**base, **fields})


def test_help_lists_the_commands():
    result = nesy("--help")
    assert result.returncode == 0
    for command in ("import", "export", "list", "show", "search", "stats", "history", "restore", "set-status"):
        assert command in result.stdout


def test_bad_import_is_one_error_line_and_changes_nothing(tmp_path):
    (tmp_path / "kb.jsonl").write_text("\n".join([line("a"), line("b"), line("c", status="done")]) + "\n")
    result = nesy("import", "kb.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kb.jsonl line 3, field 'status': Input should be 'pending', 'accepted' or 'rejected' (got 'done')"
    ]
    assert json.loads(nesy("stats", "--json").stdout)["total"] == 0


def test_import_edit_history_restore_export(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(line("a") + "\n" + line("b", status="accepted") + "\n", encoding="utf-8")
    assert "2 added" in nesy("import", str(source)).stdout

    assert nesy("set-status", "accepted", "a").returncode == 0
    listed = nesy("list", "--status", "accepted", "--json").stdout.splitlines()
    assert sorted(json.loads(x)["id"] for x in listed) == ["a", "b"]
    assert json.loads(nesy("show", "a", "--json").stdout)["version"] == 2

    history = nesy("history", "a").stdout.splitlines()
    assert [row.split("\t")[2] for row in history] == ["import", "status"]
    first_revision = history[0].split("\t")[0].lstrip("#")
    assert nesy("restore", "a", first_revision).returncode == 0
    assert json.loads(nesy("show", "a", "--json").stdout)["status"] == "pending"

    out = tmp_path / "out.jsonl"
    assert nesy("export", str(out), "--status", "accepted").returncode == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["b"]
    stats = json.loads(nesy("stats", "--json").stdout)
    assert stats["by_status"] == {"pending": 1, "accepted": 1, "rejected": 0}


@pytest.mark.parametrize(
    "args, message",
    [
        (("show", "missing"), "error: no entry with id 'missing'"),
        (("set-status", "done", "a"), "error: status must be one of"),
        (("import", "no-such.jsonl"), "error: no-such.jsonl: no such file"),
        (("restore", "missing", "1"), "error: no entry with id 'missing'"),
        (("list", "--sort", "bogus"), "error: cannot sort by 'bogus'"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(args, message):
    result = nesy(*args)
    assert result.returncode != 0
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


ENTRY = (
    '{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
    '"status": "pending"'
)  # without its closing brace: add fields, then "}"


@pytest.mark.parametrize(
    "content, message",
    [
        ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: nested too deeply"),
        (ENTRY + ', "title": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1, field 'title': nested too deeply"),
        (
            ENTRY + ', "version": 12345678901234567890123}\n',
            "line 1, field 'version': must be at most 9007199254740991",
        ),
        (ENTRY + ', "title": "\\ud800"}\n', "line 1, field 'title': contains a lone surrogate U+D800"),
        (
            '{"id": "a", "task": "t", "learning_summary": "s", "supplementary_knowledge": "k", '
            '"status": "rejected", "status": "accepted"}\n',
            "line 1, field 'status': is given 2 times",
        ),
        (line("x\nforged\taccepted\tgsm8k\tv1\t") + "\n", "line 1, field 'id': must be printable characters only"),
        (line("x\u0000") + "\n", "line 1, field 'id': must be printable characters only"),
        (line("x" * 2_000_000) + "\n", "line 1, field 'id': must be at most 256 characters"),
        (line("x", created_at="garbage") + "\n", "line 1, field 'created_at': must be an ISO 8601 time"),
    ],
    ids=[
        "nested",
        "nested-field",
        "big-version",
        "surrogate",
        "duplicate-key",
        "newline-id",
        "nul-id",
        "2mb-id",
        "garbage-time",
    ],
)
def test_hostile_file_is_one_error_line_naming_line_and_field(tmp_path, content, message):
    (tmp_path / "good.jsonl").write_text(line("keep") + "\n")
    assert nesy("import", "good.jsonl", cwd=tmp_path).returncode == 0
    before = nesy("export").stdout
    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    result = nesy("import", "bad.jsonl", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr[-3000:]
    assert result.stderr.startswith(f"error: bad.jsonl {message}"), result.stderr[:500]
    assert nesy("export").stdout == before  # nothing changed
    assert nesy("list").stdout.splitlines()[0].startswith("keep\t")


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_max_mb_must_be_a_positive_finite_number(tmp_path, value):
    (tmp_path / "kb.jsonl").write_text(line("a") + "\n")
    result = nesy("import", "kb.jsonl", "--max-mb", value, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --max-mb must be a positive number of megabytes (got {float(value)})"


def test_cr_only_file_imports_and_missing_links_are_reported(tmp_path):
    (tmp_path / "mac.jsonl").write_bytes((line("a", links=["b", "gone"]) + "\r" + line("b") + "\r").encode())
    result = nesy("import", "mac.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stdout
    assert result.stderr.strip() == (
        "warning: mac.jsonl line 1, field 'links.1': links to 'gone', "
        "which is neither in this file nor in the knowledge base"
    )


def test_list_and_history_rows_cannot_be_forged_by_field_text(tmp_path):
    (tmp_path / "kb.jsonl").write_text(line("a", title="t\nb\taccepted\tgsm8k\tv9\t", task="gsm8k\tx") + "\n")
    assert nesy("import", "kb.jsonl", "--by", "eve\nforged", cwd=tmp_path).returncode == 0
    assert nesy("list").stdout.splitlines() == ["a\tpending\tgsm8k\\tx\tv1\t-\tt\\nb\\taccepted\\tgsm8k\\tv9\\t"]
    [row] = nesy("history", "a").stdout.splitlines()
    assert row.split("\t")[3] == "eve\\nforged"


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process takes the KB's write lock and keeps it for `seconds`."""
    script = (
        "import sqlite3, sys, time\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_kb_locked_by_another_process_is_waited_for_then_one_error_line(tmp_path, workspace, monkeypatch):
    (tmp_path / "kb.jsonl").write_text(line("a") + "\n")
    (tmp_path / "more.jsonl").write_text(line("b") + "\n")
    assert nesy("import", "kb.jsonl", cwd=tmp_path).returncode == 0
    monkeypatch.setenv("NESY_KB_LOCK_TIMEOUT", "3")
    holder = hold_write_lock(workspace / "kb.sqlite", 120)
    try:
        started = time.monotonic()
        result = nesy("import", "more.jsonl", cwd=tmp_path)
        assert time.monotonic() - started >= 3
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip() == (
            f"error: the knowledge base {workspace / 'kb.sqlite'} is locked by another process "
            "(waited 3 s); try again when that process has finished"
        )
        assert nesy("set-status", "accepted", "a").stderr.startswith("error: the knowledge base")
        assert nesy("list").stdout.startswith("a\t")  # reading does not wait for the writer
    finally:
        holder.kill()
        holder.wait()
    holder = hold_write_lock(workspace / "kb.sqlite", 1)  # shorter than the wait: retried
    assert "1 added" in nesy("import", "more.jsonl", cwd=tmp_path).stdout
    holder.wait()


@pytest.mark.slow  # a fresh process loads torch + MiniLM (~20 s on shared cores)
def test_search_syncs_and_finds(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        line(
            "speed",
            status="accepted",
            learning_summary="Average speed is the total distance divided by the total time.",
        )
        + "\n"
        + line("boil", status="accepted", learning_summary="Water boils at 100 degrees Celsius at sea level.")
        + "\n"
    )
    nesy("import", str(source))
    result = nesy("search", "How hot must water get before it boils?", "--k", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[1] == "boil"


@pytest.mark.slow  # two fresh processes load torch + MiniLM and embed 1,500 entries
def test_reindex_reports_progress_stops_cleanly_and_resumes(tmp_path):
    from kb.schema import entry_from_json
    from kb.store import KBStore

    total = 1500
    KBStore().import_entries(
        [entry_from_json(line(f"e{i:04d}", learning_summary=f"fact {i}")) for i in range(total)], by="test"
    )
    metrics = tmp_path / "metrics.jsonl"
    env = {**os.environ, "NESY_JOB_DIR": str(tmp_path)}
    job = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "kb", "reindex"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def steps():
        return [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.exists() else []

    deadline = time.monotonic() + 240
    while max(steps(), default=0) < 256 and time.monotonic() < deadline:  # one batch is saved
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=240)
    assert job.returncode == 3, err[-2000:]
    # the stop lands between batches: everything embedded before it is kept, nothing after
    kept = int(re.search(r"stopped after embedding (\d+) entries", err).group(1))
    assert kept % 256 == 0 and 256 <= kept < total, err[-2000:]
    first = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert (first[0]["step"], first[0]["total"], first[0]["stage"]) == (0, total, "reindex")

    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "kb", "reindex"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"embedded {total} ({kept} kept from a stopped run)" in result.stdout
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert (last["step"], last["total"]) == (total - kept, total - kept)


# ------------------------------------------------------------------------- quality flags

FIXTURES = Path(__file__).parent / "fixtures"


def test_list_shows_flags_and_filters_by_them(tmp_path):
    (tmp_path / "kb.jsonl").write_text(
        "\n".join(
            [
                line(
                    "a",
                    flags=[
                        {"code": "generic", "detail": "boilerplate"},
                        {"code": "restates_source", "detail": "numbers 750"},
                    ],
                ),
                line("b", flags=[{"code": "false_arithmetic", "detail": "2 + 2 = 5 (is 4)"}]),
                line("c"),
            ]
        )
        + "\n"
    )
    assert nesy("import", "kb.jsonl", cwd=tmp_path).returncode == 0
    rows = nesy("list", "--sort", "id", "--asc").stdout.splitlines()
    assert [r.split("\t")[4] for r in rows] == ["generic,restates_source", "false_arithmetic", "-"]
    ids = lambda *args: [r.split("\t")[0] for r in nesy("list", *args).stdout.splitlines()]  # noqa: E731
    assert ids("--flag", "generic") == ["a"]
    assert sorted(ids("--flag", "generic", "--flag", "false_arithmetic")) == ["a", "b"]
    assert sorted(ids("--flag", "any")) == ["a", "b"] and ids("--flag", "none") == ["c"]
    assert ids("--flag", "empty_or_overlong") == []
    for args, message in [
        (("--flag", "Generic!"), "error: --flag 'Generic!' is not a flag code"),
        (("--flag", "any", "--flag", "generic"), "error: --flag any / none cannot"),
    ]:
        result = nesy("list", *args)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    stats = nesy("stats").stdout
    assert "flagged: 2" in stats and "flag generic: 1" in stats


def test_check_recomputes_flags_as_revisions_by_nesy_quality(tmp_path):
    """The first starter KB (14 entries, shipped without flags) checked from the shell."""
    assert nesy("import", str(FIXTURES / "starter_kb_v1.jsonl")).returncode == 0
    result = nesy("check", "--status", "accepted")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "checked 14 entries: flags now restates_source 10, generic 13, false_arithmetic 1; 14 entries changed"
    )
    commodity = "gsm8k-gsm8k-train-02133-error_analysis"
    last = nesy("history", commodity).stdout.splitlines()[-1].split("\t")
    assert last[2:4] == ["update", "nesy-quality"] and last[-1] == "flags"
    shown = json.loads(nesy("show", commodity, "--json").stdout)
    assert [f["code"] for f in shown["flags"]] == ["restates_source", "generic", "false_arithmetic"]
    again = nesy("check", "--checks", "restates_source,false_arithmetic")
    assert again.stdout.strip().endswith("; 0 entries changed")
    assert nesy("check", "--checks", "vague").stderr.startswith("error: unknown check 'vague'")
    assert nesy("check", "--status", "pending").stdout.startswith("checked 0 entries")
