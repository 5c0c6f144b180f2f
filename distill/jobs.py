"""Background jobs: the one way long work runs, from the app and the CLI alike.

A job is a `nesy <argv>` command run in its own process session, so it outlives the app or shell
that started it. State lives only on disk, so any process (a reloaded browser tab, a restarted
Streamlit server, `nesy jobs list` on the server) re-attaches by reading it:

  $NESY_HOME/jobs.sqlite        the registry: one row per job (status, pids, times, exit code)
  $NESY_HOME/jobs/<id>/         config.json, log.txt (stdout+stderr, a file, never a pipe),
                                metrics.jsonl (written by the command's Progress), exit_code

Each job is started through a small runner (`python -m distill.jobs run-runner <id>`) that starts
the command, waits for it and records its exit code, so the status is captured even when nobody
who launched it is still alive. Statuses: queued -> running -> succeeded | failed | cancelled.
Cancel = SIGTERM (Progress stops cleanly at the next step and the command exits 3), escalated to
SIGKILL by the runner after a grace period. At most `max_running()` jobs run at once; the rest wait
in the queue and start when a slot frees (each runner starts the next one when it finishes).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import typer

from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested, read_jsonl
from kb.workspace import home, subdir

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
DEFAULT_GRACE_S = 30.0  # a training step + checkpoint write on CPU fits in this
START_GRACE_S = 30.0  # a claimed job whose runner has not reported yet is not declared dead

# How a stopped job picks up where it left off, by command (the longest matching argv prefix wins):
# a flag to append, or None = just run the same command again (teacher jobs skip what their
# persistent cache already holds; evaluation rewrites its report).
RESUME_FLAG: dict[tuple[str, ...], str | None] = {
    ("train",): "--resume",
    ("jobs", "selftest"): "--resume",
    ("teach",): None,
    ("eval",): None,
}


@dataclass
class Job:
    id: str
    kind: str
    name: str
    argv: list[str]
    status: str
    cwd: str
    created: float
    started: float | None = None
    finished: float | None = None
    pid: int | None = None  # the command's process
    runner_pid: int | None = None  # the runner waiting on it
    exit_code: int | None = None
    reason: str | None = None  # why it failed / was cancelled, in words
    resumed_from: str | None = None
    cancel_requested: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return home() / "jobs" / self.id

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def command_line(self) -> str:
        """The equivalent shell command, to show and copy."""
        return shlex.join(["nesy", *self.argv])

    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


# ---------------------------------------------------------------------------------------- registry

_COLUMNS = (
    "id",
    "kind",
    "name",
    "argv",
    "status",
    "cwd",
    "created",
    "started",
    "finished",
    "pid",
    "pid_created",
    "runner_pid",
    "runner_created",
    "exit_code",
    "reason",
    "resumed_from",
    "cancel_requested",
    "grace",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, argv TEXT NOT NULL,
    status TEXT NOT NULL, cwd TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    pid INTEGER, pid_created REAL, runner_pid INTEGER, runner_created REAL, exit_code INTEGER,
    reason TEXT, resumed_from TEXT, cancel_requested REAL, grace REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(home() / "jobs.sqlite", timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    return conn


def _job_from_row(row: sqlite3.Row) -> Job:
    d = dict(row)
    extra = {k: d.pop(k) for k in ("pid_created", "runner_created", "grace")}
    return Job(**{**d, "argv": json.loads(d["argv"])}, extra=extra)


def _set(job_id: str, **values) -> None:
    cols = ", ".join(f"{k} = ?" for k in values)
    with _db() as conn:
        conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))


def get(job_id: str, *, refresh_first: bool = True) -> Job:
    """One job by id (KeyError if unknown); its status is checked against the live processes."""
    if refresh_first:
        refresh()
    with _db() as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id!r}")
    return _job_from_row(row)


def list_jobs(status: str | None = None, limit: int = 200) -> list[Job]:
    """Newest first, after reconciling the registry with the live processes."""
    refresh()
    sql, args = "SELECT * FROM jobs", []
    if status:
        sql, args = sql + " WHERE status = ?", [status]
    with _db() as conn:
        rows = conn.execute(sql + " ORDER BY created DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
    return [_job_from_row(r) for r in rows]


def max_running() -> int:
    """How many jobs may run at once: $NESY_MAX_JOBS, default 1 (CPU machines have few cores)."""
    return max(1, int(os.environ.get("NESY_MAX_JOBS", "1")))


# --------------------------------------------------------------------------------- submit / start


def _new_id(kind: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in kind.lower()).strip("-") or "job"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"


def submit(argv: list[str], kind: str, *, name: str | None = None, resumed_from: str | None = None) -> Job:
    """Queue `nesy <argv>` as a background job and start it if a slot is free."""
    if not argv:
        raise ValueError("empty command")
    job_id = _new_id(kind)
    job = Job(
        id=job_id,
        kind=kind,
        name=name or " ".join(argv[:2]),
        argv=list(argv),
        status="queued",
        cwd=os.getcwd(),
        created=time.time(),
        resumed_from=resumed_from,
    )
    job.dir.mkdir(parents=True, exist_ok=True)
    config = {
        "id": job.id,
        "kind": kind,
        "name": job.name,
        "argv": job.argv,
        "cwd": job.cwd,
        "command": job.command_line(),
        "created": job.created,
        "resumed_from": resumed_from,
    }
    (job.dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    with _db() as conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, name, argv, status, cwd, created, resumed_from) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            (job.id, kind, job.name, json.dumps(job.argv), job.cwd, job.created, resumed_from),
        )
    refresh()
    return get(job_id, refresh_first=False)


def _claim_queued() -> list[str]:
    """Atomically move as many queued jobs to running as there are free slots (oldest first)."""
    conn = _db()
    try:
        conn.execute("BEGIN IMMEDIATE")  # two app sessions refreshing at once must not double-start
        running = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
        free = max_running() - running
        ids = (
            []
            if free <= 0
            else [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT ?", (free,)
                )
            ]
        )
        now = time.time()
        for job_id in ids:
            conn.execute("UPDATE jobs SET status = 'running', started = ? WHERE id = ?", (now, job_id))
        conn.execute("COMMIT")
        return ids
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _start_runner(job_id: str) -> None:
    job_dir = subdir("jobs", job_id)
    with open(job_dir / "log.txt", "ab") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "distill.jobs", "run-runner", job_id],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NESY_HOME": str(home())},
            start_new_session=True,
        )
    _set(job_id, runner_pid=runner.pid, runner_created=_create_time(runner.pid))
    # Reap the runner when it exits so a long-lived launcher (the app) never collects zombies.
    threading.Thread(target=runner.wait, daemon=True).start()


# ---------------------------------------------------------------------------- liveness / refresh


def _create_time(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


def _alive(pid: int | None, created: float | None) -> bool:
    """Is this pid still the process we started (not gone, not a zombie, not a reused pid)?"""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return created is None or abs(proc.create_time() - created) < 1.0
    except psutil.Error:
        return False


def _kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        for p in [*proc.children(recursive=True), proc]:
            p.kill()
    except psutil.Error:
        pass


def refresh() -> None:
    """Reconcile the registry with reality, then start queued jobs if slots are free.

    A job marked running whose runner and command are both gone (killed, machine restarted) is
    marked failed with the reason; an exit code the runner wrote to disk but not to the registry
    is applied; an overdue cancel is escalated to SIGKILL.
    """
    with _db() as conn:
        rows = conn.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
    for row in rows:
        _reconcile(dict(row))
    for job_id in _claim_queued():
        try:
            _start_runner(job_id)
        except OSError as e:
            _finish(job_id, "failed", None, f"could not start: {e}")


def _reconcile(row: dict) -> None:
    runner_alive = _alive(row["runner_pid"], row["runner_created"])
    command_alive = _alive(row["pid"], row["pid_created"])
    if (
        row["cancel_requested"]
        and command_alive
        and time.time() - row["cancel_requested"] > (row["grace"] or DEFAULT_GRACE_S)
    ):
        _kill_tree(row["pid"])
    if runner_alive or command_alive:
        return
    if row["runner_pid"] is None and time.time() - (row["started"] or 0) < START_GRACE_S:
        return  # just claimed; its runner is being started
    code = _read_exit_code(row["id"])
    if code is None:  # the runner was killed, but the command may have finished on its own
        code = _read_exit_code(row["id"], "command_exit")
    if code is not None:
        status, reason = outcome(row["id"], json.loads(row["argv"]), code, bool(row["cancel_requested"]))
        _finish(row["id"], status, code, reason)
    else:
        _finish(
            row["id"],
            "failed",
            None,
            f"the job's processes disappeared without an exit code (runner pid {row['runner_pid']}, "
            f"command pid {row['pid']}): killed, or the machine restarted",
        )


def _read_exit_code(job_id: str, name: str = "exit_code") -> int | None:
    """The code the runner recorded, or (name="command_exit") the one the command wrote itself."""
    path = home() / "jobs" / job_id / name
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _classify(code: int, cancel_requested: bool) -> tuple[str, str | None]:
    if code == 0:
        return "succeeded", None
    if code == STOPPED_EXIT_CODE:
        return "cancelled", "stopped cleanly on request"
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
        if cancel_requested:
            return "cancelled", f"stopped by {sig} after a cancel request"
        return "failed", f"killed by signal {sig}"
    return "failed", f"exit code {code} (see the log)"


def outcome(job_id: str, argv: list[str], code: int, cancel_requested: bool) -> tuple[str, str | None]:
    """(status, reason) of a finished command: its exit code, the log's error line when it failed,
    and "failed" for a command that exited 0 but produced nothing (see PRODUCED)."""
    status, reason = _classify(code, cancel_requested)
    if status == "failed" and code > 0 and (line := failure_line(job_id)):
        reason = f"exit code {code}: {line}"
    elif status == "succeeded" and (nothing := produced_nothing(job_id, argv)):
        status, reason = "failed", nothing
    return status, reason


def failure_line(job_id: str) -> str | None:
    """The one line that says why a command failed: its last `error: …` line, else the last line
    of a Python traceback."""
    lines = _tail_lines(home() / "jobs" / job_id / "log.txt", 64 * 1024)
    for line in reversed(lines):  # a progress bar may share the line: "…| 1/5 [00:00]error: …"
        if m := re.search(r"(?:^|[^\w])error: (.+)$", line):
            return m.group(1).strip()
    if any(line.startswith("Traceback") for line in lines):
        return next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), None)
    return None


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _no_rationales(job_id: str, argv: list[str]) -> str | None:
    kept = [
        tuple(map(int, m.groups()))
        for line in _tail_lines(home() / "jobs" / job_id / "log.txt", 64 * 1024)
        if (m := re.search(r"kept (\d+) verified of (\d+)", line))
    ]
    if kept and not sum(k for k, _ in kept):
        return (
            f"produced nothing: kept 0 of {sum(n for _, n in kept)} rationales (none verified), "
            "so there is nothing to train on"
        )
    return None


def _no_entries(job_id: str, argv: list[str]) -> str | None:
    for line in _tail_lines(home() / "jobs" / job_id / "log.txt", 64 * 1024):
        m = re.match(r"(\d+) entries \(\w+\) from (\d+) cases.*kept curated (\d+)", line)
        if m and m.group(1) == "0" and m.group(3) == "0":
            return f"produced nothing: no KB entries from {m.group(2)} cases (see the log for malformed replies)"
    return None


def _no_adapter(job_id: str, argv: list[str]) -> str | None:
    name = _flag_value(argv, "--output")
    if name and "/" not in name and not (home() / "adapters" / name / "adapter_config.json").exists():
        return f"produced nothing: no adapter was written to adapters/{name}"
    return None


# What a successful command must leave behind, by argv prefix; a check returns why it did not.
PRODUCED = {("teach", "rationales"): _no_rationales, ("teach", "knowledge"): _no_entries, ("train",): _no_adapter}


def produced_nothing(job_id: str, argv: list[str]) -> str | None:
    for prefix, check in PRODUCED.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return check(job_id, argv)
    return None


def _finish(job_id: str, status: str, code: int | None, reason: str | None) -> None:
    with _db() as conn:  # only a job still marked active is finished: first writer wins
        conn.execute(
            "UPDATE jobs SET status = ?, exit_code = ?, reason = ?, finished = ? "
            "WHERE id = ? AND status IN ('queued', 'running')",
            (status, code, reason, time.time(), job_id),
        )


# ------------------------------------------------------------------------------------ the runner


def run_runner(job_id: str) -> int:
    """Run one job's command, wait for it, record its exit code; then start the next queued job."""
    job = get(job_id, refresh_first=False)
    _set(job_id, runner_pid=os.getpid(), runner_created=_create_time(os.getpid()))
    log = open(job.dir / "log.txt", "ab", buffering=0)
    log.write(f"$ {job.command_line()}\n".encode())
    env = {**os.environ, "NESY_HOME": str(home()), "NESY_JOB_DIR": str(job.dir), "PYTHONUNBUFFERED": "1"}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "distill.cli", *job.argv],
            cwd=job.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except OSError as e:  # e.g. the folder it was submitted from is gone
        log.write(f"error: could not start the command: {e}\n".encode())
        _finish(job_id, "failed", None, f"could not start: {e}")
        refresh()
        return 1
    _set(job_id, pid=child.pid, pid_created=_create_time(child.pid))

    def forward_stop(signum, frame):  # noqa: ARG001 - `kill <runner>` means cancel the job
        if not get(job_id, refresh_first=False).cancel_requested:
            _set(job_id, cancel_requested=time.time())
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward_stop)
    signal.signal(signal.SIGINT, forward_stop)
    if get(job_id, refresh_first=False).cancel_requested:  # cancelled while we were starting it
        child.send_signal(signal.SIGTERM)
    code = _wait_escalating(job_id, child)
    (job.dir / "exit_code").write_text(str(code))
    cancel_requested = bool(get(job_id, refresh_first=False).cancel_requested)
    log.flush()
    status, reason = outcome(job_id, job.argv, code, cancel_requested)
    log.write(f"[job {status}: exit code {code}{' — ' + reason if reason else ''}]\n".encode())
    log.close()
    _finish(job_id, status, code, reason)
    refresh()
    return 0


