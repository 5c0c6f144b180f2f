"""The student as a served model: the backends `distill.infer.Student` can answer through.

`--backend` (on `nesy answer`, `nesy eval` and the app's Compare page, which runs those two) takes one of:
- `transformers` (default): the model in this process, batched greedy generation (distill/infer.py);
- `llama.cpp[:f32|f16|packaged]`: the embedded llama.cpp server (xllamacpp) on 127.0.0.1 with the
  adapter exported as a GGUF LoRA (distill/gguf_export.py) on the base it was trained on — by
  default an f32 GGUF written from that very HF folder (`f16`: half the memory; `packaged`: the
  quantised GGUF the embedded student ships as, i.e. adds quantisation error). The prompt is
  rendered and tokenised exactly as for transformers and sent as token ids to the raw `/completion`
  endpoint, so both backends see the same tokens; answers are decoded with the same tokenizer;
- an OpenAI-compatible URL (`http://gpu-box:8000/v1`): chat completions with the user turn, the
  model being the adapter's name (vLLM: `vllm serve BASE --enable-lora --lora-modules NAME=PATH`)
  or, without an adapter, the base model as given. The server applies the chat template, so only
  chat-template adapters can be served this way. A key, if the server wants one, is read from
  $NESY_STUDENT_API_KEY.

The llama.cpp server is started like the local teacher (distill/llama_server.py: same health
wait and stop), one per loaded student, and stopped when the student is dropped or at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kb.errors import NesyError
from kb.workspace import subdir

LLAMA_CPP = "llama.cpp"
LLAMA_CPP_BASES = ("f32", "f16", "packaged")
KEY_ENV = "NESY_STUDENT_API_KEY"
BACKEND_HELP = (
    "transformers (in process) | llama.cpp[:f32|f16|packaged] (the embedded llama.cpp server, "
    "adapter as GGUF LoRA; f32 = the exact trained base) | an OpenAI-compatible URL "
    "(vLLM --enable-lora: the adapter is served under its name)"
)


class StudentBackendError(NesyError, RuntimeError):
    """A student backend that cannot start or answer (bad spec, server failure, refused request)."""


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    tokens: tuple[int, ...] = ()  # the generated token ids, when the backend returns them


def check_backend(spec: str) -> str:
    """The backend's canonical name (`llama.cpp` is `llama.cpp:f32`), StudentBackendError when
    `spec` names none: typed on the command line."""
    kind, _, variant = spec.partition(":")
    if spec == "transformers" or spec.startswith(("http://", "https://")):
        return spec
    if kind == LLAMA_CPP and (not variant or variant in LLAMA_CPP_BASES):
        return f"{LLAMA_CPP}:{variant or LLAMA_CPP_BASES[0]}"
    raise StudentBackendError(
        f"--backend must be transformers, llama.cpp[:{'|'.join(LLAMA_CPP_BASES)}] or an http(s):// URL, not {spec!r}"
    )


def connect(spec: str, *, base_model: str | None, adapter: str | None, tokenizer, template: str):
    """The backend object for a non-transformers `spec`."""
    check_backend(spec)
    if spec.startswith(("http://", "https://")):
        if template != "chat":
            raise StudentBackendError(
                "an OpenAI-compatible server applies its own chat template; this "
                f"adapter was trained with the {template!r} template: use "
                "--backend transformers or llama.cpp"
            )
        model = Path(adapter).name if adapter else (base_model or "base")
        return OpenAIStudent(spec, model)
    _, _, variant = spec.partition(":")
    return LlamaCppStudent(base_model, adapter, tokenizer, base=variant or LLAMA_CPP_BASES[0])


# --- the embedded llama.cpp server -----------------------------------------------------------------


def default_threads() -> int:
    """$NESY_STUDENT_THREADS, else the teacher's rule (every core, or $NESY_TEACHER_THREADS)."""
    from distill.llama_server import default_threads as teacher_threads

    return int(os.environ.get("NESY_STUDENT_THREADS") or teacher_threads())


