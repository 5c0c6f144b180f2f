"""Teacher backends: an OpenAI-compatible chat client, a persistent cache, and a local llama.cpp server.

- `TeacherClient(config, cache)` speaks the chat-completions protocol with the `openai` client
  (its own retries off, so ours are the ones that run and are tested): bounded concurrency,
  exponential backoff with jitter on 429 / 5xx / timeouts / connection errors (a `Retry-After`
  header wins when present), usage accounting, and `timeout` as the *total* wall-clock deadline
  of one request (connect + send + read). The timeouts of httpx2 (the httpx fork openai uses)
  are per phase, so a server that trickles one byte a second never trips them:
  `DeadlineTransport` bounds every socket operation by what is left of the request's deadline.
  A stop request (SIGTERM/SIGINT, see distill/progress.py) lets calls in flight finish for
  STOP_GRACE seconds (so a paid answer still lands in the cache), then abandons them; no new
  call starts. The same code drives OpenAI, vLLM, Ollama, llama.cpp, LM Studio or TGI through
  `base_url` + `model`. `request()` gives a prompt's cache key and the exact body a call sends;
  `call_api()` runs any call of the openai client with these retries, deadline and redaction
  (the Batch API's file and batch calls too: distill/batch.py).
- The API key is read from the environment variable named in the config and never written
  anywhere; every text the client hands on (answers, error bodies) has it replaced by
  `[redacted]`. The app may only offer the variables the operator declared:
  `allowed_key_envs()` ($NESY_TEACHER_KEY_ENVS or the Streamlit secret `teacher_key_envs`).
- `TeacherCache` is a SQLite file in $NESY_HOME/cache. A request's key is
  sha256(backend, model, messages, sampling params, sample index), so a re-run of a stopped job
  answers finished items from the cache and makes no repeated teacher call. Only usable answers
  are cached (an empty answer is asked again next time). Every real call is also logged (key,
  time) so a test or a user can prove it. Lone surrogates (not encodable as UTF-8) in anything
  written are replaced by U+FFFD, so one odd answer cannot make a write fail. `export` /
  `import_file` (`nesy teach cache export|import FILE`) carry the answers to another machine or
  workspace as JSONL, so a long teacher job continues there without repeating a call.
- Throughput: llama.cpp returns its own `timings` with every answer (prompt tokens computed and
  reused from the cache, prompt and decode milliseconds, draft tokens proposed and accepted);
  `Usage` sums them and `Usage.timings_line()` says where the time went. `prefix_order(requests)`
  sends prompts that share their instruction and demonstrations one group after the other, so a
  prompt cache (llama.cpp's per slot, vLLM's prefix cache) computes that prefix once per group.
- The local llama.cpp teacher (`local_teacher`, `LocalTeacherServer`, `ServerOptions`) is
  distill/llama_server.py; `make_client` starts or reuses it for `--teacher local`.
- What every teacher job shares (distill/rationales.py, distill/knowledge.py): `make_client`
  turns a `--teacher` / `--model` choice into a client (a wrong choice is a TeacherChoiceError,
  a NesyError, before any call), `run_requests` sends a job's prompts with progress and a
  cooperative stop (a prompt `Deferred` to a batch being prepared is left unanswered),
  `guarded` makes one answer that cannot be processed one failed sample, and `append_line`
  writes one line of a job's raw JSONL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpcore2
import httpx2
import openai
from pydantic import BaseModel, ConfigDict, Field

from distill.jsonlines import iter_jsonl
from distill.llama_server import ServerError, ServerInfo, ServerOptions, default_draft, local_teacher
from distill.progress import Progress, stop_requested, stop_requested_at
from kb.errors import NesyError
from kb.workspace import subdir

Messages = list[dict]


@dataclass
class TeacherConfig:
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "local-teacher"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    max_retries: int = 5
    timeout: float = 600.0  # total seconds of one request attempt (a busy CPU server is slow)
    temperature: float = 0.0
    max_tokens: int = 512
    backoff_base: float = 0.5  # seconds; attempt k waits base * 2**k (+ jitter), capped
    backoff_max: float = 30.0
    backend: str | None = None  # cache namespace; defaults to base_url (local servers set a stable one)

    @property
    def cache_backend(self) -> str:
        return self.backend or self.base_url

    @classmethod
    def for_server(cls, info: ServerInfo, **overrides) -> TeacherConfig:
        """A config that talks to a local llama.cpp server; its cache namespace is the GGUF's
        name, so answers cached from one server are found again behind another port."""
        return cls(
            base_url=info.base_url,
            model=info.model,
            api_key_env="NESY_LOCAL_KEY",
            backend=f"llama.cpp:{Path(info.gguf).name}",
            **overrides,
        )


@dataclass
class Usage:
    requests: int = 0  # real calls that succeeded
    cached: int = 0  # answered from the cache
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # llama.cpp's own `timings` of the real calls that reported them (other servers send none)
    timed: int = 0  # calls with timings
    prompt_n: int = 0  # prompt tokens actually computed (the rest came from the cache)
    cache_n: int = 0  # prompt tokens reused from the slot's KV cache
    prompt_ms: float = 0.0
    predicted_n: int = 0  # tokens decoded
    predicted_ms: float = 0.0
    draft_n: int = 0  # tokens the draft model proposed
    draft_n_accepted: int = 0  # ... and the teacher accepted

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def timings_line(self) -> str | None:
        """Where the teacher's time went, from the server's own timings (None without any)."""
        if not self.timed:
            return None
        total = self.prompt_ms + self.predicted_ms

        def rate(n, ms):
            return f"{n / ms * 1000:.1f} tok/s" if ms > 0 else "-"

        line = (
            f"teacher time over {self.timed} calls: {total / 1000:.1f} s = prompt "
            f"{self.prompt_ms / 1000:.1f} s ({100 * self.prompt_ms / total if total else 0:.0f} %, "
            f"{self.prompt_n} tokens computed at {rate(self.prompt_n, self.prompt_ms)}, "
            f"{self.cache_n} reused from the cache) + decode {self.predicted_ms / 1000:.1f} s "
            f"({self.predicted_n} tokens at {rate(self.predicted_n, self.predicted_ms)})"
        )
        if self.draft_n:
            line += (
                f"; draft accepted {self.draft_n_accepted}/{self.draft_n} "
                f"({100 * self.draft_n_accepted / self.draft_n:.0f} %)"
            )
        return line


@dataclass
class Completion:
    text: str
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens
    finish_reason: str | None = None
    model: str | None = None
    cached: bool = False
    key: str | None = None
    timings: dict = field(default_factory=dict)  # llama.cpp's timings of this call (not cached)


class TeacherError(RuntimeError):
    """A teacher call failed after all retries (or with a non-retryable error)."""


class Deferred(Exception):
    """A request not sent now: it waits in a Batch API batch being prepared (distill/batch.py).
    A job leaves its item unanswered (neither an answer nor a failed call)."""


class TeacherStopped(TeacherError):
    """A stop was requested: the call was not started, or was abandoned after STOP_GRACE."""


SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with lone surrogates (which UTF-8 cannot encode) replaced by U+FFFD."""
    return SURROGATE.sub("\ufffd", text)