def _wait_escalating(job_id: str, child: subprocess.Popen) -> int:
    """Wait for the command; once a cancel is older than its grace period, kill it and its children."""
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            job = get(job_id, refresh_first=False)
            grace = job.extra.get("grace") or DEFAULT_GRACE_S
            if job.cancel_requested and time.time() - job.cancel_requested > grace:
                _kill_tree(child.pid)


# ------------------------------------------------------------------------------ cancel / resume


def cancel(job_id: str, *, grace: float = DEFAULT_GRACE_S) -> Job:
    """Ask a job to stop: a queued job is dropped; a running one gets SIGTERM, SIGKILL after `grace` s."""
    job = get(job_id)
    if job.status == "queued":
        _finish(job_id, "cancelled", None, "cancelled before it started")
        return get(job_id)
    if job.status != "running":
        return job
    _set(job_id, cancel_requested=job.cancel_requested or time.time(), grace=grace)
    if _alive(job.pid, job.extra.get("pid_created")):
        _signal(job.pid, signal.SIGTERM)
    elif _alive(job.runner_pid, job.extra.get("runner_created")):
        _signal(job.runner_pid, signal.SIGTERM)  # command not started yet; the runner forwards
    return get(job_id)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def resume_argv(argv: list[str]) -> list[str]:
    """The command that continues `argv`: the per-command rule from RESUME_FLAG."""
    prefixes = [p for p in RESUME_FLAG if tuple(argv[: len(p)]) == p]
    flag = RESUME_FLAG[max(prefixes, key=len)] if prefixes else None
    if flag and flag not in argv:
        return [*argv, flag]
    return list(argv)


