"""Jobs run real `nesy` processes: the counting `nesy jobs selftest` uses the real Progress, so
cancel, kill, queue and resume are exercised against what teacher/training commands do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from student_fixtures import add_apples_entry, tiny_model  # noqa: F401
from waiting import wait_until

from distill import jobs
from distill.progress import STOPPED_EXIT_CODE


def selftest(steps=400, per_step=0.05, *extra):
    return ["jobs", "selftest", "--steps", str(steps), "--seconds-per-step", str(per_step), *extra]


def wait_for_step(job_id, step=2):
    return wait_until(lambda: (p := jobs.progress(job_id)) and p["step"] >= step and p, what=f"step {step} of {job_id}")


def test_job_runs_to_success_with_metrics_log_and_command():
    job = jobs.submit(selftest(5, 0.02), "selftest", name="count")
    assert job.command_line() == "nesy jobs selftest --steps 5 --seconds-per-step 0.02"
    done = jobs.wait(job.id, timeout=60)
    assert (done.status, done.exit_code) == ("succeeded", 0)
    rows = jobs.metrics(job.id)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["total"] == 5 and rows[-1]["loss"] == 0.4
    assert jobs.progress(job.id)["step"] == 5
    assert "done: 5 steps" in jobs.log_tail(job.id, 10)
    assert (job.dir / "config.json").exists() and (job.dir / "exit_code").read_text() == "0"


def test_cancel_stops_cleanly_at_next_step():
    job = jobs.submit(selftest(), "selftest")
    first = wait_for_step(job.id)
    assert jobs.get(job.id).status == "running"
    jobs.cancel(job.id, grace=30)
    done = jobs.wait(job.id, timeout=30)
    assert done.status == "cancelled" and done.exit_code == STOPPED_EXIT_CODE
    assert done.reason == "stopped cleanly on request"
    assert first["step"] <= jobs.progress(job.id)["step"] < 400
    assert "stopped after step" in jobs.log_tail(job.id)


def test_cancel_escalates_to_sigkill_when_the_step_does_not_end():
    job = jobs.submit(selftest(3, 60), "selftest")  # one step sleeps 60 s: no step boundary soon
    wait_until(lambda: jobs.get(job.id).pid, what="command pid")
    time.sleep(1.0)  # let Progress install its stop handler
    started = time.monotonic()
    jobs.cancel(job.id, grace=1.0)
    done = jobs.wait(job.id, timeout=30)
    assert done.status == "cancelled" and done.exit_code == -signal.SIGKILL
    assert "SIGKILL" in done.reason and time.monotonic() - started < 20


def test_killed_command_is_marked_failed_with_reason():
    job = jobs.submit(selftest(), "selftest")
    wait_for_step(job.id)
    os.kill(jobs.get(job.id).pid, signal.SIGKILL)
    done = jobs.wait(job.id, timeout=30)
    assert done.status == "failed" and done.reason == "killed by signal SIGKILL"


def test_vanished_runner_and_command_are_detected_by_refresh():
    job = jobs.submit(selftest(), "selftest")
    wait_for_step(job.id)
    running = jobs.get(job.id)
    os.kill(running.runner_pid, signal.SIGKILL)  # runner first, so nobody records an exit code
    os.kill(running.pid, signal.SIGKILL)
    done = wait_until(lambda: (j := jobs.get(job.id)).status != "running" and j, what="refresh")
    assert done.status == "failed" and "disappeared" in done.reason


def test_a_command_that_outlives_its_killed_runner_is_recorded_with_its_own_exit_status():
    job = jobs.submit(selftest(30, 0.1), "selftest")
    wait_for_step(job.id)
    os.kill(jobs.get(job.id).runner_pid, signal.SIGKILL)  # only the watcher dies
    done = jobs.wait(job.id, timeout=60)
    assert (done.status, done.exit_code) == ("succeeded", 0), done.reason
    assert jobs.progress(job.id)["step"] == 30


def test_failing_command_and_bad_command_are_failed_with_exit_codes():
    failing = jobs.submit(selftest(5, 0.01, "--fail-at", "2"), "selftest")
    bad = jobs.submit(["no-such-command"], "x")
    assert jobs.wait(failing.id, timeout=60).exit_code == 1
    done_bad = jobs.wait(bad.id, timeout=60)
    assert (done_bad.status, done_bad.exit_code) == ("failed", 2)
    assert jobs.get(failing.id).status == "failed"
    assert "failing at step 2" in jobs.log_tail(failing.id)
    with pytest.raises(ValueError):
        jobs.submit([], "x")
    with pytest.raises(KeyError):
        jobs.get("nope")


def test_queue_runs_one_at_a_time_and_starts_the_next_when_a_slot_frees():
    first = jobs.submit(selftest(), "selftest")
    second = jobs.submit(selftest(3, 0.01), "selftest")
    third = jobs.submit(selftest(3, 0.01), "selftest")
    assert jobs.get(second.id).status == "queued" and jobs.get(third.id).status == "queued"
    wait_for_step(first.id)
    assert jobs.get(second.id).status == "queued"  # still waiting: the limit is 1
    jobs.cancel(third.id)
    assert jobs.get(third.id).status == "cancelled" and jobs.get(third.id).started is None
    jobs.cancel(first.id)
    # nobody calls refresh here: the first job's runner starts the next one when it ends
    done = wait_until(
        lambda: (j := jobs.get(second.id, refresh_first=False)).status == "succeeded" and j, what="second job to run"
    )
    assert done.started >= jobs.get(first.id).finished - 0.5
    assert jobs.get(third.id).status == "cancelled"


def test_resume_continues_from_checkpoint_as_a_new_job(tmp_path):
    ckpt = tmp_path / "ckpt.txt"
    job = jobs.submit(selftest(60, 0.05, "--checkpoint", str(ckpt)), "selftest")
    wait_for_step(job.id, 3)
    jobs.cancel(job.id)
    stopped = jobs.wait(job.id, timeout=30)
    assert stopped.status == "cancelled"
    reached = int(ckpt.read_text())
    with pytest.raises(ValueError):
        jobs.resume(jobs.submit(selftest(), "selftest").id)  # running jobs cannot be resumed
    jobs.cancel(jobs.list_jobs(status="running")[0].id)
    resumed = jobs.resume(job.id)
    assert resumed.id != job.id and resumed.resumed_from == job.id
    assert resumed.argv[-1] == "--resume" and resumed.command_line().endswith("--resume")
    done = jobs.wait(resumed.id, timeout=90)
    assert done.status == "succeeded"
    steps = [r["step"] for r in jobs.metrics(resumed.id)]
    assert steps[0] == reached + 1 and steps[-1] == 60


def test_resume_rule_per_command():
    assert jobs.resume_argv(["train", "--method", "nesycd"])[-1] == "--resume"
    assert jobs.resume_argv(["train", "--resume"]) == ["train", "--resume"]
    assert jobs.resume_argv(["teach", "rationales", "--dataset", "gsm8k"]) == [
        "teach",
        "rationales",
        "--dataset",
        "gsm8k",
    ]


def test_state_is_reattached_by_other_processes_after_the_launcher_exits(workspace):
    env = {**os.environ, "NESY_HOME": str(workspace)}
    nesy = [sys.executable, "-m", "distill.cli"]
    out = subprocess.run(
        [*nesy, "jobs", "submit", "--", *selftest(400, 0.05)], env=env, capture_output=True, text=True, check=True
    ).stdout
    job_id = out.split()[0]  # the launcher has exited; the job lives on
    wait_for_step(job_id)
    assert jobs.get(job_id).status == "running"  # a new process sees it running
    listing = subprocess.run([*nesy, "jobs", "list"], env=env, capture_output=True, text=True).stdout
    assert job_id in listing and "running" in listing
    cancelled = subprocess.run([*nesy, "jobs", "cancel", job_id, "--wait"], env=env, capture_output=True, text=True)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert jobs.get(job_id).exit_code == STOPPED_EXIT_CODE


def test_cli_reports_bad_input_in_one_line():
    env = {**os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "jobs", "show", "nope"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.strip() == "error: no job 'nope' (see `nesy jobs list`)"


def test_a_command_that_cannot_start_fails_with_the_reason(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    job = jobs.submit(selftest(3, 0.01), "selftest")  # remembers this folder as its cwd
    monkeypatch.chdir(tmp_path)
    gone.rmdir()
    done = jobs.wait(job.id, timeout=60)
    assert done.status == "failed" and "could not start" in done.reason


# ------------------------------------------------- outcomes: nothing produced, one failure line


def test_a_teacher_job_that_kept_nothing_fails_with_the_reason_and_cannot_be_resumed():
    from openai_stub import Scripted, serve

    Scripted.answers, Scripted.calls = ["The answer is 999999."], []  # wrong for every question
    with serve(Scripted) as url:
        job = jobs.submit(
            [
                "teach",
                "rationales",
                "--dataset",
                "gsm8k",
                "--split",
                "train",
                "--limit",
                "2",
                "--teacher",
                url,
                "--model",
                "stub",
                "--api-key-env",
                "",
                "--out",
                "none-kept",
                "--concurrency",
                "1",
            ],
            "teach-rationales",
        )
        done = jobs.wait(job.id, timeout=120)
    assert done.exit_code == 0, jobs.log_tail(job.id)  # the command itself ran to the end
    assert done.status == "failed", jobs.log_tail(job.id)
    assert done.reason.startswith("produced nothing: kept 0 of 2 rationales")
    assert jobs.why_not_resume(done).startswith("it ran to the end and produced nothing")
    with pytest.raises(ValueError, match="cannot be resumed"):
        jobs.resume(job.id)


def test_a_failed_job_says_why_in_one_line_and_bad_input_is_not_resumable():
    failing = jobs.wait(jobs.submit(selftest(5, 0.01, "--fail-at", "2"), "selftest").id, timeout=60)
    assert failing.reason == "exit code 1: failing at step 2 as asked"
    assert jobs.why_not_resume(failing) is None  # a checkpointed command: resuming can help
    refused = jobs.wait(jobs.submit(["jobs", "selftest", "--steps", "0"], "selftest").id, timeout=60)
    assert refused.status == "failed" and refused.exit_code == 2
    assert "fix the command" in jobs.why_not_resume(refused)
    other = jobs.wait(jobs.submit(["kb", "stats"], "kb").id, timeout=60)
    assert other.status == "succeeded" and jobs.why_not_resume(other) == "it succeeded"


def test_a_resumed_jobs_curve_joins_the_earlier_steps(tmp_path):
    ckpt = tmp_path / "ckpt.txt"
    job = jobs.submit(selftest(30, 0.05, "--checkpoint", str(ckpt)), "selftest")
    wait_for_step(job.id, 4)
    jobs.wait(jobs.cancel(job.id).id, timeout=30)
    resumed = jobs.resume(job.id)
    assert jobs.wait(resumed.id, timeout=90).status == "succeeded"
    assert jobs.metrics(resumed.id)[0]["step"] > 1  # alone, the resumed run starts mid-way
    rows = jobs.chain_metrics(resumed.id)
    assert [r["step"] for r in rows] == list(range(1, 31))  # one curve, no gap, no repeated step
    assert {r["job"] for r in rows} == {job.id, resumed.id}
    assert [j.id for j in jobs.chain(resumed.id)] == [job.id, resumed.id]


# ------------------------------------------------------------- Compare: a streaming answer job


def answer_events(job_id):
    from distill.infer import EventWriter
    from distill.progress import read_jsonl

    return read_jsonl(jobs.home() / "jobs" / job_id / EventWriter.FILE)


@pytest.mark.slow
def test_answer_job_streams_tokens_and_cancel_stops_it_at_the_next_token(tiny_model):
    add_apples_entry()
    job = jobs.submit(
        [
            "answer",
            "Tom has 3 apples and buys 2 more. How many?",
            "--kb",
            "--events",
            "--compare",
            "--base-model",
            tiny_model,
            "--max-new-tokens",
            "2000",
            "--min-score",
            "-1",
        ],
        "compare",
    )
    tokens = wait_until(
        lambda: [e for e in answer_events(job.id) if e["event"] == "token"],
        timeout=180,
        what="the first streamed token",
    )
    events = answer_events(job.id)
    loaded = next(e for e in events if e["event"] == "loaded")
    first = tokens[0]["time"] - loaded["time"]
    print(f"first token {first:.2f} s after the student was loaded (load {loaded['seconds']:.1f} s)")
    assert first < 2.0
    start = next(e for e in events if e["event"] == "start")
    assert start["side"] == "without" and "Question: Tom has 3 apples" in start["prompt"]
    assert start["rendered"].startswith("<|im_start|>") and start["retrieved"] == []
    jobs.cancel(job.id, grace=20)
    done = jobs.wait(job.id, timeout=60)
    assert (done.status, done.exit_code) == ("cancelled", STOPPED_EXIT_CODE), jobs.log_tail(job.id)
    after = answer_events(job.id)
    assert after[-1]["event"] == "stopped" and not any(e["event"] == "done" for e in after)
    assert len([e for e in after if e["event"] == "token"]) < 2000


@pytest.mark.slow
def test_answer_job_compares_both_sides_with_prompts_and_retrieved_scores(tiny_model):
    from kb.store import KBStore

    add_apples_entry()
    argv = [
        "answer",
        "Tom has 3 apples and buys 2 more. How many?",
        "--kb",
        "--events",
        "--compare",
        "--base-model",
        tiny_model,
        "--max-new-tokens",
        "8",
        "--gold",
        "5",
    ]
    done = jobs.wait(jobs.submit(argv, "compare").id, timeout=300)
    assert done.status == "succeeded", jobs.log_tail(done.id)
    starts = {e["side"]: e for e in answer_events(done.id) if e["event"] == "start"}
    assert starts["without"]["retrieved"] == [] and [e for e, _ in starts["with"]["retrieved"]] == ["apples"]
    assert "Total = start + bought." in starts["with"]["prompt"] and "Total =" not in starts["without"]["prompt"]
    assert {e["side"] for e in answer_events(done.id) if e["event"] == "done"} == {"without", "with"}
    assert KBStore().impact()["apples"]["retrieved"] == 1  # counted once per (question, student)
    floor = jobs.wait(jobs.submit([*argv[:-2], "--min-score", "0.99"], "compare").id, timeout=300)
    empty = {e["side"]: e for e in answer_events(floor.id) if e["event"] == "start"}["with"]
    assert empty["retrieved"] == [] and empty["retrieval_empty"] and empty["min_score"] == 0.99
