"""Compare's warm student: one `nesy answer --session` job, loaded once, answers many requests.

The session runs as a real job with the real embedded 135M student (what the Compare page runs);
requests go in through distill.answer_session, the way the page hands them over."""

from __future__ import annotations

import re

import pytest
from student_fixtures import add_apples_entry, tiny_model  # noqa: F401
from waiting import wait_until

from distill import answer_session, jobs
from distill.progress import STOPPED_EXIT_CODE, read_jsonl
from kb.store import KBStore

STUDENT = {"base": None, "adapter": None, "backend": "transformers"}
QUESTION = "Tom has 3 apples and buys 2 more. How many?"


@pytest.fixture(autouse=True)
def no_session_left():
    """A failed test must not leave a session job waiting out its idle timeout."""
    yield
    for job in jobs.list_jobs():
        if job.active:
            jobs.wait(jobs.cancel(job.id, grace=5).id, timeout=30)


def events(job_id: str) -> list[dict]:
    return read_jsonl(jobs.home() / "jobs" / job_id / answer_session.EVENTS)


def served(job_id: str, request_id: str) -> list[dict]:
    """The request's events once its `served` event is written (else []); a session that ended
    without serving it fails the test at once."""
    mine = [e for e in events(job_id) if e.get("request") == request_id]
    if any(e["event"] == "served" for e in mine):
        return mine
    job = jobs.get(job_id)
    assert job.active, f"the session {job.status} without serving request {request_id}: {jobs.log_tail(job_id)}"
    return []


@pytest.mark.slow
def test_a_session_loads_the_student_once_and_serves_requests_until_idle():
    add_apples_entry()
    job, first = answer_session.ask_warm(
        STUDENT, {"question": QUESTION, "gold": "5", "max_new_tokens": 8}, idle_timeout=20
    )
    one = wait_until(lambda: served(job.id, first), 600, "the first answer")
    assert {e["side"] for e in one if e["event"] == "done"} == {"without", "with"}
    starts = {e["side"]: e for e in one if e["event"] == "start"}
    assert [e for e, _ in starts["with"]["retrieved"]] == ["apples"] and starts["without"]["retrieved"] == []
    assert KBStore().impact()["apples"]["retrieved"] == 1  # gold given: the comparison is recorded

    # the page finds the same live session for the same student and asks again: no second load
    assert answer_session.live_session(STUDENT, idle_timeout=20).id == job.id
    loaded_before = [e for e in events(job.id) if e["event"] == "loaded"]
    same, second = answer_session.ask_warm(
        STUDENT, {"question": "What is 2 + 2?", "kb": True, "compare": False, "max_new_tokens": 4}, idle_timeout=20
    )
    assert same.id == job.id and second != first
    two = wait_until(lambda: served(job.id, second), 120, "the second answer")
    assert [e["side"] for e in two if e["event"] == "done"] == ["with"]  # only the asked side
    assert [e for e in events(job.id) if e["event"] == "loaded"] == loaded_before  # loaded once
    assert len(loaded_before) == 1 and loaded_before[0].get("request") is None
    assert all(e["time"] > loaded_before[0]["time"] for e in two)
    # every event of a request carries its id, so the page folds only its own
    per_request = [e for e in events(job.id) if e["event"] in ("request", "start", "token", "done", "served")]
    assert {e["request"] for e in per_request} == {first, second}

    # a malformed request gets an error event of its own, and the session keeps serving
    bad = answer_session.ask(job.id, {"question": QUESTION, "thought": "tot"})
    garbage = answer_session.ask(job.id, {"question": ""})
    after = answer_session.ask(job.id, {"question": QUESTION, "kb": False, "max_new_tokens": 2})
    refused = wait_until(lambda: served(job.id, bad), 120, "the refused request")
    assert [e["event"] for e in refused] == ["request", "error", "served"]  # refused before any answer
    assert "--thought must be one of" in next(e["message"] for e in refused if e["event"] == "error")
    assert "no question" in next(e["message"] for e in served(job.id, garbage) if e["event"] == "error")
    three = wait_until(lambda: served(job.id, after), 120, "the answer after the refused ones")
    assert [e["side"] for e in three if e["event"] == "done"] == ["without"]

    # idle for 20 s: the job ends on its own, succeeded, and takes no more requests
    done = jobs.wait(job.id, timeout=120)
    assert (done.status, done.exit_code) == ("succeeded", 0), jobs.log_tail(job.id)
    assert events(job.id)[-1]["event"] == "ended" and "no request for 20 s" in events(job.id)[-1]["reason"]
    with pytest.raises(answer_session.SessionClosed):
        answer_session.ask(job.id, {"question": QUESTION})
    assert answer_session.live_session(STUDENT, idle_timeout=20) is None


def test_a_request_file_that_is_not_json_is_refused_and_the_next_is_answered(tiny_model):
    """Protocol only, with a tiny model: garbage written straight into the folder."""
    model = {"base": tiny_model, "adapter": None, "backend": "transformers"}
    job = answer_session.start_session(model, idle_timeout=10)
    folder = job.dir / answer_session.REQUESTS
    (folder / "1.json").write_text("{not json", encoding="utf-8")
    good = answer_session.ask(job.id, {"question": QUESTION, "kb": False, "max_new_tokens": 2})
    assert good == "2"
    refused = wait_until(lambda: served(job.id, "1"), 300, "the refusal")
    assert next(e for e in refused if e["event"] == "error")["message"].startswith("the request is not JSON")
    answered = wait_until(lambda: served(job.id, good), 60, "the next answer")
    assert [e["side"] for e in answered if e["event"] == "done"] == ["without"]
    assert jobs.wait(job.id, timeout=60).status == "succeeded", jobs.log_tail(job.id)