def why_not_resume(job: Job) -> str | None:
    """None when resuming can help this job; else why not, in words."""
    if job.active:
        return f"it is {job.status}"
    if job.status == "succeeded":
        return "it succeeded"
    if not any(tuple(job.argv[: len(p)]) == p for p in RESUME_FLAG):
        return "this command has nothing to continue from (run it again instead)"
    if job.reason and job.reason.startswith("produced nothing"):
        return "it ran to the end and produced nothing: the same command would do the same"
    if job.status == "failed" and job.exit_code == 2:
        return "the command refused its input: fix the command, resuming repeats the error"
    return None


def resume(job_id: str) -> Job:
    """Start a stopped or failed job again as a new job that continues from its checkpoint/cache."""
    job = get(job_id)
    if job.active:
        raise ValueError(f"job {job_id} is {job.status}; only a finished job can be resumed")
    if why := why_not_resume(job):
        raise ValueError(f"job {job_id} cannot be resumed: {why}")
    return submit(resume_argv(job.argv), job.kind, name=job.name, resumed_from=job.id)


def wait(job_id: str, timeout: float | None = None, poll: float = 0.2) -> Job:
    """Block until the job is no longer queued or running (or the timeout passes); return it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get(job_id)
        if not job.active or (deadline is not None and time.monotonic() > deadline):
            return job
        time.sleep(poll)


# --------------------------------------------------------------------------- progress and logs


def metrics(job_id: str) -> list[dict]:
    """Every metrics line the job's Progress wrote (for curves)."""
    return read_jsonl(home() / "jobs" / job_id / "metrics.jsonl")


