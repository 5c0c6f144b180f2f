"""The local llama.cpp server: a real OpenAI-compatible server (the prebuilt `xllamacpp` wheel)
in a child process on 127.0.0.1.

- `LocalTeacherServer` runs a real llama.cpp server (the prebuilt `xllamacpp` wheel) in a child
  process on 127.0.0.1 and a free port, waits for /health, and stops it on exit; `ServerOptions`
  says how (slots, threads, prompt cache, an optional draft model for speculative decoding).
  `local_teacher(gguf, options)` is the shared variant for jobs: the first job starts a detached
  server and records {pid, port, gguf, options} in $NESY_HOME/teacher/server.json; later jobs
  find it there, check that the process is alive, serves the same GGUF with the same options and
  answers /health, and reuse it. `stop_local_teacher()` (`nesy teach server --stop`) ends it.
- The process helpers (`free_port`, `wait_healthy`, `stop_process`, `alive`) also run the
  served student (distill/student_server.py), which has its own `serve` (LoRA, KV cache type).
- Nothing here knows the chat protocol: a client reaches a server through
  `TeacherConfig.for_server(info)` (distill/teacher.py).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.progress import StopRequested, stop_requested
from kb.workspace import subdir


class ServerError(RuntimeError):
    """A llama.cpp server that cannot start, or options it cannot run with."""


@dataclass
class ServerInfo:
    base_url: str
    model: str  # the name the server answers to (the GGUF file stem)
    pid: int
    port: int
    gguf: str
    options: dict = field(default_factory=dict)  # the ServerOptions it runs with


def default_threads() -> int:
    """Every core: a teacher job has the machine while the student waits for it (measured idle on
    2 cores: 2 threads 1.92x the items/s of 1, docs/results/bench-idle-2026-12-01.txt). On a
    machine other busy work shares, set $NESY_TEACHER_THREADS lower: llama.cpp threads busy-wait,
    and oversubscribed they collapse (measured under a load of 12-22: 1 thread 0.48 items/s,
    2 threads 0.11)."""
    return int(os.environ.get("NESY_TEACHER_THREADS") or os.cpu_count() or 1)


@dataclass
class ServerOptions:
    """How the local llama.cpp server runs. Recorded with the shared server, so a job asking for
    other options gets a server started with them. Defaults measured idle on 2 cores with the
    1.5B teacher (bench/bench_teacher_throughput.py, GSM8K CoT + PoT; docs/results/
    bench-idle-2026-12-01.txt): the prompt cache with grouped requests 1.52x the plain server
    (the prompt was 61 % of its time, 41 % of ours); two slots 0.95x one slot (decoding is
    compute-bound here: 2 x 6.0 tok/s against 13.1); the 0.5B draft 0.68x (91 % of its tokens
    accepted, yet 9.4 decoded tok/s against 13.1); prompt lookup (3-gram, at most 4 tokens) 0.98x
    on an AMX Xeon (21 % of its proposals accepted; docs/results/bench-idle-2026-12-07.txt)."""

    n_parallel: int = field(
        default=1,
        metadata={
            "help": (
                "slots: requests decoded together. Each slot keeps its own prompt cache (and computes the "
                "shared prefix once itself); on 2 cores two slots were no faster than one"
            )
        },
    )
    n_ctx: int = field(default=4096, metadata={"help": "context tokens per slot"})
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads (default: every core, or $NESY_TEACHER_THREADS)"}
    )
    cache_prompt: bool = field(
        default=True,
        metadata={
            "help": (
                "reuse the slot's KV cache for the longest prefix shared with its previous prompt, so "
                "the few-shot demonstrations are read once per thought type, not once per call. Greedy "
                "answers can differ from a cold prompt's at floating-point near-ties: llama.cpp's CPU "
                "kernels round differently by batch size, and the cached prefix was computed in another "
                "batch than a cold prompt's"
            )
        },
    )
    draft: str | None = field(
        default=None,
        metadata={
            "help": (
                "GGUF of a draft model for speculative decoding (same tokenizer as the teacher; the "
                "greedy output up to floating-point near-ties); None: off. `default_draft` gives the "
                "packaged 0.5B for the 1.5B teacher. It pays where decoding waits on memory (many "
                "cores, a GPU); on 2 CPU cores, where decoding is compute-bound, it made the teacher slower"
            )
        },
    )
    lookup_ngram: int = field(
        default=0,
        metadata={
            "help": (
                "prompt-lookup speculative decoding, no draft model: where the last N tokens already "
                "occur in the context (the question, the demonstrations, the answer so far), the tokens "
                "that followed them there are proposed, at most draft_max; 0: off. It pays where the "
                "answer copies its context (rewriting, extraction); a GSM8K rationale does not: 21 % "
                "accepted, no faster on 2 cores"
            )
        },
    )
    # Few and confident drafts: on a CPU checking k drafted tokens costs about k/5 of a decode step
    # (prompt speed / decode speed: 66 vs 13 tok/s on 2 cores), so long drafts cost more than they save.
    draft_max: int = field(default=4, metadata={"help": "most tokens the draft proposes per step"})
    draft_min: int = field(default=0, metadata={"help": "fewest tokens of a draft worth verifying"})
    draft_p_min: float = field(
        default=0.8, metadata={"help": ("the draft stops proposing at a token it is less sure of than this (greedy)")}
    )

    def __post_init__(self):
        self.threads = self.threads or default_threads()
        if self.n_parallel < 1 or self.n_ctx < 64 or self.threads < 1 or self.lookup_ngram < 0:
            raise ServerError("server options: n_parallel and threads must be >= 1, n_ctx >= 64, lookup_ngram >= 0")

    def describe(self) -> str:
        """One line for a job's log: what the server does to be fast, and what it does not."""
        draft = f"draft {Path(self.draft).stem} (max {self.draft_max})" if self.draft else "no draft"
        if self.lookup_ngram:
            draft += f", {self.lookup_ngram}-gram lookup (max {self.draft_max})"
        cache = "prompt cache on" if self.cache_prompt else "prompt cache off"
        return f"{self.n_parallel} slot(s), {self.threads} thread(s), {cache}, {draft}"


