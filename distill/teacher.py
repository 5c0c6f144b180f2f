"""Teacher backends: an OpenAI-compatible chat client, a persistent cache, and a local llama.cpp server.

- `TeacherClient(config, cache)` speaks the chat-completions protocol with the `openai` client
  (its own retries off, so ours are the ones that run and are tested): bounded concurrency,
  exponential backoff with jitter on 429 / 5xx / timeouts / connection errors (a `Retry-After`
  header wins when present), a per-request timeout, and usage accounting. The same code drives
  OpenAI, vLLM, Ollama, llama.cpp, LM Studio or TGI through `base_url` + `model`. The API key is
  read from the environment variable named in the config and never written anywhere.
- `TeacherCache` is a SQLite file in $NESY_HOME/cache. A request's key is
  sha256(backend, model, messages, sampling params, sample index), so a re-run of a stopped job
  answers finished items from the cache and makes no repeated teacher call. Every real call is
  also logged (key, time) so a test or a user can prove it.
- `LocalTeacherServer` runs a real llama.cpp server (the prebuilt `xllamacpp` wheel) in a child
  process on 127.0.0.1 and a free port, waits for /health, and stops it on exit.
  `local_teacher(gguf)` is the shared variant for jobs: the first job starts a detached server
  and records {pid, port, gguf} in $NESY_HOME/teacher/server.json; later jobs find it there,
  check that the process is alive, serves the same GGUF and answers /health, and reuse it.
  `stop_local_teacher()` (`nesy teach server-stop`) ends it.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import openai

from kb.workspace import subdir

Messages = list[dict]


@dataclass
class TeacherConfig:
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "local-teacher"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    max_retries: int = 5
    timeout: float = 600.0          # seconds per request (a busy CPU server can be slow)
    temperature: float = 0.0
    max_tokens: int = 512
    backoff_base: float = 0.5       # seconds; attempt k waits base * 2**k (+ jitter), capped
    backoff_max: float = 30.0
    backend: str | None = None      # cache namespace; defaults to base_url (local servers set a stable one)

    @property
    def cache_backend(self) -> str:
        return self.backend or self.base_url


@dataclass
class Usage:
    requests: int = 0               # real calls that succeeded
    cached: int = 0                 # answered from the cache
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    text: str
    usage: dict = field(default_factory=dict)   # prompt_tokens, completion_tokens
    finish_reason: str | None = None
    model: str | None = None
    cached: bool = False
    key: str | None = None


class TeacherError(RuntimeError):
    """A teacher call failed after all retries (or with a non-retryable error)."""


# ---------------------------------------------------------------- cache

class TeacherCache:
    """request key -> completion, plus a log of every real call; safe across threads and processes."""

    def __init__(self, path: Path | None = None):
        self.path = path or subdir("cache") / "teacher.sqlite"
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, request TEXT,"
                       " text TEXT, usage TEXT, finish_reason TEXT, model TEXT, created REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, key TEXT, at REAL)")

    def _db(self) -> sqlite3.Connection:
        if getattr(self._local, "db", None) is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return self._local.db

    @staticmethod
    def key(backend: str, model: str, messages: Messages, sampling: dict) -> str:
        blob = json.dumps([backend, model, messages, sampling], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Completion | None:
        row = self._db().execute("SELECT text, usage, finish_reason, model FROM completions WHERE key=?",
                                 (key,)).fetchone()
        if row is None:
            return None
        return Completion(row[0], json.loads(row[1]), row[2], row[3], cached=True, key=key)

    def put(self, key: str, request: dict, completion: Completion) -> None:
        self._db().execute("INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?,?)",
                           (key, json.dumps(request, ensure_ascii=False), completion.text,
                            json.dumps(completion.usage), completion.finish_reason, completion.model,
                            time.time()))

    def log_call(self, key: str) -> None:
        self._db().execute("INSERT INTO calls (key, at) VALUES (?, ?)", (key, time.time()))

    def stats(self) -> dict:
        db = self._db()
        calls, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM calls").fetchone()
        entries = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        return {"entries": entries, "calls": calls, "repeated_calls": calls - distinct}


# ---------------------------------------------------------------- client

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
             openai.APIConnectionError)


class TeacherClient:
    def __init__(self, config: TeacherConfig, cache: TeacherCache | None = None):
        self.config = config
        self.cache = cache
        self.usage = Usage()
        self._lock = threading.Lock()
        api_key = os.environ.get(config.api_key_env) or "no-key"  # local servers need none
        self._client = openai.OpenAI(base_url=config.base_url, api_key=api_key, max_retries=0,
                                     timeout=config.timeout)

    def sampling(self, **overrides) -> dict:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def complete(self, messages: Messages, sample: int = 0, **sampling) -> Completion:
        """One chat completion; `sample` (0..n-1) tells apart repeated samples of one prompt."""
        params = self.sampling(**sampling)
        if sample and "seed" not in params:
            params["seed"] = sample
        key = TeacherCache.key(self.config.cache_backend, self.config.model, messages,
                               {**params, "sample": sample})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self._count(cached=1)
            return hit
        completion = self._call_with_retries(messages, params)
        completion.key = key
        if self.cache is not None:
            self.cache.log_call(key)
            self.cache.put(key, {"model": self.config.model, "messages": messages, **params}, completion)
        return completion

    def complete_many(self, requests: list[Messages], on_done=None, samples: list[int] | None = None,
                      **sampling) -> list[Completion | Exception]:
        """Complete many prompts with at most `concurrency` in flight; results keep input order.

        A failed item is returned as its exception (the others still finish); `on_done(i, result)`
        runs in the calling thread as each one completes, for progress and incremental writes.
        """
        samples = samples or [0] * len(requests)
        results: list[Completion | Exception | None] = [None] * len(requests)

        def run(i: int):
            try:
                return i, self.complete(requests[i], sample=samples[i], **sampling)
            except Exception as e:  # noqa: BLE001 - reported per item
                return i, e

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            futures = [pool.submit(run, i) for i in range(len(requests))]
            try:
                for future in as_completed(futures):
                    i, result = future.result()
                    results[i] = result
                    if on_done is not None:
                        on_done(i, result)
            except BaseException:
                # A stop request (or any error) in on_done: drop queued prompts; the calls in
                # flight still finish and land in the cache, so nothing paid for is lost.
                for future in futures:
                    future.cancel()
                raise
        return results

    def _call_with_retries(self, messages: Messages, params: dict) -> Completion:
        for attempt in range(self.config.max_retries + 1):
            try:
                response = self._client.chat.completions.create(
                    model=self.config.model, messages=messages, **params)
            except RETRYABLE as e:
                if attempt == self.config.max_retries:
                    self._count(failures=1)
                    raise TeacherError(f"teacher failed after {attempt + 1} attempts: {e}") from e
                self._count(retries=1)
                time.sleep(self._backoff(attempt, e))
                continue
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                self._count(failures=1)
                raise TeacherError(f"teacher refused the request ({e.status_code}): {e.message}") from e
            return self._completion(response)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        if retry_after:
            try:
                return min(float(retry_after), self.config.backoff_max)
            except ValueError:
                pass
        delay = self.config.backoff_base * 2 ** attempt
        return min(delay * (0.5 + random.random() / 2), self.config.backoff_max)

    def _completion(self, response) -> Completion:
        choice = response.choices[0]
        usage = {"prompt_tokens": getattr(response.usage, "prompt_tokens", 0) or 0,
                 "completion_tokens": getattr(response.usage, "completion_tokens", 0) or 0}
        self._count(requests=1, **usage)
        return Completion(choice.message.content or "", usage, choice.finish_reason, response.model)

    def _count(self, **deltas) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.usage, name, getattr(self.usage, name) + delta)


# ---------------------------------------------------------------- local llama.cpp server

@dataclass
class ServerInfo:
    base_url: str
    model: str       # the name the server answers to (the GGUF file stem)
    pid: int
    port: int
    gguf: str

    def config(self, **overrides) -> TeacherConfig:
        return TeacherConfig(base_url=self.base_url, model=self.model, api_key_env="NESY_LOCAL_KEY",
                             backend=f"llama.cpp:{Path(self.gguf).name}", **overrides)


def default_threads() -> int:
    """Half the cores. llama.cpp threads busy-wait, so on an oversubscribed machine more threads
    collapse throughput (measured here on 2 shared cores: 1 thread 0.48 items/s, 2 threads 0.11).
    $NESY_TEACHER_THREADS overrides it on a machine where the teacher has the cores to itself."""
    return int(os.environ.get("NESY_TEACHER_THREADS") or max(1, (os.cpu_count() or 2) // 2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    root = base_url.rsplit("/v1", 1)[0]
    try:
        with urllib.request.urlopen(f"{root}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _default_gguf() -> Path:
    from distill.models import teacher_gguf_path

    return teacher_gguf_path()


def _spawn_server(gguf: Path, port: int, n_parallel: int, n_ctx: int, threads: int,
                  detached: bool) -> subprocess.Popen:
    log = open(subdir("teacher") / f"server-{port}.log", "ab")  # noqa: SIM115 - child owns it
    command = [sys.executable, "-m", "distill.teacher", "serve", "--gguf", str(gguf), "--port", str(port),
               "--n-parallel", str(n_parallel), "--n-ctx", str(n_ctx), "--threads", str(threads)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=detached)


def _wait_healthy(proc: subprocess.Popen, base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TeacherError(f"the local teacher server exited with {proc.returncode} "
                               f"(log: {subdir('teacher')})")
        if healthy(base_url, timeout=1.0):
            return
        time.sleep(0.2)
    proc.kill()
    raise TeacherError(f"the local teacher server did not become healthy in {timeout:.0f} s")


def _stop(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if finished:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class LocalTeacherServer:
    """A real llama.cpp server for one `with` block: started, health-checked, stopped."""

    def __init__(self, gguf: str | Path | None = None, port: int | None = None, n_parallel: int = 4,
                 n_ctx: int = 4096, threads: int | None = None, startup_timeout: float = 180.0):
        self.gguf = Path(gguf) if gguf else _default_gguf()
        self.port = port or free_port()
        self.n_parallel, self.n_ctx, self.threads = n_parallel, n_ctx, threads or default_threads()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def info(self) -> ServerInfo:
        return ServerInfo(f"http://127.0.0.1:{self.port}/v1", self.gguf.stem, self.proc.pid,
                          self.port, str(self.gguf))

    def start(self) -> ServerInfo:
        self.proc = _spawn_server(self.gguf, self.port, self.n_parallel, self.n_ctx, self.threads,
                                  detached=False)
        _wait_healthy(self.proc, self.info.base_url, self.startup_timeout)
        return self.info

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> ServerInfo:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def _state_path() -> Path:
    return subdir("teacher") / "server.json"


def local_teacher(gguf: str | Path | None = None, n_parallel: int = 4, n_ctx: int = 4096,
                  threads: int | None = None) -> ServerInfo:
    """The shared local teacher: reuse the recorded server if it is alive and serves `gguf`,
    else start a detached one and record it. A file lock keeps two jobs from starting two."""
    gguf = str(Path(gguf) if gguf else _default_gguf())
    with open(subdir("teacher") / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = server_state()
        if state and state["gguf"] == gguf and _alive(state["pid"]) and healthy(state["base_url"]):
            return ServerInfo(**state)
        if state and _alive(state["pid"]):
            _stop(state["pid"])  # a different model, or a hung server
        port = free_port()
        proc = _spawn_server(Path(gguf), port, n_parallel, n_ctx, threads or default_threads(),
                             detached=True)
        info = ServerInfo(f"http://127.0.0.1:{port}/v1", Path(gguf).stem, proc.pid, port, gguf)
        _wait_healthy(proc, info.base_url, timeout=180.0)
        _state_path().write_text(json.dumps(info.__dict__), encoding="utf-8")
        return info


def server_state() -> dict | None:
    try:
        return json.loads(_state_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stop_local_teacher() -> bool:
    """Stop the shared local teacher, if one is recorded; True when one was running."""
    state = server_state()
    _state_path().unlink(missing_ok=True)
    if state and _alive(state["pid"]):
        _stop(state["pid"])
        return True
    return False


def serve(gguf: str, port: int, n_parallel: int, n_ctx: int, threads: int) -> None:
    """Run xllamacpp.Server in this process until SIGTERM/SIGINT (the child of the classes above)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.model_alias = {Path(gguf).stem}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = n_parallel
    params.n_ctx = n_ctx * n_parallel  # llama.cpp splits the context across slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.endpoint_metrics = True
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = xllamacpp.Server(params)
    done.wait()
    del server  # the destructor stops the main loop and frees the model


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.teacher")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run a llama.cpp server on 127.0.0.1")
    serve_parser.add_argument("--gguf", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--n-parallel", type=int, default=4)
    serve_parser.add_argument("--n-ctx", type=int, default=4096)
    serve_parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args(argv)
    serve(args.gguf, args.port, args.n_parallel, args.n_ctx, args.threads)


if __name__ == "__main__":
    _main()
