"""A real, tiny OpenAI-compatible HTTP server for tests that script the teacher's replies.

Besides `serve(handler)` and the reply helpers, ready-made hostile teachers:
- `Scripted`: answers with the next content of a list (None = `content: null`), counting calls;
- `Trickle`: a well-formed answer sent one byte per second, status line and headers included,
  so no per-read timeout ever fires;
- `EchoKey`: echoes the bearer token it received, in a 401 error body or in the answer's fields;
- `ServesAdapters`: a student server (vLLM `--enable-lora`): answers chat completions only for the
  model names it serves (404 otherwise, as vLLM), recording each request body.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_completion(content: str, model: str = "stub", prompt_tokens: int = 10, completion_tokens: int = 20) -> dict:
    """The body of a non-streaming chat.completion response."""
    return {
        "id": "stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def reply(handler: BaseHTTPRequestHandler, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run `handler` on a free loopback port; yields the OpenAI base URL (…/v1)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def read_body(handler: BaseHTTPRequestHandler) -> dict:
    return json.loads(handler.rfile.read(int(handler.headers["Content-Length"])) or b"{}")


class Scripted(QuietHandler):
    """Answers chat completions with `answers[i]` for the i-th call (the last one repeats)."""

    answers: list = ["ok"]
    calls: list = []  # the request bodies, in order

    def do_POST(self):  # noqa: N802 - http.server API
        Scripted.calls.append(read_body(self))
        n = len(Scripted.calls) - 1
        content = self.answers[min(n, len(self.answers) - 1)]
        reply(self, 200, chat_completion(content))


class Trickle(QuietHandler):
    """Sends a whole, valid response one byte every `interval` s until the client hangs up."""

    interval = 1.0
    hits: list = []  # monotonic time of each request

    def do_POST(self):  # noqa: N802
        read_body(self)
        Trickle.hits.append(time.monotonic())
        body = json.dumps(chat_completion("Therefore, the answer is 1.")).encode()
        raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        self.close_connection = True
        end = time.monotonic() + 300  # never outlive a test run by much
        for byte in raw:
            try:
                self.wfile.write(bytes([byte]))
            except OSError:  # the client gave up: what a deadline is for
                return
            if time.monotonic() > end:
                return
            time.sleep(self.interval)


class EchoKey(QuietHandler):
    """Echoes the Authorization header: `mode` "error" (a 401 body), "answer" (the content) or
    "everywhere" (content, model, finish_reason and a usage count)."""

    mode = "error"
    seen: list = []  # the Authorization headers received

    def do_POST(self):  # noqa: N802
        read_body(self)
        token = self.headers.get("Authorization", "")
        EchoKey.seen.append(token)
        if self.mode == "error":
            reply(self, 401, {"error": {"message": f"Incorrect API key provided: {token}"}})
        elif self.mode == "answer":
            reply(self, 200, chat_completion(f"Your key is {token}. Therefore, the answer is 1."))
        else:  # "everywhere": every field a client might store
            body = chat_completion(f"Your key is {token}.", model=token)
            body["choices"][0]["finish_reason"] = token
            body["usage"]["prompt_tokens"] = token
            reply(self, 200, body)


class ServesAdapters(QuietHandler):
    """Answers chat completions for the model names in `models` with `answer`, recording each
    request body; any other model name gets vLLM's 404."""

    models = {"tiny-lora"}
    answer = "3 + 4 = 7. Therefore, the answer is 7."
    prompt_tokens = 77
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = read_body(self)
        ServesAdapters.bodies.append(body)
        if body.get("model") not in self.models:
            reply(self, 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            return
        reply(self, 200, chat_completion(self.answer, model=body["model"], prompt_tokens=self.prompt_tokens))
