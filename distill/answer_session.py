"""A warm student for the Compare page: one `nesy answer --session` job serves many comparisons.

Loading the student costs seconds to minutes on a CPU, answering a short question a few seconds;
so the page keeps one session job per student (base model, adapter, backend: what a reload would
change) and drops each comparison into its folder as a request. The job answers requests in
order, tags every event of a request with the request id in the job's answer_events.jsonl, and
ends on its own (exit 0) after an idle timeout, or sooner when another job waits for its slot.

  $NESY_JOB_DIR/requests/<n>.json      a request: question, gold, answer type, per-answer settings
  $NESY_JOB_DIR/requests/<n>.served    once answered or refused (an `error` event says why)
  $NESY_JOB_DIR/requests.closed/       the folder after the session stopped taking requests

Handing a request over is race-free: it is written to a temporary file inside requests/ and then
linked to its final name; a session that stops taking requests first renames the folder, so a
later link fails (SessionClosed: the caller starts a new session) and a request linked before the
rename is still answered. This module holds no torch import: the app uses it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill import jobs
from distill.data import AnswerType
from kb.errors import NesyError

KIND = "compare"
EVENTS = "answer_events.jsonl"
REQUESTS = "requests"
CLOSED = "requests.closed"
IDLE_TIMEOUT_S = 600.0
REQUEST_NAME = re.compile(r"^(\d+)\.json$")


class Request(BaseModel):
    """One comparison request: only settings a loaded student can change without a reload."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1)
    gold: str | None = None
    answer_type: AnswerType = "number"
    task: str = ""
    kb: bool = True
    compare: bool = True
    k: int | None = Field(None, ge=0)
    retriever: str | None = None
    min_score: float | None = None
    thought: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    include_pending: bool = False
    adaptive: float | None = None

    @field_validator("question")
    @classmethod
    def has_words(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("the request has no question")
        return question


class SessionClosed(NesyError):
    """The session job no longer takes requests (it ended or is ending): start a new one."""


class BadRequest(NesyError, ValueError):
    """A request file that cannot be answered; the message says what is wrong with it."""


# --- the app's side ----------------------------------------------------------------------------


def session_argv(model: dict, idle_timeout: float = IDLE_TIMEOUT_S) -> list[str]:
    """`nesy answer --session` for a student: {"base", "adapter", "backend"} (None = default)."""
    argv = ["answer", "--session", "--events", "--idle-timeout", f"{idle_timeout:g}"]
    argv += ["--adapter", model["adapter"]] if model.get("adapter") else []
    argv += ["--base-model", model["base"]] if model.get("base") else []
    backend = model.get("backend") or "transformers"
    argv += ["--backend", backend] if backend != "transformers" else []
    return argv


def live_session(model: dict, idle_timeout: float = IDLE_TIMEOUT_S) -> jobs.Job | None:
    """The newest queued or running session job of this student that still takes requests."""
    argv = session_argv(model, idle_timeout)
    for job in jobs.list_jobs():
        if job.active and job.kind == KIND and job.argv == argv and (job.dir / REQUESTS).is_dir():
            return job
    return None


def start_session(model: dict, idle_timeout: float = IDLE_TIMEOUT_S) -> jobs.Job:
    """A new session job for this student (queued if the job slots are taken)."""
    name = f"compare session: {model.get('adapter') or model.get('base') or 'base model'}"
    job = jobs.submit(session_argv(model, idle_timeout), KIND, name=name)
    (job.dir / REQUESTS).mkdir(exist_ok=True)  # requests may arrive before the job has started
    return job


def ask(job_id: str, request: dict) -> str:
    """Hand a request to a session job; its id (the events of its answer carry it).
    SessionClosed when the session no longer takes requests."""
    folder = jobs.home() / "jobs" / job_id / REQUESTS
    tmp = folder / f"{secrets.token_hex(6)}.tmp"
    try:
        tmp.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    except FileNotFoundError:
        raise SessionClosed(f"session job {job_id} no longer takes requests") from None
    try:
        return _link_next(tmp, folder)
    finally:
        tmp.unlink(missing_ok=True)


def _link_next(tmp: Path, folder: Path) -> str:
    """Give the written request the next free number (a link fails rather than overwrite)."""
    n = 1 + max((request_number(p) for p in _names(folder)), default=0)
    while True:
        try:
            os.link(tmp, folder / f"{n}.json")
            return str(n)
        except FileExistsError:
            n += 1  # another tab asked at the same moment
        except FileNotFoundError:  # the session renamed the folder away: it is closing
            raise SessionClosed(f"session job {folder.parent.name} no longer takes requests") from None


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def request_number(name: str) -> int:
    """1 for "1.json" or "1.served"; 0 for anything else (a temporary file)."""
    stem, _, suffix = name.partition(".")
    return int(stem) if stem.isdigit() and suffix in ("json", "served") else 0


def ask_warm(model: dict, request: dict, idle_timeout: float = IDLE_TIMEOUT_S) -> tuple[jobs.Job, str]:
    """(session job, request id): the request handed to this student's live session, or to a new
    one when there is none (or it closed just now)."""
    job = live_session(model, idle_timeout)
    if job is not None:
        try:
            return job, ask(job.id, request)
        except SessionClosed:
            pass
    job = start_session(model, idle_timeout)
    return job, ask(job.id, request)


# --- the session's side --------------------------------------------------------------------------


def pending(folder: Path) -> list[Path]:
    """Requests waiting in a folder, oldest first."""
    names = [n for n in _names(folder) if REQUEST_NAME.match(n)]
    return [folder / n for n in sorted(names, key=request_number)]


def mark_served(path: Path) -> None:
    os.replace(path, path.with_suffix(".served"))


def close(folder: Path) -> list[Path]:
    """Stop taking requests: rename the folder; the requests handed over before it, still to answer."""
    closed = folder.with_name(CLOSED)
    try:
        os.replace(folder, closed)
    except FileNotFoundError:  # the job folder was deleted under the session
        return []
    return pending(closed)


def parse_request(text: str) -> dict:
    """A request file's settings, defaults filled in; BadRequest says what is wrong (one line)."""
    try:
        return Request.model_validate_json(text).model_dump()
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "json_invalid":
            raise BadRequest(f"the request is not JSON ({error['ctx']['error']})") from None
        if where == "question" and error["type"] in ("missing", "string_too_short", "value_error"):
            raise BadRequest("the request has no question") from None
        if error["type"] == "model_type":
            raise BadRequest("the request must be a JSON object") from None
        raise BadRequest(f"request field {where!r}: {error['msg']}" if where else error["msg"]) from None
