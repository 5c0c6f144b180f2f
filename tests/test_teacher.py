"""Teacher client against a real llama.cpp server (SmolLM2 GGUF) and tiny hostile HTTP servers
(flaky, trickling, echoing the key, answering null)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from openai_stub import EchoKey, QuietHandler, Scripted, Trickle, chat_completion, reply, serve

from distill.llama_server import LocalTeacherServer, ServerError, healthy, local_teacher, stop_local_teacher
from distill.models import student_gguf_path
from distill.teacher import TeacherCache, TeacherClient, TeacherConfig, TeacherError, allowed_key_envs

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
    client = TeacherClient(TeacherConfig.for_server(server, max_tokens=16, concurrency=2))
    one = client.complete(ask("What is 2 + 3? Answer with a number."))
    assert one.text.strip() and one.usage["prompt_tokens"] > 5 and one.usage["completion_tokens"] > 0
    prompts = [ask(f"Repeat the word number {i}.") for i in range(3)]
    results = client.complete_many(prompts)
    assert all(r.text for r in results) and len(results) == 3
    assert client.usage.requests == 4 and client.usage.failures == 0
    assert client.usage.completion_tokens >= sum(r.usage["completion_tokens"] for r in results)


def test_cache_answers_repeats_without_calling(server, workspace):
    cache = TeacherCache()
    client = TeacherClient(TeacherConfig.for_server(server, max_tokens=8), cache)
    first = client.complete(ask("Name a colour."))
    again = client.complete(ask("Name a colour."))
    assert again.cached and again.text == first.text and client.usage.requests == 1
    other_sample = client.complete(ask("Name a colour."), sample=1, temperature=0.8)
    assert not other_sample.cached
    assert cache.stats() == {"entries": 2, "calls": 2, "repeated_calls": 0}
    # a new process-level client (a re-run) reads the same file
    rerun = TeacherClient(TeacherConfig.for_server(server, max_tokens=8), TeacherCache())
    assert rerun.complete(ask("Name a colour.")).cached and rerun.usage.requests == 0
    assert str(cache.path).startswith(str(workspace))


def test_api_key_comes_from_env_and_is_never_written(server, workspace, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-should-not-persist-1234")
    config = TeacherConfig.for_server(server, max_tokens=4)
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
        state = json.loads((workspace / "teacher" / "server.json").read_text())
        assert state["pid"] == first.pid and state["options"]["cache_prompt"] is True
        assert TeacherClient(TeacherConfig.for_server(second, max_tokens=4)).complete(ask("Hi")).text is not None
        # a job asking for other server options gets a server started with them
        other = local_teacher(student_gguf_path(), **SMALL, cache_prompt=False)
        assert other.pid != first.pid and other.options["cache_prompt"] is False
        assert not healthy(first.base_url)
        assert json.loads((workspace / "teacher" / "server.json").read_text())["pid"] == other.pid
    finally:
        assert stop_local_teacher()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and healthy(other.base_url):
        time.sleep(0.2)
    assert not healthy(other.base_url)
    assert not os.path.exists(workspace / "teacher" / "server.json")


# ------------------------------------------------------------------ hostile servers (issue 8)


@pytest.fixture
def trickle():
    Trickle.hits, Trickle.interval = [], 1.0
    with serve(Trickle) as url:
        yield url


@pytest.mark.timeout(60)
def test_timeout_is_the_total_deadline_of_one_request(trickle):
    """A server trickling a byte a second never trips httpx's per-read timeout; ours is total."""
    client = TeacherClient(TeacherConfig(base_url=trickle, model="m", timeout=2, max_retries=1, backoff_base=0.05))
    start = time.monotonic()
    with pytest.raises(TeacherError, match="after 2 attempts"):
        client.complete(ask("q"))
    elapsed = time.monotonic() - start
    assert len(Trickle.hits) == 2 and 4 <= elapsed < 7, elapsed
    assert client.usage.retries == 1 and client.usage.failures == 1
    # a slow answer that completes within the deadline still arrives (reads wake many times)
    Trickle.interval = 0.005  # ~350 bytes in about 2 s
    slow = TeacherClient(TeacherConfig(base_url=trickle, model="m", timeout=20, max_retries=0))
    assert slow.complete(ask("q")).text == "Therefore, the answer is 1."