def test_a_waiting_job_ends_an_idle_session_and_cancel_stops_an_answer(tiny_model):
    model = {"base": tiny_model, "adapter": None, "backend": "transformers"}
    job, rid = answer_session.ask_warm(model, {"question": QUESTION, "kb": False, "max_new_tokens": 2000})
    wait_until(lambda: [e for e in events(job.id) if e["event"] == "token"], 300, "a streamed token")
    jobs.cancel(job.id, grace=20)
    stopped = jobs.wait(job.id, timeout=60)
    assert (stopped.status, stopped.exit_code) == ("cancelled", STOPPED_EXIT_CODE), jobs.log_tail(job.id)
    last = events(job.id)[-1]
    assert (last["event"], last["request"]) == ("stopped", rid)
    assert not any(e["event"] == "done" for e in events(job.id))

    # a cancelled session takes no requests: the next comparison starts a new one
    warm, _ = answer_session.ask_warm(model, {"question": QUESTION, "kb": False, "max_new_tokens": 2})
    assert warm.id != job.id
    wait_until(lambda: [e for e in events(warm.id) if e["event"] == "served"], 300, "the answer")
    other = jobs.submit(["jobs", "selftest", "--steps", "1", "--seconds-per-step", "0"], "selftest")
    ended = jobs.wait(warm.id, timeout=60)  # the default idle timeout is 10 min: the waiting job ended it
    assert ended.status == "succeeded" and "waiting for a job slot" in events(warm.id)[-1]["reason"]
    assert jobs.wait(other.id, timeout=60).status == "succeeded"


@pytest.mark.slow
def test_the_compare_page_reuses_the_warm_student_and_shows_only_its_own_answer():
    from test_app import run, texts

    add_apples_entry()
    at = run("compare")
    at.number_input(key="cmp:max-new").set_value(16)
    at.text_area(key="cmp:question").set_value(QUESTION)
    at.text_input(key="cmp:gold").set_value("5").run()
    at.button(key="cmp:run").click().run()
    [job] = jobs.list_jobs()
    assert job.argv == answer_session.session_argv(STUDENT)  # the question goes in as a request
    at.run()
    assert at.button(key="cmp:run").disabled  # one comparison at a time
    assert "Loading the student in a background job…" in texts(at) or "Waiting for a free job slot" in texts(at)
    first = at.session_state["cmp:requests"][-1]
    wait_until(lambda: served(job.id, first), 600, "the first comparison")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert re.search(r"0\.\d{3}  apples", texts(at))  # the retrieved entry with its score
    assert "The student stays loaded for the next comparison (until 10 min pass without one)." in texts(at)
    assert KBStore().impact()["apples"]["retrieved"] == 1

    at.text_area(key="cmp:question").set_value("What is 10 + 10?")
    at.text_input(key="cmp:gold").set_value("").run()
    at.button(key="cmp:run").click().run()
    second = at.session_state["cmp:requests"][-1]
    assert [j.id for j in jobs.list_jobs()] == [job.id] and second != first  # the same warm session
    assert "Loading the student" not in texts(at)
    # another browser tab asks the same warm student right after: its answer is not drawn here
    other_tab = answer_session.ask(job.id, {"question": "What is 7 times 6?", "max_new_tokens": 4})
    wait_until(lambda: served(job.id, second), 120, "the second comparison")
    wait_until(lambda: served(job.id, other_tab), 120, "the other tab's comparison")
    at.run()
    assert not any("7 times 6" in c.value for c in at.code)
    prompts = [c.value for c in at.code]
    assert any("What is 10 + 10?" in p for p in prompts) and not any("Tom has 3 apples" in p for p in prompts)
    assert "Gold answer" not in texts(at)
    jobs.cancel(job.id, grace=5)  # a cancelled idle session: the page still shows the last answer
    jobs.wait(job.id, timeout=60)
    at.run()
    assert "Cancelled" not in texts(at) and any("What is 10 + 10?" in p for p in [c.value for c in at.code])


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "the request is not JSON"),
        ("[1]", "the request must be a JSON object"),
        ('{"question": "  "}', "the request has no question"),
        ('{"question": "q", "k": -1}', "request field 'k': Input should be greater than or equal to 0"),
        ('{"question": "q", "kb": "yes"}', "request field 'kb': Input should be a valid boolean"),
        ('{"question": "q", "temperature": 1}', "request field 'temperature': Extra inputs are not permitted"),
        ('{"question": "q", "answer_type": "x"}', "request field 'answer_type': Input should be 'number', 'option'"),
    ],
)
def test_a_bad_request_is_refused_with_one_line_naming_the_field(text, message):
    with pytest.raises(answer_session.BadRequest) as refused:
        answer_session.parse_request(text)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_request_gets_the_defaults_of_what_it_leaves_out():
    request = answer_session.parse_request('{"question": "Q?", "min_score": 1}')
    assert request == {**answer_session.Request(question="Q?").model_dump(), "min_score": 1.0}
    assert (request["kb"], request["compare"], request["answer_type"]) == (True, True, "number")