def chain(job_id: str) -> list[Job]:
    """The job and the jobs it resumed, oldest first."""
    out, seen = [], set()
    current: str | None = job_id
    while current and current not in seen:
        seen.add(current)
        try:
            job = get(current, refresh_first=False)
        except KeyError:
            break
        out.append(job)
        current = job.resumed_from
    return out[::-1]


def chain_metrics(job_id: str) -> list[dict]:
    """Metrics of a job and of the jobs it resumed, as one curve: each earlier job's lines up to
    where the next one continued (a resumed job starts after the last checkpoint, so steps the
    earlier job ran past it are dropped), each line tagged with its job id."""
    rows: list[dict] = []
    for job in chain(job_id):
        mine = metrics(job.id)
        if mine and rows:
            first = mine[0].get("step", 0)
            rows = [r for r in rows if r.get("step", 0) < first]
        rows += [{**r, "job": job.id} for r in mine]
    return rows


def progress(job_id: str) -> dict | None:
    """The latest metrics line (step, total, eta, loss, stage, ...) or None before the first one."""
    for line in reversed(_tail_lines(home() / "jobs" / job_id / "metrics.jsonl", 8192)):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line
    return None


def log_tail(job_id: str, n: int = 50) -> str:
    """The last n lines of the job's log, with tqdm's carriage-return redraws collapsed."""
    lines = _tail_lines(home() / "jobs" / job_id / "log.txt", 64 * 1024)
    return "\n".join(lines[-n:])