# ---------------------------------------------------------------- API key allowlist

KEY_ENVS_VAR = "NESY_TEACHER_KEY_ENVS"
KEY_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def allowed_key_envs(secrets=None, base_url: str | None = None) -> list[str]:
    """The environment variables the operator declared as teacher API keys (what the app may
    offer and send; nothing else is ever listed or sent).

    Declared in $NESY_TEACHER_KEY_ENVS (comma-separated) and/or `teacher_key_envs` in the
    Streamlit secrets (`secrets`: st.secrets or any mapping; a list or a comma-separated string).
    `NAME` allows the variable for any base URL; `NAME@host` or `NAME@host:port` only for base
    URLs on that host, so a visitor cannot send the key to a server of their own. With
    `base_url`, only the names allowed for it. Nothing declared: an empty list.
    """
    entries = os.environ.get(KEY_ENVS_VAR, "").split(",")
    try:
        declared = secrets.get("teacher_key_envs") if secrets is not None else None
    except Exception:  # noqa: BLE001 - st.secrets raises when there is no secrets file at all
        declared = None
    entries += declared.split(",") if isinstance(declared, str) else list(declared or [])
    names = []
    for entry in (str(e).strip() for e in entries):
        name, _, host = entry.partition("@")
        if (
            KEY_ENV_RE.fullmatch(name)
            and name not in names
            and (base_url is None or not host or _same_host(base_url, host))
        ):
            names.append(name)
    return names


