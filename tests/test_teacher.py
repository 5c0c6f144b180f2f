"""Teacher client against a real llama.cpp server (SmolLM2 GGUF) and a tiny flaky HTTP server."""
from __future__ import annotations

import json
import os
import time

import pytest
from openai_stub import QuietHandler, chat_completion, reply, serve

from distill.models import student_gguf_path
from distill.teacher import (LocalTeacherServer, TeacherCache, TeacherClient, TeacherConfig,
                             TeacherError, healthy, local_teacher, stop_local_teacher)

SMALL = dict(n_parallel=2, n_ctx=1024, threads=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NESY_HOME", str(tmp_path_factory.mktemp("server-home")))
        with LocalTeacherServer(student_gguf_path(), **SMALL) as info:
            yield info
    assert not healthy(info.base_url), "the server must be stopped after the block"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_real_server_completion_usage_and_order(server):
    client = TeacherClient(server.config(max_tokens=16, concurrency=2))
    one = client.complete(ask("What is 2 + 3? Answer with a number."))
    assert one.text.strip() and one.usage["prompt_tokens"] > 5 and one.usage["completion_tokens"] > 0
    prompts = [ask(f"Repeat the word number {i}.") for i in range(3)]
    results = client.complete_many(prompts)
    assert all(r.text for r in results) and len(results) == 3
    assert client.usage.requests == 4 and client.usage.failures == 0
    assert client.usage.completion_tokens >= sum(r.usage["completion_tokens"] for r in results)


def test_cache_answers_repeats_without_calling(server, workspace):
    cache = TeacherCache()
    client = TeacherClient(server.config(max_tokens=8), cache)
    first = client.complete(ask("Name a colour."))
    again = client.complete(ask("Name a colour."))
    assert again.cached and again.text == first.text and client.usage.requests == 1
    other_sample = client.complete(ask("Name a colour."), sample=1, temperature=0.8)
    assert not other_sample.cached
    assert cache.stats() == {"entries": 2, "calls": 2, "repeated_calls": 0}
    # a new process-level client (a re-run) reads the same file
    rerun = TeacherClient(server.config(max_tokens=8), TeacherCache())
    assert rerun.complete(ask("Name a colour.")).cached and rerun.usage.requests == 0
    assert str(cache.path).startswith(str(workspace))


def test_api_key_comes_from_env_and_is_never_written(server, workspace, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-should-not-persist-1234")
    config = server.config(max_tokens=4)
    config.api_key_env = "MY_TEACHER_KEY"
    TeacherClient(config, TeacherCache()).complete(ask("Hi"))
    for path in workspace.rglob("*"):
        if path.is_file():
            assert b"sk-secret-should-not-persist" not in path.read_bytes(), path


class FlakyHandler(QuietHandler):
    """Answers chat completions from a script: a status code per request, then 200s."""
    script: list = []
    hits: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        self.hits.append(time.monotonic())
        step = self.script.pop(0) if self.script else 200
        if step == "slow":
            time.sleep(1.5)
            step = 200
        if step != 200:
            reply(self, step, {"error": {"message": f"status {step}"}}, {"Retry-After": "0"})
        else:
            reply(self, 200, chat_completion("ok", "flaky", prompt_tokens=3, completion_tokens=1))


@pytest.fixture
def flaky():
    FlakyHandler.script, FlakyHandler.hits = [], []
    with serve(FlakyHandler) as url:
        yield url


def flaky_client(url, **kw):
    return TeacherClient(TeacherConfig(**{"base_url": url, "model": "flaky", "backoff_base": 0.05, **kw}))


def test_retries_429_then_succeeds(flaky):
    FlakyHandler.script = [429, 429]
    client = flaky_client(flaky)
    assert client.complete(ask("q")).text == "ok"
    assert len(FlakyHandler.hits) == 3 and client.usage.retries == 2 and client.usage.requests == 1


def test_retries_5xx_and_timeouts_with_backoff(flaky):
    FlakyHandler.script = [500, 503, "slow"]
    client = flaky_client(flaky, timeout=0.5, backoff_base=0.2)
    start = time.monotonic()
    assert client.complete(ask("q")).text == "ok"
    assert client.usage.retries == 3 and len(FlakyHandler.hits) == 4
    gaps = [b - a for a, b in zip(FlakyHandler.hits, FlakyHandler.hits[1:])]
    # Retry-After: 0 wins for the 5xx answers; the timeout retry waits 0.2*2**2*[0.5,1] >= 0.4 s
    assert gaps[-1] >= 0.5 + 0.4 - 0.05 and time.monotonic() - start < 10


def test_gives_up_after_max_retries_and_on_4xx(flaky):
    FlakyHandler.script = [429] * 10
    client = flaky_client(flaky, max_retries=2)
    with pytest.raises(TeacherError, match="after 3 attempts"):
        client.complete(ask("q"))
    assert len(FlakyHandler.hits) == 3 and client.usage.failures == 1
    FlakyHandler.script, FlakyHandler.hits[:] = [400], []
    with pytest.raises(TeacherError, match="400"):
        flaky_client(flaky).complete(ask("q"))
    assert len(FlakyHandler.hits) == 1  # no retry on a client error


def test_complete_many_bounds_concurrency_and_reports_failures_per_item(flaky):
    FlakyHandler.script = [400]
    client = flaky_client(flaky, concurrency=3)
    done = []
    results = client.complete_many([ask(str(i)) for i in range(6)], on_done=lambda i, r: done.append(i))
    assert sorted(done) == list(range(6))
    assert sum(isinstance(r, TeacherError) for r in results) == 1
    assert sum(getattr(r, "text", None) == "ok" for r in results) == 5


def test_local_teacher_is_shared_and_stopped(workspace):
    first = local_teacher(student_gguf_path(), **SMALL)
    try:
        second = local_teacher(student_gguf_path(), **SMALL)
        assert second.pid == first.pid and second.base_url == first.base_url
        assert json.loads((workspace / "teacher" / "server.json").read_text())["pid"] == first.pid
        assert TeacherClient(second.config(max_tokens=4)).complete(ask("Hi")).text is not None
    finally:
        assert stop_local_teacher()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and healthy(first.base_url):
        time.sleep(0.2)
    assert not healthy(first.base_url)
    assert not os.path.exists(workspace / "teacher" / "server.json")
