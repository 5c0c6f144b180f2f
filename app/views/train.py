"""Train student: the form is generated from the method's config (`distill/methods/`), the same
fields `nesy train METHOD` has, and the command shown is exactly what the job runs."""
from __future__ import annotations

import streamlit as st

import ui
from config_form import config_form, keep, remembered
from distill import data
from distill.methods import METHODS
from distill.methods.options import from_options, to_argv
from distill.train import TrainOptions
from kb.errors import NesyError

st.title("Train a student")
if not data.list_rationale_sets():
    st.info("No rationale sets yet. Generate one on **Teacher jobs** (Rationales), or import a "
            "records.jsonl from the CLI (`nesy train METHOD --data FILE` reads a file by path).")

remembered("t:method", "std-cot")
c = st.columns([1, 2])
method = METHODS[c[0].selectbox("Method", list(METHODS), key="t:method")]
keep("t:method")
c[1].caption(method.summary)
values, problems = config_form(method.config, TrainOptions)
values["output"] = (values.get("output") or "").strip() or f"{method.name}-{values.get('data') or 'student'}"
given = {k: v for k, v in values.items() if v is not None and v != ""}

argv, cfg = None, None
try:
    cfg = from_options(method.config, given)
    argv = to_argv(method.name, cfg)
except NesyError as e:
    problems.insert(0, str(e))
if argv:
    ui.command_preview(argv)
for problem in problems:
    st.warning(problem)
if st.button("Start training", type="primary", disabled=bool(problems), key="t:start"):
    ui.submit_job(argv, "train", name=f"train {cfg.output}")
st.caption("A cancelled or failed training job resumes from its last checkpoint (Jobs → Resume "
           "adds `--resume`).")