def _same_host(base_url: str, host: str) -> bool:
    """`host` is 'name' (any port) or 'name:port'; compared with the URL's host (and port)."""
    try:
        parts = urlsplit(base_url)
        netloc = f"{parts.hostname}:{parts.port}" if ":" in host else f"{parts.hostname}"
    except ValueError:  # a malformed port
        return False
    return parts.hostname is not None and netloc.lower() == host.lower()


# ---------------------------------------------------------------- total deadline of one request

STOP_GRACE = 3.0  # s a call in flight may still take after a stop request (then abandoned)
WAIT_SLICE = 0.25  # s between looks at the deadline and the stop flag while a read blocks

_deadline = threading.local()  # .at: monotonic end of the current thread's request attempt


def _seconds_left() -> float | None:
    """What is left of this thread's request: its deadline, cut to STOP_GRACE after a stop."""
    ends = [getattr(_deadline, "at", None)]
    if (stopped := stop_requested_at()) is not None:
        ends.append(stopped + STOP_GRACE)
    ends = [end for end in ends if end is not None]
    return min(ends) - time.monotonic() if ends else None


def _bounded(timeout: float | None, error: type[Exception], cap: float | None = None) -> float | None:
    """The timeout of one socket operation: the phase `timeout`, never past the deadline."""
    limits = [t for t in (timeout, _seconds_left(), cap) if t is not None]
    if not limits:
        return None
    if min(limits) <= 0:
        raise error("stopped" if stop_requested() else "the request ran past its total deadline")
    return min(limits)


