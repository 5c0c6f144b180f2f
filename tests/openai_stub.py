"""A real, tiny OpenAI-compatible HTTP server for tests that script the teacher's replies.

Besides `serve(handler)` and the reply helpers, ready-made hostile teachers:
- `Scripted`: answers with the next content of a list (None = `content: null`), counting calls;
- `Trickle`: a well-formed answer sent one byte per second, status line and headers included,
  so no per-read timeout ever fires;
- `EchoKey`: echoes the bearer token it received, in a 401 error body or in the answer's fields;
- `ServesAdapters`: a student server (vLLM `--enable-lora`): answers chat completions only for the
  model names it serves (404 otherwise, as vLLM), recording each request body;
- `BatchTeacher`: chat completions plus the Batch API's file and batch endpoints, each batch line
  answered as its chat completion would be.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import HTTP
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


class BatchTeacher(QuietHandler):
    """A teacher with OpenAI's Batch API, as OpenAI serves it (https://platform.openai.com/docs/api-reference/batch):
    - POST /v1/chat/completions: `answer(body)` as the content, or a 400 for the bodies `refuse(body)` picks;
    - POST /v1/files (multipart, purpose "batch" only) and GET /v1/files/{id}/content;
    - POST /v1/batches (an uploaded input file, endpoint /v1/chat/completions, window 24h),
      GET /v1/batches (the list) and GET /v1/batches/{id}, whose status moves one step per look:
      validating -> in_progress -> completed. On completion every input line is answered as its
      chat completion would be: a 200 line in the output file, a refused one as its 400 in the
      error file. `lose_creates`: creations that answer 500 after creating the batch.
    Records every request as (method, path, Authorization) and every chat-completions body."""

    answer = staticmethod(lambda body: "Therefore, the answer is 1.")
    refuse = staticmethod(lambda body: False)
    seen: list = []  # (method, path, Authorization header) of every request
    chat_calls: list = []  # bodies of POST /v1/chat/completions
    files: dict = {}  # id -> {"purpose", "filename", "data"}
    batches: dict = {}  # id -> the batch object
    hold = False  # True: a batch stays in_progress (a --wait runs out)
    lose_creates = 0  # this many batch creations answer 500 after creating the batch (a lost answer)
    extra: list = []  # rows added to each output file (a line that is not one of the batch's)
    ids = itertools.count(1)

    @classmethod
    def reset(cls, answer=None, refuse=None) -> None:
        cls.answer = staticmethod(answer or (lambda body: "Therefore, the answer is 1."))
        cls.refuse = staticmethod(refuse or (lambda body: False))
        cls.seen, cls.chat_calls, cls.files, cls.batches, cls.hold, cls.extra = [], [], {}, {}, False, []
        cls.lose_creates = 0

    @classmethod
    def respond(cls, body: dict) -> tuple[int, dict]:
        """(status, payload) of one chat completion: live, or as a batch line."""
        if cls.refuse(body):
            return 400, {"error": {"message": "refused by the stub", "type": "invalid_request_error"}}
        return 200, chat_completion(cls.answer(body), model=body.get("model", "stub"))

    def do_POST(self):  # noqa: N802 - http.server API
        self.seen.append(("POST", self.path, self.headers.get("Authorization")))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/chat/completions":
            body = json.loads(raw)
            BatchTeacher.chat_calls.append(body)
            reply(self, *self.respond(body))
        elif self.path == "/v1/files":
            self._upload(raw)
        elif self.path == "/v1/batches":
            self._create(json.loads(raw))
        else:
            reply(self, 404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self):  # noqa: N802
        self.seen.append(("GET", self.path, self.headers.get("Authorization")))
        parts = self.path.strip("/").split("/")
        if self.path.split("?")[0] == "/v1/batches":  # the latest first, as OpenAI lists them
            reply(self, 200, {"object": "list", "data": list(self.batches.values())[::-1], "has_more": False})
        elif parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in self.batches:
            reply(self, 200, self._advance(self.batches[parts[2]]))
        elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in self.files:
            reply(self, 200, self.files[parts[2]]["data"], {"Content-Type": "application/octet-stream"})
        else:
            reply(self, 404, {"error": {"message": f"no such object: {self.path}"}})

    def _upload(self, raw: bytes) -> None:
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        purpose = fields["purpose"].get_payload(decode=True).decode() if "purpose" in fields else None
        if purpose != "batch" or "file" not in fields:
            reply(self, 400, {"error": {"message": f"purpose must be 'batch', not {purpose!r}, with a file"}})
            return
        file_id = self._store(purpose, fields["file"].get_filename(), fields["file"].get_payload(decode=True))
        reply(
            self,
            200,
            {
                "id": file_id,
                "object": "file",
                "bytes": len(self.files[file_id]["data"]),
                "created_at": 0,
                "filename": self.files[file_id]["filename"],
                "purpose": purpose,
                "status": "processed",
            },
        )

    def _create(self, body: dict) -> None:
        problems = [
            f"{name} must be {want!r}"
            for name, want in (("endpoint", "/v1/chat/completions"), ("completion_window", "24h"))
            if body.get(name) != want
        ]
        if body.get("input_file_id") not in self.files:
            problems.append(f"no input file {body.get('input_file_id')!r}")
        if problems:
            reply(self, 400, {"error": {"message": "; ".join(problems)}})
            return
        lines = self.files[body["input_file_id"]]["data"].decode().splitlines()
        batch_id = f"batch_{next(self.ids)}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": 0,
            "output_file_id": None,
            "error_file_id": None,
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        if BatchTeacher.lose_creates:
            BatchTeacher.lose_creates -= 1
            reply(self, 500, {"error": {"message": "the batch was created, but this answer is lost"}})
            return
        reply(self, 200, self.batches[batch_id])

    def _advance(self, batch: dict) -> dict:
        """validating -> in_progress -> completed, one step per look; completion answers the lines."""
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and not self.hold:
            self._run(batch)
            batch["status"] = "completed"
        return batch

    def _run(self, batch: dict) -> None:
        out, errors = [], []
        for n, line in enumerate(self.files[batch["input_file_id"]]["data"].decode().splitlines()):
            request = json.loads(line)
            if request.get("method") != "POST" or request.get("url") != batch["endpoint"]:
                status, payload = 400, {"error": {"message": "method or url do not match the batch"}}
            else:
                status, payload = self.respond(request["body"])
            row = {
                "id": f"batch_req_{n}",
                "custom_id": request.get("custom_id"),
                "error": None,
                "response": {"status_code": status, "request_id": f"req_{n}", "body": payload},
            }
            (out if status == 200 else errors).append(json.dumps(row) + "\n")
        batch["request_counts"].update(completed=len(out), failed=len(errors))
        out += [json.dumps(row) + "\n" for row in self.extra]
        for key, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                batch[key] = self._store("batch_output", f"{batch['id']}_{key}.jsonl", "".join(rows).encode())

    def _store(self, purpose: str, filename: str, data: bytes) -> str:
        file_id = f"file-{next(self.ids)}"
        self.files[file_id] = {"purpose": purpose, "filename": filename, "data": data}
        return file_id
