"""Jobs: every background job with status, progress and ETA, live curves, log, cancel and resume.

Everything shown is read from the job registry and job folders (distill.jobs), so a reloaded tab or
a restarted app re-attaches to running jobs; nothing lives in this process.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

import ui
from distill import jobs

# Where a finished job's output is used: argv prefix -> (page, label)
OUTPUT_PAGES = {
    ("teach", "rationales"): ("train", "Train a student on these rationales"),
    ("teach", "knowledge"): ("kb", "Review the new pending knowledge"),
    ("train",): ("compare", "Compare answers with the trained adapter"),
    ("eval",): ("evaluate", "See the evaluation results"),
    ("kb", "import"): ("kb", "Open the knowledge base"),
}


def when(t: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def job_table(all_jobs: list[jobs.Job]) -> None:
    rows = []
    for job in all_jobs:
        p = jobs.progress(job.id) or {}
        done = p.get("step", 0) / p["total"] if p.get("total") else None
        rows.append(
            {
                "id": job.id,
                "name": job.name,
                "status": job.status,
                "progress": done,
                "eta": seconds(p.get("eta")) if job.active else "",
                "started": when(job.started),
                "duration": seconds(job.duration()),
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"progress": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent")},
    )


def progress_bar(job: jobs.Job) -> None:
    p = jobs.progress(job.id)
    if not p:
        st.caption("No progress reported yet." if job.active else "This job reported no progress.")
        return
    total = p.get("total") or 0
    fraction = min(1.0, p["step"] / total) if total else 0.0
    eta = f" · ETA {seconds(p['eta'])}" if job.active and p.get("eta") is not None else ""
    st.progress(fraction, text=f"{p.get('stage') or ''} {p['step']}/{total}{eta} · elapsed {seconds(p.get('elapsed'))}")


def curves(job: jobs.Job) -> None:
    rows = jobs.chain_metrics(job.id)  # a resumed job's curve continues the earlier steps
    if len(rows) < 2:
        return
    df = pd.DataFrame(rows)
    if df["job"].nunique() > 1:
        st.caption(
            f"Curves join the {df['job'].nunique()} runs of this job (it resumed "
            f"{ui.md(job.resumed_from)}), steps {int(df['step'].min())}–{int(df['step'].max())}."
        )
    left, right = st.columns(2)
    if "loss" in df:
        left.caption("Loss")
        left.line_chart(df.dropna(subset=["loss"]), x="step", y="loss", height=220)
    speed = "tokens_per_s" if "tokens_per_s" in df else "rate"
    right.caption("Tokens/s" if speed == "tokens_per_s" else "Steps/s")
    right.line_chart(df.dropna(subset=[speed]), x="step", y=speed, height=220)


def actions(job: jobs.Job) -> None:
    left, right, _ = st.columns([1, 1, 4])
    if job.active and left.button("Cancel", key=f"jobs:cancel-{job.id}"):
        jobs.cancel(job.id)
        st.rerun(scope="app")
    why_not = jobs.why_not_resume(job)
    if (
        job.status in ("cancelled", "failed")
        and why_not is None
        and right.button("Resume", key=f"jobs:resume-{job.id}")
    ):
        new = jobs.resume(job.id)
        st.session_state["selected_job"] = new.id
        st.rerun(scope="app")
    elif job.status in ("cancelled", "failed") and why_not:
        st.caption(ui.md(f"Not resumable: {why_not}."))


def outputs(job: jobs.Job) -> None:
    if job.status != "succeeded":
        return
    for prefix, (page, label) in OUTPUT_PAGES.items():
        if tuple(job.argv[: len(prefix)]) == prefix:
            st.page_link(ui.PAGES[page], label=label, icon=":material/arrow_forward:")


def job_detail(job_id: str) -> None:
    job = jobs.get(job_id)
    st.subheader(ui.md(job.name))
    if job.status == "failed":  # one clear line: why
        st.markdown("Status: **failed**")
        st.error(ui.md(job.reason or f"exit code {job.exit_code}"), icon=":material/error:")
    else:
        reason = f" — {job.reason}" if job.reason else ""
        code = f" · exit code {job.exit_code}" if job.exit_code is not None else ""
        st.markdown(f"Status: **{job.status}**{ui.md(reason + code)}")
    if job.resumed_from:
        st.caption(f"Resumes {ui.md(job.resumed_from)}")
    st.code(job.command_line(), language="bash", wrap_lines=True)
    progress_bar(job)
    actions(job)
    curves(job)
    outputs(job)
    st.caption(f"Log (last 40 lines) — {ui.md(job.dir / 'log.txt')}")
    st.code(jobs.log_tail(job.id, 40) or "(empty)", language=None)
    if st.session_state.get("jobs:was-active") and not job.active:
        st.session_state["jobs:was-active"] = False
        st.rerun(scope="app")  # the job ended: refresh the table and buttons once
    st.session_state["jobs:was-active"] = job.active


@st.fragment(run_every=2)
def live_job_detail(job_id: str) -> None:
    job_detail(job_id)


@st.fragment(run_every=2)
def live_job_table() -> None:
    """The table, redrawn while any job is queued or running; once none is, the page reruns."""
    current = jobs.list_jobs()
    job_table(current)
    if not any(j.active for j in current):
        st.rerun(scope="app")


def selftest_launcher() -> None:
    with st.expander("Check the job runner"):
        st.caption(
            "A tiny counting job that reports progress and a loss curve and can be "
            "cancelled and resumed — a quick check that background jobs work here."
        )
        steps = st.number_input("Steps", 1, 10_000, 60, key="jobs:selftest-steps")
        delay = st.number_input("Seconds per step", 0.0, 60.0, 0.5, key="jobs:selftest-delay")
        argv = [
            "jobs",
            "selftest",
            "--steps",
            str(steps),
            "--seconds-per-step",
            str(delay),
            "--checkpoint",
            str(ui.home() / "cache" / "selftest.txt"),
        ]
        ui.command_preview(argv)
        if st.button("Start self-test job", key="jobs:selftest"):
            (ui.home() / "cache").mkdir(exist_ok=True)
            ui.submit_job(argv, "selftest", name="self-test")


st.title("Jobs")
all_jobs = jobs.list_jobs()
if not all_jobs:
    st.info(
        "No jobs yet. Start teacher jobs on **Teacher jobs**, training on **Train student**, "
        "or a batch comparison on **Compare answers**; each runs in the background and "
        "appears here with its progress, log and the equivalent `nesy` command."
    )
else:
    if any(j.active for j in all_jobs):
        live_job_table()
    else:
        job_table(all_jobs)
    ids = [j.id for j in all_jobs]
    wanted = st.session_state.get("selected_job")
    if wanted in ids and wanted != st.session_state.get("jobs:applied"):  # a new request (a job just
        st.session_state["jobs:pick"] = wanted  # started), not the last pick
        st.session_state["jobs:applied"] = wanted
    labels = {j.id: f"{j.id} · {j.name} · {j.status}" for j in all_jobs}
    picked = st.selectbox("Job", ids, format_func=labels.get, key="jobs:pick")
    st.session_state["selected_job"] = st.session_state["jobs:applied"] = picked
    if next(j for j in all_jobs if j.id == picked).active:
        live_job_detail(picked)
    else:
        job_detail(picked)
selftest_launcher()