class StudentServer:
    """A llama.cpp server with an optional LoRA, for one `with` block or until `stop()`."""

    def __init__(
        self,
        gguf: str | Path,
        lora: str | Path | None = None,
        *,
        n_parallel: int = 8,
        n_ctx: int = 4096,
        threads: int | None = None,
        cache_type: str = "f32",
        startup_timeout: float = 180.0,
    ):
        from distill.llama_server import free_port

        self.gguf, self.lora = Path(gguf), Path(lora) if lora else None
        self.port = free_port()
        self.n_parallel, self.n_ctx, self.threads = n_parallel, n_ctx, threads or default_threads()
        self.cache_type, self.startup_timeout = cache_type, startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StudentServer:
        from distill.llama_server import ServerError, wait_healthy

        log = open(subdir("student") / f"server-{self.port}.log", "ab")  # noqa: SIM115 - the child owns it
        command = [
            sys.executable,
            "-m",
            "distill.student_server",
            "serve",
            "--gguf",
            str(self.gguf),
            "--port",
            str(self.port),
            "--n-parallel",
            str(self.n_parallel),
            "--n-ctx",
            str(self.n_ctx),
            "--threads",
            str(self.threads),
            "--cache-type",
            self.cache_type,
        ]
        if self.lora:
            command += ["--lora", str(self.lora)]
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_healthy(self.proc, f"{self.url}/v1", self.startup_timeout, Path(log.name))
        except ServerError as e:
            self.stop()
            raise StudentBackendError(f"the llama.cpp student server did not start: {e}") from None
        return self

    def stop(self) -> None:
        from distill.llama_server import stop_process

        if self.proc is not None:
            stop_process(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> StudentServer:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def serve(gguf: str, port: int, n_parallel: int, n_ctx: int, threads: int, lora: str | None, cache_type: str) -> None:
    """Run xllamacpp.Server in this process until SIGTERM/SIGINT (the child of StudentServer)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.model_alias = {"student"}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = n_parallel
    params.n_ctx = n_ctx * n_parallel  # llama.cpp splits the context across slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # f32 keys/values: an f32 base then computes in f32 throughout, like the transformers path
    kv = getattr(xllamacpp.ggml_type, f"GGML_TYPE_{cache_type.upper()}")
    params.cache_type_k = params.cache_type_v = kv
    if lora:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(lora, 1.0)]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=_end_with_parent, args=(os.getppid(), done), daemon=True).start()
    server = xllamacpp.Server(params)
    done.wait()
    del server  # the destructor stops the main loop and frees the model


def _end_with_parent(parent: int, done: threading.Event) -> None:
    """A student server lives only as long as the process that started it (even one killed -9)."""
    while not done.wait(1.0):
        if os.getppid() != parent:
            done.set()


class LlamaCppStudent:
    """Greedy completions from a StudentServer, fed the exact token ids transformers would get."""

    def __init__(
        self,
        base_model: str | None,
        adapter: str | None,
        tokenizer,
        *,
        base: str = "f32",
        n_parallel: int = 8,
        n_ctx: int = 4096,
        threads: int | None = None,
    ):
        from distill import gguf_export

        self.tokenizer = tokenizer
        self.base_gguf, self.lora_gguf = _served(base_model, adapter, base)
        self.server = StudentServer(
            self.base_gguf,
            self.lora_gguf,
            n_parallel=n_parallel,
            n_ctx=n_ctx,
            threads=threads,
            cache_type="f32" if base == "f32" else "f16",
        ).start()
        weakref.finalize(self, self.server.stop)  # the server ends with the student (or at exit)
        self.name = f"{LLAMA_CPP}:{base}"
        self.params = gguf_export.parameter_count(self.base_gguf, self.lora_gguf)

    def close(self) -> None:
        self.server.stop()

    def complete(self, ids: list[int], max_new_tokens: int, stream: bool = False, client=None):
        """One raw /completion request: greedy (temperature 0), the generated token ids returned."""
        import httpx

        body = {
            "prompt": ids,
            "n_predict": max_new_tokens,
            "temperature": 0.0,
            "return_tokens": True,
            "cache_prompt": True,
            "stream": stream,
        }
        client = client or httpx.Client(timeout=None)
        try:
            if stream:
                return client.stream("POST", f"{self.server.url}/completion", json=body)
            response = client.post(f"{self.server.url}/completion", json=body)
        except httpx.HTTPError as e:
            raise StudentBackendError(f"the llama.cpp student server failed: {e}") from None
        if response.status_code != 200:
            raise StudentBackendError(
                f"the llama.cpp student server refused the request ({response.status_code}): {response.text[:300]}"
            )
        return response.json()

    def generate(self, users: list[str], prompts: list[str], max_new_tokens: int) -> list[Generated]:
        """All prompts at once: the server's slots batch them (continuous batching)."""
        import httpx

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        with httpx.Client(timeout=None) as client, ThreadPoolExecutor(self.server.n_parallel) as pool:
            replies = list(pool.map(lambda x: self.complete(x, max_new_tokens, client=client), ids))
        return [self._generated(prompt_ids, reply) for prompt_ids, reply in zip(ids, replies)]

    def _generated(self, prompt_ids: list[int], reply: dict) -> Generated:
        tokens = tuple(reply.get("tokens") or ())
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
        return Generated(text, len(prompt_ids), int(reply.get("tokens_predicted", len(tokens))), tokens)

    def stream(self, user: str, prompt: str, max_new_tokens: int):
        import httpx

        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with httpx.Client(timeout=None) as client, self.complete(ids, max_new_tokens, True, client) as reply:
            if reply.status_code != 200:
                raise StudentBackendError(
                    f"the llama.cpp student server refused the request "
                    f"({reply.status_code}): {reply.read().decode(errors='replace')[:300]}"
                )
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    piece = json.loads(line[len("data: ") :])
                    if piece.get("content"):
                        yield piece["content"]


def _served(base_model: str | None, adapter: str | None, base: str) -> tuple[Path, Path | None]:
    from distill import gguf_export

    if base != "packaged":
        return gguf_export.served_files(base_model, adapter, base)
    packaged = gguf_export.packaged_gguf(base_model, adapter)
    return packaged, gguf_export.adapter_gguf(adapter) if adapter else None


# --- any OpenAI-compatible server (vLLM with --enable-lora) ----------------------------------------


class OpenAIStudent:
    """Greedy chat completions from a server that serves the adapter under its own name."""

    def __init__(self, base_url: str, model: str, concurrency: int = 8, timeout: float = 600.0):
        import openai

        self.name, self.model, self.params = base_url, model, 0  # a remote model's size is not known here
        self.concurrency = concurrency
        # openai's own retries (429 / 5xx / connection errors, with backoff) are the ones that run
        self.client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(KEY_ENV) or "no-key", max_retries=3, timeout=timeout
        )

    def close(self) -> None:
        self.client.close()

    def complete(self, user: str, max_new_tokens: int) -> Generated:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": user}],
                temperature=0.0,
                max_tokens=max_new_tokens,
            )
            text = reply.choices[0].message.content or ""
        except openai.APIError as e:
            raise StudentBackendError(f"the student server at {self.name} (model {self.model!r}) failed: {e}") from None
        except (AttributeError, IndexError, TypeError):
            raise StudentBackendError(f"the student server at {self.name} sent no chat completion") from None
        usage = reply.usage
        return Generated(
            text.strip(), getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0
        )

    def generate(self, users: list[str], prompts: list[str], max_new_tokens: int) -> list[Generated]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda u: self.complete(u, max_new_tokens), users))

    def stream(self, user: str, prompt: str, max_new_tokens: int):
        yield self.complete(user, max_new_tokens).text  # one piece: the whole answer


# --- the server process ----------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.student_server")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run a llama.cpp server with a LoRA on 127.0.0.1")
    p.add_argument("--gguf", required=True)
    p.add_argument("--lora")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n-parallel", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--cache-type", choices=("f32", "f16"), default="f32")
    args = parser.parse_args(argv)
    serve(args.gguf, args.port, args.n_parallel, args.n_ctx, args.threads, args.lora, args.cache_type)


if __name__ == "__main__":
    _main()
