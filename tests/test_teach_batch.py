"""The OpenAI Batch API path of `nesy teach` (issue 12 item 5), against tests/openai_stub.py's
BatchTeacher: a real local HTTP server with the file and batch endpoints."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from openai_stub import BatchTeacher, serve
from typer.testing import CliRunner

import distill.batch
from distill.cli import app
from distill.data import get_dataset

EXAMPLES = get_dataset("gsm8k").load("train", limit=4)
WRONG, REFUSED = EXAMPLES[2], EXAMPLES[3]


def answer(body: dict) -> str:
    """A gold CoT answer for each question, a wrong one for WRONG (so verification keeps 3 of 4)."""
    asked = body["messages"][-1]["content"]
    example = next(e for e in EXAMPLES if e.question in asked)
    return f"Step by step. Therefore, the answer is {'-1' if example is WRONG else example.answer}."


def refuse_one(body: dict) -> bool:
    return REFUSED.question in body["messages"][-1]["content"]


def teach(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, ["teach", *args], env=env)


def rationales(url: str, *extra: str, env: dict | None = None):
    return teach("rationales", "--dataset", "gsm8k", "--limit", "4", "--teacher", url, "--model", "m",
                 "--out", "s", *extra, env=env)  # fmt: skip


def batch_folder(workspace: Path, name: str) -> Path:
    return workspace / "teach" / "batches" / name


def input_lines(workspace: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (batch_folder(workspace, name) / "input.jsonl").read_text().splitlines()]


def cache_keys(home: Path) -> set[str]:
    with sqlite3.connect(home / "cache" / "teacher.sqlite") as db:
        return {key for (key,) in db.execute("SELECT key FROM completions")}


def records(home: Path) -> list[str]:
    return sorted((home / "datasets" / "s" / "records.jsonl").read_text().splitlines())


def direct_run(url: str, home: Path, monkeypatch) -> tuple[list[dict], set[str], list[str]]:
    """The same job sent live, in its own workspace: (bodies sent, cache keys, records)."""
    with monkeypatch.context() as m:
        m.setenv("NESY_HOME", str(home))
        out = rationales(url)
        assert out.exit_code == 0, out.output
        bodies, BatchTeacher.chat_calls, BatchTeacher.seen = list(BatchTeacher.chat_calls), [], []
        return bodies, cache_keys(home), records(home)


def canonical(bodies: list[dict]) -> list[str]:
    return sorted(json.dumps(b, sort_keys=True) for b in bodies)


@pytest.fixture
def stub():
    BatchTeacher.reset(answer=answer)
    with serve(BatchTeacher) as url:
        yield url


@pytest.fixture
def quick_polls(monkeypatch):
    monkeypatch.setattr(distill.batch, "POLL_FIRST", 0.01)


def test_prepare_writes_the_batch_input_uploads_it_and_records_the_batch(stub, workspace, tmp_path, monkeypatch):
    """Mutants caught: a body other than the live one (e.g. without max_tokens), a custom_id that is
    not the cache key, a wrong method / url, an upload with another purpose, no batch recorded."""
    bodies, keys, _ = direct_run(stub, tmp_path / "direct", monkeypatch)
    out = rationales(stub, "--batch", "b1")
    assert out.exit_code == 0, out.output
    assert BatchTeacher.chat_calls == []  # prepare calls no one
    # a request left for the batch is neither an answer nor a failed sample of the job
    assert (workspace / "datasets" / "s" / "raw.jsonl").read_text() == ""
    lines = input_lines(workspace, "b1")
    assert all(set(line) == {"custom_id", "method", "url", "body"} for line in lines)
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    assert canonical([line["body"] for line in lines]) == canonical(bodies)  # exactly the live bodies
    assert {line["custom_id"] for line in lines} == keys  # = the cache keys a live run stores
    assert [(m, p) for m, p, _ in BatchTeacher.seen] == [("POST", "/v1/files"), ("POST", "/v1/batches")]
    [upload] = BatchTeacher.files.values()
    assert upload["purpose"] == "batch"
    assert upload["data"] == (batch_folder(workspace, "b1") / "input.jsonl").read_bytes()
    [(batch_id, batch)] = BatchTeacher.batches.items()
    record = json.loads((batch_folder(workspace, "b1") / "batch.json").read_text())
    assert record["batch_id"] == batch_id and record["input_file_id"] == batch["input_file_id"]
    assert (record["base_url"], record["model"], record["requests"]) == (stub, "m", 4)
    assert f"batch b1 ({batch_id}): submitted 4 requests" in out.output


def test_a_lost_answer_to_creating_the_batch_never_creates_a_second_one(stub, workspace):
    """Mutant caught: a retry of the creation that does not look for the batch first (two paid)."""
    BatchTeacher.lose_creates = 1  # created, then a 500: our retry must find it, not create another
    out = rationales(stub, "--batch", "b1")
    assert out.exit_code == 0, out.output
    [batch_id] = BatchTeacher.batches
    assert json.loads((batch_folder(workspace, "b1") / "batch.json").read_text())["batch_id"] == batch_id
    assert ("GET", "/v1/batches?limit=100") in [(m, p) for m, p, _ in BatchTeacher.seen]


def test_status_and_import_cache_the_answers_and_report_the_failed_line(stub, workspace, tmp_path, monkeypatch):
    """Mutants caught: a failed line cached, an answer not cached under its custom_id, an import
    that is not idempotent, an import of an unfinished batch, a line of another batch cached."""
    BatchTeacher.reset(answer=answer, refuse=refuse_one)
    foreign = {"status_code": 200, "body": {"choices": [{"message": {"content": "x"}}]}}
    BatchTeacher.extra = [{"custom_id": "f" * 64, "error": None, "response": foreign}]  # not ours: never cached
    assert rationales(stub, "--batch", "b1").exit_code == 0
    ids = {line["custom_id"] for line in input_lines(workspace, "b1")}
    refused = next(line["custom_id"] for line in input_lines(workspace, "b1") if refuse_one(line["body"]))

    early = teach("batch", "import", "b1")  # validating -> in_progress: not finished
    assert early.exit_code == 2 and early.output.startswith("error: batch b1 is in_progress, not finished")
    assert cache_keys(workspace) == set()
    status = teach("batch", "status", "b1")  # in_progress -> completed
    assert status.exit_code == 0, status.output
    assert "completed; 3 of 4 requests done, 1 failed" in status.output

    imported = teach("batch", "import", "b1")
    assert imported.exit_code == 0, imported.output
    assert "imported 3 answers into the teacher cache (0 there already); failed 2 (not cached)" in imported.output
    assert cache_keys(workspace) == ids - {refused}
    downloads = [p for m, p, _ in BatchTeacher.seen if p.endswith("/content")]
    assert len(downloads) == 2  # the output file and the error file

    again = teach("batch", "import", "b1")  # a no-op: nothing downloaded or cached again
    assert "imported 0 answers into the teacher cache (3 there already); failed 2" in again.output
    assert [p for m, p, _ in BatchTeacher.seen if p.endswith("/content")] == downloads
    assert cache_keys(workspace) == ids - {refused}

    # the failed line is still unanswered: a new batch holds exactly that request
    assert rationales(stub, "--batch", "b2").exit_code == 0
    assert [line["custom_id"] for line in input_lines(workspace, "b2")] == [refused]
    assert BatchTeacher.chat_calls == []


def test_after_import_the_teach_command_calls_no_one_and_makes_the_direct_runs_set(
    stub, workspace, tmp_path, monkeypatch, quick_polls
):
    """Mutants caught: an imported answer stored under another key or with another text (the re-run
    would call the teacher, or keep other rationales), --wait not polling until the batch ends."""
    _, _, direct = direct_run(stub, tmp_path / "direct", monkeypatch)
    assert len(direct) == 3  # WRONG is not verified
    assert rationales(stub, "--batch", "b1").exit_code == 0
    imported = teach("batch", "import", "b1", "--wait", "30")  # validating, in_progress, completed
    assert imported.exit_code == 0 and "imported 4 answers" in imported.output, imported.output
    assert sum(p.startswith("/v1/batches/") for _, p, _ in BatchTeacher.seen) == 2

    rerun = rationales(stub)
    assert rerun.exit_code == 0, rerun.output
    assert BatchTeacher.chat_calls == []  # zero requests to chat completions
    assert "kept 3 verified of 4 samples" in rerun.output and "'cached': 4" in rerun.output
    assert records(workspace) == direct
    with_batch = rationales(stub, "--batch", "b1")  # the prepare command again: nothing to submit
    assert "batch b1: nothing to submit" in with_batch.output and len(BatchTeacher.batches) == 1


def test_wait_gives_up_at_its_deadline_with_one_line(stub, workspace, quick_polls):
    BatchTeacher.hold = True
    assert rationales(stub, "--batch", "b1").exit_code == 0
    started = time.monotonic()
    out = teach("batch", "import", "b1", "--wait", "0.3")
    assert time.monotonic() - started < 3  # the deadline is the total wait, not a number of polls
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert out.output.startswith("error: batch b1 is still in_progress after --wait 0.3 s")
    assert sum(p.startswith("/v1/batches/") for _, p, _ in BatchTeacher.seen) >= 3  # it polled


KEY = "sk-batch-0123456789-echoed"


def test_the_key_is_sent_and_redacted_as_for_live_calls(stub, workspace, quick_polls):
    """Mutants caught: the recorded key variable not used by status/import (no key sent), the
    downloaded output file or the cached answer not redacted."""
    BatchTeacher.reset(answer=lambda body: f"My key is {KEY}. Therefore, the answer is 1.")
    env = {"MY_TEACHER_KEY": KEY}
    assert rationales(stub, "--batch", "b1", "--api-key-env", "MY_TEACHER_KEY", env=env).exit_code == 0
    out = teach("batch", "import", "b1", "--wait", "30", env=env)
    assert out.exit_code == 0 and "imported 4 answers" in out.output, out.output
    assert {auth for _, _, auth in BatchTeacher.seen} == {f"Bearer {KEY}"}
    for path in (p for p in workspace.rglob("*") if p.is_file()):
        assert KEY.encode() not in path.read_bytes(), path
    assert "[redacted]" in (batch_folder(workspace, "b1") / "output.jsonl").read_text()


@pytest.mark.parametrize("command", ["rationales", "knowledge"])
@pytest.mark.parametrize("value", ["../../outside", "/tmp/abs", "sub/dir", ".."])
def test_a_batch_name_that_is_a_path_is_refused(stub, workspace, tmp_path, command, value):
    head = (["knowledge", "--dataset", "gsm8k", "--with-answer", "--limit", "1"] if command == "knowledge"
            else ["rationales", "--dataset", "gsm8k", "--limit", "1"])  # fmt: skip
    out = teach(*head, "--teacher", stub, "--model", "m", "--batch", value)
    assert out.exit_code == 2 and out.output.startswith("error: --batch"), out.output
    assert out.output.count("\n") == 1
    assert BatchTeacher.seen == [] and not (workspace / "teach" / "batches").exists()


def test_batch_needs_a_teacher_url(workspace):
    out = teach("rationales", "--dataset", "gsm8k", "--limit", "1", "--teacher", "local", "--batch", "b1")
    assert out.exit_code == 2 and out.output.startswith("error: --batch needs") and out.output.count("\n") == 1


@pytest.mark.parametrize("command", ["import", "status"])
def test_an_unknown_batch_name_is_a_one_line_error(workspace, command):
    out = teach("batch", command, "nope")
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert out.output.startswith("error: no batch named 'nope' was submitted")
    out = teach("batch", command, "../nope")
    assert out.exit_code == 2 and out.output.startswith("error: NAME takes a name"), out.output


WELL_FORMED = (
    "Learning Summary: add the parts first and only then compare the total with the goal.\n"
    "Supplementary Knowledge: a total is the sum of all its parts, counted once each.\n"
    "Concepts: addition, totals"
)


def test_knowledge_through_a_batch_stores_the_entries_without_a_live_call(stub, workspace, quick_polls):
    from kb.store import KBStore

    BatchTeacher.reset(answer=lambda body: WELL_FORMED)
    argv = ["knowledge", "--dataset", "gsm8k", "--with-answer", "--limit", "2", "--teacher", stub, "--model", "m"]
    prepared = teach(*argv, "--batch", "k1")
    assert prepared.exit_code == 0 and "submitted 2 requests" in prepared.output, prepared.output
    assert KBStore().query().entries == []
    assert (workspace / "teach" / "knowledge" / "gsm8k-train" / "raw.jsonl").read_text() == ""
    assert teach("batch", "import", "k1", "--wait", "30").exit_code == 0
    rerun = teach(*argv)
    assert rerun.exit_code == 0 and "2 entries (pending) from 2 cases" in rerun.output, rerun.output
    assert BatchTeacher.chat_calls == [] and len(KBStore().query().entries) == 2


def test_knowledge_answers_asked_again_go_into_the_next_batch(stub, workspace, quick_polls):
    """The README's word: a malformed knowledge answer is asked again as a new sample, and a new
    --batch name batches that request. Mutant caught: a collector that queues what the cache
    holds too (the cached malformed answer is never read, so its new sample is never asked)."""
    first = get_dataset("gsm8k").load("train", limit=2)[0]

    def malformed_once(body: dict) -> str:
        """first's sample 0 has no sections; every other answer is well formed."""
        malformed = first.question in body["messages"][-1]["content"] and "seed" not in body
        return "no sections" if malformed else WELL_FORMED

    BatchTeacher.reset(answer=malformed_once)
    argv = ["knowledge", "--dataset", "gsm8k", "--with-answer", "--limit", "2", "--teacher", stub, "--model", "m"]
    assert teach(*argv, "--batch", "k1").exit_code == 0
    assert [line["body"].get("seed") for line in input_lines(workspace, "k1")] == [None, None]
    assert teach("batch", "import", "k1", "--wait", "30").exit_code == 0
    again = teach(*argv, "--batch", "k2")  # first's answer is malformed: sample 1 of it is batched
    assert "submitted 1 requests" in again.output, again.output
    [line] = input_lines(workspace, "k2")
    assert line["body"]["seed"] == 1 and first.question in json.dumps(line["body"])
    assert teach("batch", "import", "k2", "--wait", "30").exit_code == 0
    rerun = teach(*argv)
    assert rerun.exit_code == 0 and "2 entries (pending) from 2 cases" in rerun.output, rerun.output
    assert BatchTeacher.chat_calls == []