def test_empty_answers_are_not_cached_and_are_asked_again(workspace):
    Scripted.answers, Scripted.calls = [None, "", " \n", "Therefore, the answer is 72."], []
    with serve(Scripted) as url:
        client = TeacherClient(TeacherConfig(base_url=url, model="m"), TeacherCache())
        for _ in range(3):
            with pytest.raises(TeacherError, match="empty answer"):
                client.complete(ask("q"))
        assert client.complete(ask("q")).text == "Therefore, the answer is 72."
        assert client.complete(ask("q")).cached
    assert len(Scripted.calls) == 4 and client.usage.failures == 3
    assert TeacherCache().stats() == {"entries": 1, "calls": 4, "repeated_calls": 3}


KEY = "sk-test-0123456789-must-never-be-stored"


@pytest.mark.parametrize("mode", ["error", "answer", "everywhere"])
def test_a_server_echoing_the_key_never_gets_it_stored(workspace, monkeypatch, mode):
    monkeypatch.setenv("MY_TEACHER_KEY", KEY)
    EchoKey.mode, EchoKey.seen = mode, []
    with serve(EchoKey) as url:
        client = TeacherClient(
            TeacherConfig(base_url=url, model="m", api_key_env="MY_TEACHER_KEY", max_retries=0), TeacherCache()
        )
        if mode == "error":
            with pytest.raises(TeacherError) as caught:
                client.complete(ask("q"))
            text = str(caught.value)
            assert caught.value.__cause__ is None  # no chained exception carries the raw body
        else:
            answer = client.complete(ask("q"))
            text = answer.text
            assert KEY not in f"{answer.model} {answer.finish_reason} {answer.usage}"
    assert EchoKey.seen == [f"Bearer {KEY}"]  # it was sent, to the server it was meant for
    assert KEY not in text and "[redacted]" in text
    for path in workspace.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_allowed_key_envs_are_only_what_the_operator_declared(monkeypatch):
    monkeypatch.delenv("NESY_TEACHER_KEY_ENVS", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")  # set in the environment, but not declared
    assert allowed_key_envs() == [] and allowed_key_envs(base_url="https://api.openai.com/v1") == []
    monkeypatch.setenv(
        "NESY_TEACHER_KEY_ENVS", " OPENAI_API_KEY@api.openai.com, VLLM_KEY@gpu-box:8000 ,bad-name,,ANY_KEY"
    )
    assert allowed_key_envs() == ["OPENAI_API_KEY", "VLLM_KEY", "ANY_KEY"]
    assert allowed_key_envs(base_url="https://api.openai.com/v1") == ["OPENAI_API_KEY", "ANY_KEY"]
    assert allowed_key_envs(base_url="https://API.openai.com:443/v1") == ["OPENAI_API_KEY", "ANY_KEY"]
    assert allowed_key_envs(base_url="http://gpu-box:8000/v1") == ["VLLM_KEY", "ANY_KEY"]
    assert allowed_key_envs(base_url="http://gpu-box:9000/v1") == ["ANY_KEY"]
    for evil in (
        "https://api.openai.com.evil.example/v1",
        "https://evil.example/api.openai.com/v1",
        "https://api.openai.com@evil.example/v1",
        "http://gpu-box:bad/v1",
        "not a url",
    ):
        assert allowed_key_envs(base_url=evil) == ["ANY_KEY"], evil
    secrets = {"teacher_key_envs": ["S_KEY@api.openai.com", "S_ANY"]}
    assert allowed_key_envs(secrets, "https://api.openai.com/v1")[-2:] == ["S_KEY", "S_ANY"]
    assert "S_KEY" not in allowed_key_envs(secrets, "https://evil.example/v1")
    assert allowed_key_envs({"teacher_key_envs": "A_KEY, B_KEY"})[-2:] == ["A_KEY", "B_KEY"]

    class NoSecretsFile:
        def get(self, name):
            raise FileNotFoundError("no secrets.toml")

    assert allowed_key_envs(NoSecretsFile()) == ["OPENAI_API_KEY", "VLLM_KEY", "ANY_KEY"]


def test_a_server_that_cannot_start_names_its_log(workspace, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    with pytest.raises(ServerError, match=r"exited with -?\d+ \(log: .*server-\d+\.log\)") as caught:
        LocalTeacherServer(broken, n_ctx=256, threads=1).start()
    log = Path(str(caught.value).rsplit("log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "broken.gguf" in log.read_text(errors="replace")