class _DeadlineStream(httpcore2.NetworkStream):
    """A socket stream whose reads wake every WAIT_SLICE s to check the deadline and stop flag."""

    def __init__(self, stream: httpcore2.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        phase_end = None if timeout is None else time.monotonic() + timeout
        while True:
            phase_left = None if phase_end is None else phase_end - time.monotonic()
            step = _bounded(phase_left, httpcore2.ReadTimeout, cap=WAIT_SLICE)
            try:
                return self._stream.read(max_bytes, step)
            except httpcore2.ReadTimeout:
                continue  # the next _bounded raises once the phase or the deadline is spent

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # not sliced: a timed-out sendall may have sent part of the buffer (request bodies are small)
        self._stream.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore2.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore2.ConnectTimeout))
        )

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self, backend: httpcore2.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(
            self._backend.connect_tcp(
                host, port, _bounded(timeout, httpcore2.ConnectTimeout), local_address, socket_options
            )
        )

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(
            self._backend.connect_unix_socket(path, _bounded(timeout, httpcore2.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx2.HTTPTransport):
    """httpx2's own transport, with every socket operation bounded by the request's deadline."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # httpx2 has no public way to pass an httpcore2 network backend; its pool reads this
        # attribute for every new connection (checked by tests/test_teacher.py's trickle test).
        self._pool._network_backend = _DeadlineBackend(self._pool._network_backend)


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (a custom transport makes httpx2 ignore it)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    return None if not proxy or urllib.request.proxy_bypass(parts.hostname or "") else proxy


# ---------------------------------------------------------------- cache


class CacheFileError(NesyError, ValueError):
    """A line of an exported teacher-cache file that cannot be imported."""


class CachedAnswer(BaseModel):
    """One line of an exported teacher cache: a row of the completions table."""

    model_config = ConfigDict(extra="forbid", strict=True)
    key: str = Field(pattern=r"^[0-9a-f]{64}$")  # TeacherCache.key: sha256 of what was asked
    request: str  # the chat-completions body as JSON text
    text: str = Field(min_length=1)  # only usable answers are cached
    usage: str  # JSON text
    finish_reason: str | None
    model: str | None
    created: float


class TeacherCache:
    """request key -> completion, plus a log of every real call; safe across threads and processes."""

    def __init__(self, path: Path | None = None):
        self.path = path or subdir("cache") / "teacher.sqlite"
        self._local = threading.local()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, request TEXT,"
                " text TEXT, usage TEXT, finish_reason TEXT, model TEXT, created REAL)"
            )
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
        # surrogatepass: a prompt with a lone surrogate still gets a key (others: plain UTF-8)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> Completion | None:
        row = (
            self._db()
            .execute("SELECT text, usage, finish_reason, model FROM completions WHERE key=?", (key,))
            .fetchone()
        )
        if row is None:
            return None
        return Completion(row[0], json.loads(row[1]), row[2], row[3], cached=True, key=key)

    def put(self, key: str, request: dict, completion: Completion) -> None:
        row = (
            json.dumps(request, ensure_ascii=False),
            completion.text,
            json.dumps(completion.usage),
            completion.finish_reason,
            completion.model,
        )
        self._db().execute(
            "INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?,?)",
            (key, *(None if v is None else clean_text(v) for v in row), time.time()),
        )

    def log_call(self, key: str) -> None:
        self._db().execute("INSERT INTO calls (key, at) VALUES (?, ?)", (key, time.time()))

    def export(self, path: Path) -> int:
        """Every cached answer as one JSONL line (written to a temp file, then renamed): a file
        another machine's `import_file` takes, so a teacher job continues there without repeating
        a call. Returns the number of answers."""
        columns = list(CachedAnswer.model_fields)
        rows = self._db().execute(f"SELECT {', '.join(columns)} FROM completions ORDER BY created, key").fetchall()
        lines = (json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n" for row in rows)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(path)
        return len(rows)

    def import_file(self, path: Path) -> tuple[int, int]:
        """Add the answers of an exported file: (added, already cached). Every line is checked
        before anything is written; the first bad one is a CacheFileError naming its line and
        field, and the cache is left as it was. Keys are content hashes, so merging is safe."""
        from pydantic import ValidationError

        answers = []
        for number, value in iter_jsonl(path):
            try:
                answers.append(CachedAnswer.model_validate(value))
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(map(str, first["loc"])) or "line"
                raise CacheFileError(f"{path}: line {number}: {where}: {first['msg']}") from None
        db = self._db()
        before = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        with db:  # one transaction: all or nothing
            db.execute("BEGIN")
            db.executemany(
                f"INSERT OR IGNORE INTO completions VALUES ({', '.join('?' * len(CachedAnswer.model_fields))})",
                [tuple(a.model_dump().values()) for a in answers],
            )
        added = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] - before
        return added, len(answers) - added

    def stats(self) -> dict:
        db = self._db()
        calls, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM calls").fetchone()
        entries = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        return {"entries": entries, "calls": calls, "repeated_calls": calls - distinct}


# ---------------------------------------------------------------- client


def _tokens(value) -> int:
    """A token count from the server's usage block (anything else counts as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


TIMING_FIELDS = ("prompt_n", "cache_n", "prompt_ms", "predicted_n", "predicted_ms", "draft_n", "draft_n_accepted")


def _timings(extra: dict) -> dict:
    """llama.cpp's `timings` block (a server extension to chat completions) as plain numbers;
    {} when the server sends none or something else."""
    block = extra.get("timings")
    if not isinstance(block, dict):
        return {}
    numbers = {}
    for name in TIMING_FIELDS:
        value = block.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e12:
            numbers[name] = float(value) if name.endswith("_ms") else int(value)
    return numbers if "predicted_ms" in numbers or "prompt_ms" in numbers else {}


def prefix_order(requests: list[Messages]) -> list[int]:
    """The order to send `requests` in so that prompts sharing everything but their last message
    (the system instruction and few-shot turns: per thought type and task) are contiguous.

    A server's prompt cache keeps the previous prompt of a slot (llama.cpp) or a prefix tree
    (vLLM): sent one group at a time, the shared prefix is computed once per group instead of
    once per call, and interleaving never evicts it. Groups come in order of first appearance,
    prompts keep their order within a group (so samples of one question stay adjacent).
    """
    first_seen: dict[str, int] = {}

    def group(i: int) -> int:
        head = json.dumps(requests[i][:-1], sort_keys=True, ensure_ascii=False)
        return first_seen.setdefault(head, len(first_seen))

    return sorted(range(len(requests)), key=lambda i: (group(i), i))


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class TeacherClient:
    def __init__(self, config: TeacherConfig, cache: TeacherCache | None = None):
        self.config = config
        self.cache = cache
        self.usage = Usage()
        self._lock = threading.Lock()
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        # redact only a real key: a 3-character "key" would blank every matching word
        self._secret = api_key if api_key and len(api_key) >= 8 else None
        transport = DeadlineTransport(proxy=_env_proxy(config.base_url))
        # local servers need no key; our retries, not the SDK's, so they are the ones tested
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key or "no-key",
            max_retries=0,
            timeout=config.timeout,
            http_client=openai.DefaultHttpxClient(transport=transport),
        )

    def sampling(self, **overrides) -> dict:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def request(self, messages: Messages, sample: int = 0, **sampling) -> tuple[str, dict]:
        """(cache key, chat-completions body) of one prompt: the body is exactly what is sent,
        here or as a line of a Batch API batch (distill/batch.py)."""
        params = self.sampling(**sampling)
        if sample and "seed" not in params:
            params["seed"] = sample
        key = TeacherCache.key(self.config.cache_backend, self.config.model, messages, {**params, "sample": sample})
        return key, {"model": self.config.model, "messages": messages, **params}

    def complete(self, messages: Messages, sample: int = 0, **sampling) -> Completion:
        """One chat completion; `sample` (0..n-1) tells apart repeated samples of one prompt."""
        key, body = self.request(messages, sample, **sampling)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self._count(cached=1)
            return hit
        return self._answer(key, body)

    def _answer(self, key: str, body: dict) -> Completion:
        """Ask the teacher (a request not in the cache); cache a usable answer."""
        completion = self._completion(self.call_api(lambda api: api.chat.completions.create(**body)))
        completion.key = key
        if self.cache is not None:
            self.cache.log_call(key)
        if not completion.text.strip():
            # not cached: an empty answer is not final, a re-run asks again
            self._count(failures=1)
            raise TeacherError(
                f"the teacher returned an empty answer (finish_reason "
                f"{completion.finish_reason}); not cached, a re-run asks again"
            )
        if self.cache is not None:
            self.cache.put(key, body, completion)
        return completion

    def complete_many(
        self,
        requests: list[Messages],
        on_done=None,
        samples: list[int] | None = None,
        order: list[int] | None = None,
        **sampling,
    ) -> list[Completion | Exception]:
        """Complete many prompts with at most `concurrency` in flight; results keep input order.

        A failed item is returned as its exception (the others still finish); `on_done(i, result)`
        runs in the calling thread as each one completes, for progress and incremental writes.
        `order` is the order the prompts are sent in (default: as given; `prefix_order` groups
        prompts that share a prefix, so the server's prompt cache can reuse it).
        """
        samples = samples or [0] * len(requests)
        order = list(range(len(requests))) if order is None else order
        if sorted(order) != list(range(len(requests))):
            raise ValueError("order must be a permutation of the request indices")
        results: list[Completion | Exception | None] = [None] * len(requests)

        def run(i: int):
            try:
                return i, self.complete(requests[i], sample=samples[i], **sampling)
            except Exception as e:  # noqa: BLE001 - reported per item
                return i, e

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            futures = [pool.submit(run, i) for i in order]
            try:
                for future in as_completed(futures):
                    i, result = future.result()
                    results[i] = result
                    if on_done is not None:
                        on_done(i, result)
            except BaseException:
                # A stop request (or any error) in on_done: drop queued prompts; the calls in
                # flight get STOP_GRACE s to finish and land in the cache, then are abandoned.
                for future in futures:
                    future.cancel()
                raise
        return results

    def call_api(self, call):
        """`call(openai_client)` with our retries (backoff on 429 / 5xx / timeouts / connection
        errors), each attempt bounded by `timeout` in total; a failure is a TeacherError without
        the key. Chat completions and the Batch API's file and batch endpoints
        (distill/batch.py) go through here."""
        for attempt in range(self.config.max_retries + 1):
            self._check_stop()
            try:
                return self._attempt(call)
            except RETRYABLE as e:
                self._check_stop()  # cut short by a stop: not a failure worth retrying
                if attempt == self.config.max_retries:
                    self._count(failures=1)
                    message = f"teacher failed after {attempt + 1} attempts: {e}"
                    raise TeacherError(self.redact(message)) from None
                self._count(retries=1)
                self._pause(self._backoff(attempt, e))
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                self._count(failures=1)
                raise TeacherError(self.redact(f"teacher refused the request ({e.status_code}): {e.message}")) from None
            except openai.APIError as e:  # e.g. a body that is not a chat completion
                self._count(failures=1)
                raise TeacherError(self.redact(f"unusable teacher response: {e}")) from None
        raise AssertionError("unreachable")

    def _attempt(self, call):
        """One attempt, bounded by `timeout` in total (DeadlineTransport reads the deadline)."""
        _deadline.at = time.monotonic() + self.config.timeout
        try:
            return call(self._client)
        finally:
            _deadline.at = None

    def completion_from(self, body: object) -> Completion:
        """A chat.completion given as JSON (an answer of a Batch API batch), read exactly as a
        live answer: the key redacted, the usage counted; TeacherError if it is not one."""
        from openai.types.chat import ChatCompletion

        if not isinstance(body, dict):
            self._count(failures=1)
            raise TeacherError("the teacher's response is not a chat completion")
        return self._completion(ChatCompletion.construct(**body))

    def _check_stop(self) -> None:
        if stop_requested():
            raise TeacherStopped("stopped before the teacher answered")

    def _pause(self, seconds: float) -> None:
        """Back off before a retry, but wake for a stop request."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._check_stop()
            time.sleep(min(left, WAIT_SLICE))

    def redact(self, text: str) -> str:
        """`text` without the API key (a server may echo it in an error body or an answer)."""
        return text.replace(self._secret, "[redacted]") if self._secret and text else text

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        if retry_after:
            try:
                return min(float(retry_after), self.config.backoff_max)
            except ValueError:
                pass
        delay = self.config.backoff_base * 2**attempt
        return min(delay * (0.5 + random.random() / 2), self.config.backoff_max)

    def _completion(self, response) -> Completion:
        try:
            choice = response.choices[0]
            content, finish, model = choice.message.content, choice.finish_reason, response.model
        except (AttributeError, IndexError, KeyError, TypeError):
            self._count(failures=1)
            raise TeacherError("the teacher's response is not a chat completion") from None
        usage = {name: _tokens(getattr(response.usage, name, 0)) for name in ("prompt_tokens", "completion_tokens")}
        timings = _timings(getattr(response, "model_extra", None) or {})
        self._count(requests=1, **usage, **({"timed": 1, **timings} if timings else {}))
        return Completion(self._safe(content) or "", usage, self._safe(finish), self._safe(model), timings=timings)

    def _safe(self, value) -> str | None:
        """A server-given field as text fit to store: without the key, encodable as UTF-8."""
        return None if value is None else clean_text(self.redact(str(value)))

    def _count(self, **deltas) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.usage, name, getattr(self.usage, name) + delta)


# ---------------------------------------------------------------- choosing a teacher


class TeacherChoiceError(NesyError, ValueError):
    """The teacher cannot be used as chosen (a bad model, no model name for a URL, the local
    server not available, a bad slot count); found before any call is made."""


@dataclass
class LocalServerChoice:
    """What a teacher job asks of the local llama.cpp teacher (fields of ServerOptions).
    Speculative decoding is off by default: on this project's 2-core CPU the 0.5B draft made the
    1.5B teacher slower (bench/bench_teacher_throughput.py); `--draft` turns it on."""

    slots: int = ServerOptions.n_parallel
    prompt_cache: bool = True
    draft: bool = False  # the packaged draft model, when the teacher has one and it is installed

    def __post_init__(self):
        if self.slots < 1:
            raise TeacherChoiceError("--slots must be at least 1")

    def options(self, gguf: Path) -> ServerOptions:
        return ServerOptions(
            n_parallel=self.slots, cache_prompt=self.prompt_cache, draft=default_draft(gguf) if self.draft else None
        )


def make_client(
    teacher: str,
    model: str | None,
    api_key_env: str,
    concurrency: int,
    temperature: float,
    max_tokens: int,
    timeout: float,
    max_retries: int = 5,
    server: LocalServerChoice | None = None,
) -> TeacherClient:
    """`local` = the shared llama.cpp server (model: a GGUF path or a packaged teacher name);
    anything else is the base URL of an OpenAI-compatible server (model: its model name).
    The local server sends at most one request per slot: more would only wait in its queue,
    where the total deadline of a request (`timeout`) keeps running."""
    sampling = dict(
        concurrency=concurrency,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        max_retries=max_retries,
    )
    if teacher == "local":
        config = _local_config(model, server or LocalServerChoice(), sampling)
    elif not model:
        raise TeacherChoiceError("--model is required with a teacher URL")
    else:
        config = TeacherConfig(base_url=teacher, model=model, api_key_env=api_key_env, **sampling)
    return TeacherClient(config, TeacherCache())


def _local_config(model: str | None, server: LocalServerChoice, sampling: dict) -> TeacherConfig:
    """The shared local server for `model` (started if need be) and a config that talks to it."""
    from distill.models import TEACHERS, ModelNotAvailable, teacher_gguf_path

    if model and model not in TEACHERS and not Path(model).is_file():
        raise TeacherChoiceError(f"--model must be a GGUF file or one of {', '.join(TEACHERS)} with --teacher local")
    try:
        gguf = teacher_gguf_path(model)
        options = server.options(gguf)
        info = local_teacher(gguf, options)
    except (ModelNotAvailable, ServerError) as e:
        raise TeacherChoiceError(f"the local teacher is not available: {e} (run `make setup-teacher`)") from None
    print(f"local teacher {info.model}: {options.describe()}", file=sys.stderr)
    return TeacherConfig.for_server(
        info, **{**sampling, "concurrency": min(sampling["concurrency"], options.n_parallel)}
    )


# ---------------------------------------------------------------- a teacher job's requests


def append_line(path: Path, row: dict | str) -> None:
    """One JSONL line (a dict, or an already serialised line); lone surrogates become U+FFFD."""
    line = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(clean_text(line) + "\n")


def guarded(process, fail):
    """`process(i, result)`, where any error processing one answer becomes `fail(i, message)`:
    the answer is cached, so letting it raise would kill every re-run of the job the same way."""

    def handle(i, result):
        if isinstance(result, Exception):
            fail(i, str(result))
            return
        try:
            process(i, result)
        except Exception as e:  # noqa: BLE001 - one bad answer is one failed sample
            fail(i, f"could not process the answer: {type(e).__name__}: {e}")

    return handle


def run_requests(client: TeacherClient, requests: list[Messages], samples: list[int], desc: str, handle) -> None:
    """complete_many with progress (tokens, rate, ETA) and a cooperative stop between results."""
    started = time.monotonic()
    with Progress(len(requests), desc=desc, unit="call", stage=desc) as bar:

        def on_done(i, result):
            if not isinstance(result, Deferred):  # left for a batch: neither answered nor failed
                handle(i, result)
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(
                1,
                tokens=client.usage.total_tokens,
                cached=client.usage.cached,
                tokens_per_s=round(client.usage.completion_tokens / elapsed, 2),
            )
            bar.check_stop()

        # prompts sharing their instruction and demonstrations go one group after the other,
        # so the server's prompt cache computes that prefix once per group
        try:
            client.complete_many(requests, on_done=on_done, samples=samples, order=prefix_order(requests))
        finally:  # where the teacher's time went (llama.cpp's own timings), stopped or not
            if line := client.usage.timings_line():
                print(line)


def usage_summary(client: TeacherClient) -> dict:
    """What a job's summary reports of the teacher's usage."""
    u = client.usage
    return {
        "requests": u.requests,
        "cached": u.cached,
        "retries": u.retries,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
    }
