"""Teacher calls through the OpenAI Batch API (half the price of live calls, answered within 24 h).

Three steps, each resumable, all tied to a batch *name* (never a path) whose folder
$NESY_HOME/teach/batches/<name>/ holds batch.json (the batch and file ids, the teacher's URL,
model and the *name* of its key variable — never the key), input.jsonl and the downloaded
output.jsonl / errors.jsonl:
- prepare (`nesy teach rationales|knowledge ... --batch NAME`): the job runs with a
  `BatchCollector`, a TeacherClient that answers what is cached and, instead of calling the
  teacher, queues every other request as one input line (`custom_id` = its cache key, `body` =
  exactly the chat-completions body a live call sends, TeacherClient.request); `submit` uploads
  the lines (purpose "batch") and creates the batch (endpoint /v1/chat/completions, window 24h).
- `status`: the batch as the server reports it (status and request counts).
- `import_batch`: once the batch has ended (or with `wait`: polling with backoff until a total
  deadline), the output and error files are downloaded and each successful answer is put into
  the teacher cache under its custom_id, read as a live answer is (key redacted, an empty answer
  not cached). Failed lines are counted and reported, never cached. Only custom_ids of our own
  input file are taken, and the request stored with an answer is our input line, not the
  server's echo. Answers already cached are left alone, so importing again changes nothing.
Then the same teach command finds every answer in the cache and calls no one.
Every call goes through TeacherClient.call_api: the same key variable, retries and redaction as
live calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.jsonlines import iter_jsonl, iter_lines
from distill.progress import StopRequested, stop_requested
from distill.teacher import (
    WAIT_SLICE,
    Deferred,
    TeacherCache,
    TeacherClient,
    TeacherConfig,
    TeacherError,
    TeacherStopped,
    usage_summary,
)
from kb.errors import NesyError
from kb.workspace import check_name, create_owned, named_path

AREA = "teach/batches"
ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
MAX_REQUESTS, MAX_BYTES = 50_000, 200 * 1024 * 1024  # the Batch API's limits for one input file
FINISHED = ("completed", "expired", "cancelled")  # their output (all or part) can be imported
ENDED = (*FINISHED, "failed")
POLL_FIRST, POLL_MAX = 5.0, 60.0  # s between status polls with --wait: doubling up to the cap


class BatchError(NesyError, ValueError):
    """A batch that cannot be prepared, found or imported; says which and why."""


def batch_dir(name: str, option: str = "--batch") -> Path:
    """$NESY_HOME/teach/batches/<name> (not created); InvalidName naming `option` for a path."""
    return named_path(AREA, check_name(name, option), option)


class BatchCollector(TeacherClient):
    """A teacher client that answers from the cache and queues every other request (custom_id =
    cache key -> chat-completions body) instead of calling the teacher."""

    def __init__(self, config: TeacherConfig, cache: TeacherCache | None = None):
        super().__init__(config, cache or TeacherCache())
        self.queued: dict[str, dict] = {}

    def _answer(self, key: str, body: dict):
        with self._lock:
            self.queued.setdefault(key, body)  # one line per request, however often a job asks it
        raise Deferred(key)


# ---------------------------------------------------------------- prepare


def input_lines(queued: dict[str, dict]) -> list[dict]:
    """The Batch API input lines of the queued requests."""
    return [{"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body} for key, body in queued.items()]


def submit(collector: BatchCollector, name: str) -> dict:
    """Write the queued requests as the batch's input file, upload it, create the batch and record
    its ids under `name`; returns the record. A name holds one batch."""
    folder = batch_dir(name)
    old = _read_record(folder)
    if old and old.get("batch_id"):
        raise BatchError(
            f"--batch {name} already holds batch {old['batch_id']}; choose another name for the "
            f"{len(collector.queued)} requests not in the cache"
        )
    data = "".join(json.dumps(line) + "\n" for line in input_lines(collector.queued)).encode()
    if len(collector.queued) > MAX_REQUESTS or len(data) > MAX_BYTES:
        raise BatchError(
            f"{len(collector.queued)} requests ({len(data) / 2**20:.0f} MB) exceed one batch "
            f"({MAX_REQUESTS} requests, {MAX_BYTES // 2**20} MB): split the job (--limit)"
        )
    create_owned(folder)
    (folder / "input.jsonl").write_bytes(data)
    config = collector.config
    record = {
        "name": name,
        "base_url": config.base_url,
        "model": config.model,
        "api_key_env": config.api_key_env,
        "backend": config.backend,
        "requests": len(collector.queued),
        "created": time.time(),
    }
    _write_record(folder, record)
    upload = _call(
        collector,
        "uploading the batch input",
        lambda api: api.files.create(file=(f"{name}.jsonl", data, "application/jsonl"), purpose="batch"),
    )
    record["input_file_id"] = upload.id
    _write_record(folder, record)
    batch = _call(collector, "creating the batch", _create_once(upload.id, name))
    record.update(batch_id=batch.id, status=batch.status)
    _write_record(folder, record)
    return record


def _create_once(file_id: str, name: str):
    """The batch-creating call for TeacherClient.call_api. The API takes no idempotency key, so
    an attempt whose answer was lost (a timeout, a 5xx) may have created the batch: every retry
    first looks for a batch of this input file among the latest ones, so one is ever paid for."""
    attempts = []

    def create(api):
        if attempts:
            latest = api.batches.list(limit=100).data
            if found := next((b for b in latest if b.input_file_id == file_id), None):
                return found
        attempts.append(file_id)
        return api.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window=WINDOW, metadata={"nesy_batch": name}
        )

    return create


# ---------------------------------------------------------------- status


def load_record(name: str) -> dict:
    """The record of a submitted batch; BatchError for a name that holds none."""
    folder = batch_dir(name, "NAME")
    record = _read_record(folder)
    if not record or not record.get("batch_id"):
        raise BatchError(f"no batch named {name!r} was submitted (see {folder.parent})")
    return record


def status(name: str) -> tuple[dict, object]:
    """(record, the server's Batch object) of the batch named `name`."""
    record = load_record(name)
    return record, _retrieve(_client(record), record)


def status_line(record: dict, batch) -> str:
    counts = batch.request_counts
    done = f"{counts.completed} of {counts.total} requests done, {counts.failed} failed" if counts else "no counts yet"
    line = f"batch {record['name']} ({record['batch_id']}): {batch.status}; {done}"
    if imported := record.get("imported"):
        line += f"; imported {imported['imported']} answers, {imported['failed']} failed lines"
    return line


# ---------------------------------------------------------------- import


@dataclass
class ImportSummary:
    status: str
    imported: int = 0  # answers put into the teacher cache now
    already: int = 0  # answers the cache held already (an earlier import)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (custom_id, why): never cached
    unanswered: int = 0  # requests with no line at all (an expired or cancelled batch)
    usage: dict = field(default_factory=dict)
    folder: Path | None = None

    def line(self, name: str) -> str:
        text = (
            f"batch {name} ({self.status}): imported {self.imported} answers into the teacher cache "
            f"({self.already} there already); failed {len(self.failed)} (not cached)"
        )
        if self.failed:
            custom_id, why = self.failed[0]
            text += f", first {custom_id[:12]}…: {why}; all in {self.folder}"
        if self.unanswered:
            text += f"; unanswered {self.unanswered}"
        return text + f"; usage {self.usage}"


def import_batch(name: str, wait: float | None = None) -> ImportSummary:
    """Put the answers of the batch named `name` into the teacher cache (see the module doc);
    `wait`: seconds to keep polling for the batch to end."""
    record = load_record(name)
    client = _client(record)
    batch = _wait(client, record, wait) if wait else _retrieve(client, record)
    if batch.status == "failed":
        errors = [e.message for e in (batch.errors.data or [])] if batch.errors else []
        raise BatchError(f"batch {name} failed: {client.redact('; '.join(map(str, errors))) or 'no reason given'}")
    if batch.status not in FINISHED:
        raise BatchError(
            f"batch {name} is {batch.status}, not finished: see `nesy teach batch status {name}`, "
            f"or import with --wait SECONDS"
        )
    folder = batch_dir(name, "NAME")
    rows = [
        *_download(client, batch.output_file_id, folder / "output.jsonl"),
        *_download(client, batch.error_file_id, folder / "errors.jsonl"),
    ]
    inputs = {row["custom_id"]: row["body"] for _, row in iter_jsonl(folder / "input.jsonl")}
    summary = _import_rows(client, inputs, rows, ImportSummary(batch.status, folder=folder))
    record["imported"] = {
        "imported": summary.imported + summary.already,
        "failed": len(summary.failed),
        "unanswered": summary.unanswered,
        "at": time.time(),
    }
    _write_record(folder, record)
    return summary


def _import_rows(client: TeacherClient, inputs: dict, rows: list, summary: ImportSummary) -> ImportSummary:
    answered = set()
    for row in rows:
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        if custom_id not in inputs:  # not a request of ours: nothing of it may enter the cache
            summary.failed.append((str(custom_id), "not a request of this batch"))
            continue
        answered.add(custom_id)
        if error := _line_error(row):
            summary.failed.append((custom_id, client.redact(error)))
        elif client.cache.get(custom_id) is not None:
            summary.already += 1
        else:
            _cache_answer(client, custom_id, inputs[custom_id], row["response"]["body"], summary)
    summary.unanswered = len(inputs.keys() - answered)
    summary.usage = usage_summary(client)
    return summary


def _cache_answer(client: TeacherClient, custom_id: str, request: dict, body, summary: ImportSummary) -> None:
    """Cache one answer as a live call caches it: only a usable chat completion, never empty."""
    try:
        completion = client.completion_from(body)
    except TeacherError as e:
        summary.failed.append((custom_id, str(e)))
        return
    if not completion.text.strip():
        summary.failed.append((custom_id, f"an empty answer (finish_reason {completion.finish_reason})"))
        return
    client.cache.put(custom_id, request, completion)
    client.cache.log_call(custom_id)  # a real (batched) call: counted as live calls are
    summary.imported += 1


def _line_error(row: dict) -> str | None:
    """Why a line of the output or error file holds no answer (None: it holds one)."""
    response = row.get("response") if isinstance(row.get("response"), dict) else {}
    if row.get("error"):
        error = row["error"]
        return f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else str(error)
    if response.get("status_code") != 200:
        body = response.get("body")
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else body
        return f"status {response.get('status_code')}: {message}"
    return None


def _download(client: TeacherClient, file_id: str | None, path: Path) -> list:
    """The lines of one result file, downloaded once (key redacted) and kept in the batch's
    folder; a line that is not JSON becomes a row without custom_id (a failed line)."""
    if file_id is None:
        return []
    if not path.exists():
        response = _call(client, f"downloading {file_id}", lambda api: api.files.content(file_id))
        partial = path.with_suffix(".part")
        partial.write_text(client.redact(response.content.decode("utf-8", "replace")), encoding="utf-8")
        partial.replace(path)  # a killed download never leaves a file that looks complete
    rows = []
    for _, line in iter_lines(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append({"error": f"a line of {path.name} that is not JSON"})
    return rows


# ---------------------------------------------------------------- the server


def _client(record: dict) -> TeacherClient:
    """A client for the recorded teacher (the key read from the recorded variable, as live)."""
    config = TeacherConfig(
        base_url=record["base_url"],
        model=record["model"],
        api_key_env=record["api_key_env"],
        backend=record.get("backend"),
    )
    return TeacherClient(config, TeacherCache())


def _retrieve(client: TeacherClient, record: dict):
    batch = _call(client, "asking for the batch's status", lambda api: api.batches.retrieve(record["batch_id"]))
    record["status"] = batch.status
    _write_record(batch_dir(record["name"], "NAME"), record)
    return batch


def _wait(client: TeacherClient, record: dict, seconds: float):
    """Poll until the batch has ended, POLL_FIRST s apart at first, doubling up to POLL_MAX;
    BatchError after `seconds` in total. A stop request ends the wait at once."""
    deadline, pause = time.monotonic() + seconds, POLL_FIRST
    while (batch := _retrieve(client, record)).status not in ENDED:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BatchError(
                f"batch {record['name']} is still {batch.status} after --wait {seconds:g} s: run the "
                f"same command again later (nothing is lost)"
            )
        _sleep(min(pause, left))
        pause = min(pause * 2, POLL_MAX)
    return batch


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if stop_requested():
            raise StopRequested()
        time.sleep(min(left, WAIT_SLICE))


def _call(client: TeacherClient, what: str, call):
    """One Batch API call through the client's retries; its failure is a BatchError."""
    try:
        return client.call_api(call)
    except TeacherStopped:
        raise StopRequested() from None
    except TeacherError as e:
        raise BatchError(f"{what}: {e}") from None


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "batch.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_record(folder: Path, record: dict) -> None:
    (folder / "batch.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