# Packaged teacher -> the packaged model that drafts for it (same Qwen2.5 tokenizer, 3x smaller).
DRAFT_FOR = {"qwen2.5-coder-1.5b": "qwen2.5-coder-0.5b"}
_draft_notes: set[str] = set()  # the "no draft" note is said once per process


def default_draft(gguf: str | Path) -> str | None:
    """The draft model for a packaged teacher when its parts are installed, else None (saying
    why once). A GGUF of one's own gets no draft: a draft with another vocabulary would make the
    server refuse to start."""
    from distill.models import TEACHERS, ModelNotAvailable, teacher_gguf_path

    teacher = next((k for k, spec in TEACHERS.items() if Path(gguf).name == f"{spec.name}.gguf"), None)
    if teacher not in DRAFT_FOR:
        return None
    try:
        return str(teacher_gguf_path(DRAFT_FOR[teacher]))
    except ModelNotAvailable as e:
        if teacher not in _draft_notes:
            _draft_notes.add(teacher)
            print(
                f"note: no speculative decoding for {teacher}: its draft model is not available ({e})", file=sys.stderr
            )
        return None


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


def _log_path(port: int) -> Path:
    return subdir("teacher") / f"server-{port}.log"


def _spawn_server(gguf: Path, port: int, options: ServerOptions, detached: bool) -> subprocess.Popen:
    log = open(_log_path(port), "ab")  # noqa: SIM115 - child owns it
    command = [
        sys.executable,
        "-m",
        "distill.llama_server",
        "serve",
        "--gguf",
        str(gguf),
        "--port",
        str(port),
        "--options",
        json.dumps(asdict(options)),
    ]
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=detached
    )


