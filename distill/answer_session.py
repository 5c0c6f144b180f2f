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

from distill import jobs
from kb.errors import NesyError

KIND = "compare"
EVENTS = "answer_events.jsonl"
REQUESTS = "requests"
CLOSED = "requests.closed"
IDLE_TIMEOUT_S = 600.0
REQUEST_NAME = re.compile(r"^(\d+)\.json$")
ANSWER_TYPES = ("number", "option", "text")  # distill.data.ANSWER_TYPES (not imported: it is heavy)
# A request's fields: (accepted types, default). Only settings that need no reload are here.
FIELDS: dict[str, tuple[tuple[type, ...], object]] = {
    "question": ((str,), None),
    "gold": ((str, type(None)), None),
    "answer_type": ((str,), "number"),
    "task": ((str,), ""),
    "kb": ((bool,), True),
    "compare": ((bool,), True),
    "k": ((int, type(None)), None),
    "retriever": ((str, type(None)), None),
    "min_score": ((int, float, type(None)), None),
    "thought": ((str, type(None)), None),
    "max_new_tokens": ((int, type(None)), None),
    "include_pending": ((bool,), False),
    "adaptive": ((int, float, type(None)), None),
}


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
    """A request file's settings, defaults filled in; BadRequest says what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request is not JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise BadRequest("the request must be a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown request fields: {', '.join(unknown)}")
    request = {}
    for name, (types, default) in FIELDS.items():
        value = raw.get(name, default)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"request field {name!r} has the wrong type ({type(value).__name__})")
        request[name] = value
    if not (request["question"] or "").strip():
        raise BadRequest("the request has no question")
    if request["answer_type"] not in ANSWER_TYPES:
        raise BadRequest(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, not {request['answer_type']!r}")
    if request["k"] is not None and request["k"] < 0:
        raise BadRequest(f"k must be 0 or more, not {request['k']}")
    if request["max_new_tokens"] is not None and request["max_new_tokens"] < 1:
        raise BadRequest(f"max_new_tokens must be at least 1, not {request['max_new_tokens']}")
    return request