def _tail_lines(path: Path, max_bytes: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = data.split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is cut
    # a tqdm bar rewrites itself with \r; keep what is on screen last
    return [_last_redraw(line) for line in lines if line.strip()]


def _last_redraw(line: str) -> str:
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


# ----------------------------------------------------------------------------------------- CLI

cli = typer.Typer(help="List, show, cancel and resume background jobs.", no_args_is_help=True)


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _get_or_exit(job_id: str) -> Job:
    try:
        return get(job_id)
    except KeyError:
        typer.echo(f"error: no job {job_id!r} (see `nesy jobs list`)", err=True)
        raise typer.Exit(2) from None


def _progress_text(job_id: str) -> str:
    p = progress(job_id)
    if not p:
        return "-"
    eta = f" eta {p['eta']:.0f}s" if p.get("eta") is not None else ""
    return f"{p.get('step')}/{p.get('total')}{eta}"


@cli.command("list")
def list_cmd(
    status: str = typer.Option(None, help="Only jobs with this status."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Every job, newest first."""
    if status and status not in STATUSES:
        raise typer.BadParameter(f"status must be one of {', '.join(STATUSES)}")
    for job in list_jobs(status):
        if as_json:
            typer.echo(json.dumps({**job.__dict__, "command": job.command_line(), "progress": progress(job.id)}))
        else:
            typer.echo(f"{job.id:<40} {job.status:<10} {_progress_text(job.id):<18} {job.command_line()}")


@cli.command("show")
def show_cmd(job_id: str, log: int = typer.Option(20, help="Lines of log to show.")) -> None:
    """One job: status, command, progress, times and the end of its log."""
    job = _get_or_exit(job_id)
    typer.echo(
        f"id        {job.id}\nkind      {job.kind}\nstatus    {job.status}"
        + (f" ({job.reason})" if job.reason else "")
        + f"\ncommand   {job.command_line()}\nprogress  {_progress_text(job.id)}"
        f"\ncreated   {_fmt_time(job.created)}\nstarted   {_fmt_time(job.started)}"
        f"\nfinished  {_fmt_time(job.finished)}\nexit code {job.exit_code}\nfolder    {job.dir}"
    )
    if log:
        typer.echo("--- log ---\n" + log_tail(job.id, log))


@cli.command("cancel")
def cancel_cmd(
    job_id: str,
    grace: float = typer.Option(DEFAULT_GRACE_S, help="Seconds before SIGKILL."),
    wait_: bool = typer.Option(False, "--wait", help="Wait until it has stopped."),
) -> None:
    """Stop a job cleanly at its next step (SIGTERM; SIGKILL after the grace period)."""
    _get_or_exit(job_id)
    job = cancel(job_id, grace=grace)
    if wait_:
        job = wait(job_id)
    typer.echo(f"{job.id} {job.status}")


@cli.command("resume")
def resume_cmd(job_id: str) -> None:
    """Run a stopped or failed job again from its checkpoint or cache (a new job)."""
    _get_or_exit(job_id)
    try:
        job = resume(job_id)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{job.id} {job.status}  {job.command_line()}")


@cli.command("submit")
def submit_cmd(
    argv: list[str] = typer.Argument(..., help="The nesy command, after `--`."),
    kind: str = typer.Option(None, help="Job kind (default: the subcommand)."),
    name: str = typer.Option(None, help="A name to recognise it by."),
    wait_: bool = typer.Option(False, "--wait", help="Wait and exit with its exit code."),
) -> None:
    """Run any nesy command as a background job: `nesy jobs submit -- teach rationales ...`."""
    job = submit(argv, kind or argv[0], name=name)
    typer.echo(f"{job.id} {job.status}")
    if wait_:
        job = wait(job.id)
        typer.echo(f"{job.id} {job.status}")
        raise typer.Exit(job.exit_code if job.exit_code is not None else 1)


@cli.command("selftest")
def selftest_cmd(
    steps: int = typer.Option(20, min=1),
    seconds_per_step: float = typer.Option(0.1, min=0),
    checkpoint: Path = typer.Option(None, help="File holding the last finished step."),
    resume_: bool = typer.Option(False, "--resume", help="Continue from --checkpoint."),
    fail_at: int = typer.Option(None, help="Exit with code 1 at this step."),
) -> None:
    """A tiny counting job that checks the job machinery: progress, loss curve, cancel, resume."""
    start = int(checkpoint.read_text()) if resume_ and checkpoint and checkpoint.exists() else 0
    with Progress(steps, desc="selftest", initial=start) as bar:
        try:
            for step in range(start + 1, steps + 1):
                bar.check_stop()
                time.sleep(seconds_per_step)
                if step == fail_at:
                    typer.echo(f"error: failing at step {step} as asked", err=True)
                    raise typer.Exit(1)
                bar.update(1, loss=round(2.0 / step, 4))
                if checkpoint:
                    checkpoint.write_text(str(step))
        except StopRequested:
            typer.echo(f"stopped after step {bar.step}")
            raise typer.Exit(STOPPED_EXIT_CODE) from None
    typer.echo(f"done: {steps} steps")


@cli.command("run-runner", hidden=True)
def run_runner_cmd(job_id: str) -> None:
    """Internal: the process that runs one job and records its exit code."""
    raise typer.Exit(run_runner(job_id))


if __name__ == "__main__":
    cli()