def wait_healthy(proc: subprocess.Popen, base_url: str, timeout: float, log: Path) -> None:
    """Until the server answers /health; a ServerError naming its log when it exits or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop_requested():  # loading a model takes long; a stop must not wait for it
            stop_process(proc.pid, grace=2.0)
            raise StopRequested()
        if proc.poll() is not None:
            raise ServerError(f"the llama.cpp server exited with {proc.returncode} (log: {log})")
        if healthy(base_url, timeout=1.0):
            return
        time.sleep(0.2)
    proc.kill()
    raise ServerError(f"the llama.cpp server did not become healthy in {timeout:.0f} s (log: {log})")


def stop_process(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
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
    """A real llama.cpp server for one `with` block: started, health-checked, stopped.
    `options` is a ServerOptions; its fields may also be given as keywords (n_parallel=2, …)."""

    def __init__(
        self,
        gguf: str | Path | None = None,
        port: int | None = None,
        options: ServerOptions | None = None,
        startup_timeout: float = 180.0,
        **fields,
    ):
        self.gguf = Path(gguf) if gguf else _default_gguf()
        self.port = port or free_port()
        self.options = options or ServerOptions(**fields)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def info(self) -> ServerInfo:
        return ServerInfo(
            f"http://127.0.0.1:{self.port}/v1",
            self.gguf.stem,
            self.proc.pid,
            self.port,
            str(self.gguf),
            asdict(self.options),
        )

    def start(self) -> ServerInfo:
        self.proc = _spawn_server(self.gguf, self.port, self.options, detached=False)
        wait_healthy(self.proc, self.info.base_url, self.startup_timeout, _log_path(self.port))
        return self.info

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> ServerInfo:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def _state_path() -> Path:
    return subdir("teacher") / "server.json"


def local_teacher(gguf: str | Path | None = None, options: ServerOptions | None = None, **fields) -> ServerInfo:
    """The shared local teacher: reuse the recorded server if it is alive, serves `gguf` with the
    same options and answers /health, else (re)start a detached one and record it. A file lock
    keeps two jobs from starting two."""
    gguf = str(Path(gguf) if gguf else _default_gguf())
    options = options or ServerOptions(**fields)
    with open(subdir("teacher") / "server.lock", "w") as lock:
        _lock_unless_stopped(lock)
        state = server_state()
        if (
            state
            and state["gguf"] == gguf
            and state.get("options") == asdict(options)
            and alive(state["pid"])
            and healthy(state["base_url"])
        ):
            return ServerInfo(**state)
        if state and alive(state["pid"]):
            stop_process(state["pid"])  # another model or other options, or a hung server
        port = free_port()
        proc = _spawn_server(Path(gguf), port, options, detached=True)
        info = ServerInfo(f"http://127.0.0.1:{port}/v1", Path(gguf).stem, proc.pid, port, gguf, asdict(options))
        wait_healthy(proc, info.base_url, 180.0, _log_path(port))
        _state_path().write_text(json.dumps(info.__dict__), encoding="utf-8")
        return info


def _lock_unless_stopped(lock) -> None:
    """Wait for the server lock (another job may be starting the server), but wake for a stop."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stop_requested():
                raise StopRequested() from None
            time.sleep(0.2)


def server_state() -> dict | None:
    try:
        return json.loads(_state_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stop_local_teacher() -> bool:
    """Stop the shared local teacher, if one is recorded; True when one was running."""
    state = server_state()
    _state_path().unlink(missing_ok=True)
    if state and alive(state["pid"]):
        stop_process(state["pid"])
        return True
    return False


def serve(gguf: str, port: int, options: ServerOptions) -> None:
    """Run xllamacpp.Server in this process until SIGTERM/SIGINT (the child of the classes above)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.model_alias = {Path(gguf).stem}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = options.n_parallel
    params.n_ctx = options.n_ctx * options.n_parallel  # llama.cpp splits the context across slots
    for cpu in (params.cpuparams, params.cpuparams_batch):
        cpu.n_threads = options.threads
    params.endpoint_metrics = True
    params.cache_prompt = options.cache_prompt
    if not options.cache_prompt:
        params.cache_ram_mib = 0  # nor the host-memory copy of finished prompts
    spec, kind = params.speculative, xllamacpp.common_speculative_type
    types = []
    if options.lookup_ngram:
        types.append(kind.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE)
        spec.ngram_simple.size_n, spec.ngram_simple.size_m = options.lookup_ngram, options.draft_max
    if options.draft:
        types.append(kind.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE)
        spec.draft.mparams.path = options.draft
        spec.draft.n_max, spec.draft.n_min = options.draft_max, options.draft_min
        spec.draft.p_min = options.draft_p_min
        for cpu in (spec.draft.cpuparams, spec.draft.cpuparams_batch):
            cpu.n_threads = options.threads
    spec.types = types or [kind.COMMON_SPECULATIVE_TYPE_NONE]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = xllamacpp.Server(params)
    done.wait()
    del server  # the destructor stops the main loop and frees the model


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.llama_server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run a llama.cpp server on 127.0.0.1")
    serve_parser.add_argument("--gguf", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--options", default="{}", help="ServerOptions as JSON")
    args = parser.parse_args(argv)
    serve(args.gguf, args.port, ServerOptions(**json.loads(args.options)))


if __name__ == "__main__":
    _main()
