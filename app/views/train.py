"""Train student: LoRA training for std-cot / nesycd / skintern / etd / eotd as a background job.

Every option is passed explicitly, so the command shown is exactly what runs (and reruns the same
from a shell). Defaults mirror `nesy train --help`.
"""
from __future__ import annotations

import streamlit as st

import re

import ui
from distill import data
from kb.workspace import InvalidName, check_name

HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def name_problem(name: str, label: str) -> str | None:
    try:
        check_name(name, label)
    except InvalidName as e:
        return str(e)
    return None


METHODS = {
    "std-cot": "Std-CoT: fine-tune on teacher rationales (question → rationale).",
    "nesycd": "NesyCD: S_P on rationales → collect errors → teacher knowledge into the KB → "
              "S_E trained with knowledge for the wrong cases; answers with retrieval.",
    "skintern": "SKIntern: staged training that removes knowledge and demonstrations step by "
                "step; answers from the question alone.",
    "etd": "ETD: mix of CoT, PoT and EoT rationales, selected by trigger at inference.",
    "eotd": "EoTD: equation-of-thought rationales solved by sympy.",
}

st.title("Train a student")
sets = data.list_rationale_sets()
if not sets:
    st.info("No rationale sets yet. Generate one on **Teacher jobs** (Rationales), or import a "
            "records.jsonl from the CLI (`nesy train --data FILE` reads a file by path).")

c = st.columns([1, 2])
method = c[0].selectbox("Method", list(METHODS), key="t:method")
c[1].caption(METHODS[method])
c = st.columns(3)
source = c[0].selectbox("Training data", sets, key="t:data") or ""
suggested = f"{method}-{source or 'student'}"
output = c[1].text_input("Adapter name", key="t:output", placeholder=suggested,
                         help="Saved under adapters/<name>; Compare can load it.").strip() or suggested
base = c[2].text_input("Base model", "", key="t:base", placeholder="embedded SmolLM2-135M",
                       help="A Hugging Face id (org/name); empty = the embedded student. "
                            "A local folder is given on the CLI (`--base-model PATH`).")

st.subheader("LoRA and optimiser")
c = st.columns(4)
lora_r = c[0].number_input("LoRA r", 1, 512, 32, key="t:r")
lora_alpha = c[1].number_input("LoRA alpha", 1, 1024, 64, key="t:alpha")
dropout = c[2].number_input("LoRA dropout", 0.0, 0.9, 0.0, step=0.05, key="t:dropout")
targets = c[3].text_input("Target modules", "all-linear", key="t:targets")
c = st.columns(4)
lr = c[0].number_input("Learning rate", 1e-6, 1e-1, 2e-4, step=1e-5, format="%.1e", key="t:lr")
scheduler = c[1].selectbox("Scheduler", ["cosine", "linear", "constant"], key="t:sched")
warmup = c[2].number_input("Warmup ratio", 0.0, 0.5, 0.1, step=0.05, key="t:warmup")
epochs = c[3].number_input("Epochs", 0.1, 100.0, 3.0, step=1.0, key="t:epochs")
c = st.columns(4)
batch = c[0].number_input("Batch size", 1, 512, 4, key="t:batch")
accum = c[1].number_input("Gradient accumulation", 1, 512, 1, key="t:accum")
max_len = c[2].number_input("Max length (tokens)", 64, 32768, 512, step=64, key="t:maxlen")
max_steps = c[3].number_input("Max steps (-1 = by epochs)", -1, 10_000_000, -1, key="t:maxsteps")
c = st.columns(3)
limit = c[0].number_input("Use first N records (0 = all)", 0, 10_000_000, 0, key="t:limit")
save_steps = c[1].number_input("Checkpoint every N steps", 1, 100_000, 50, key="t:save")
seed = c[2].number_input("Seed", 0, 2**31 - 1, 42, key="t:seed")

extra: list[str] = []
if method == "nesycd":
    st.subheader("NesyCD")
    c = st.columns(2)
    if c[0].checkbox("Accept generated knowledge automatically", key="t:auto"):
        extra.append("--auto-accept")
    teacher = c[1].text_input("Teacher for the knowledge job", "local", key="t:teacher",
                              help="'local' or an OpenAI-compatible base URL.")
    extra += ["--teacher", teacher.strip()]
elif method == "skintern":
    st.subheader("SKIntern schedule")
    c = st.columns(3)
    stages = c[0].number_input("Stages T", 1, 20, 4, key="t:stages")
    demos = c[1].number_input("Demonstrations at stage 0", 0, 16, 6, key="t:demos")
    selection = c[2].selectbox("Demonstration choice", ["similar", "random"], key="t:demo-sel")
    extra += ["--stages", str(stages), "--demos", str(demos), "--demo-selection", selection]
    st.caption(f"Knowledge shrinks linearly to none over {stages} stages; demonstrations go "
               f"from {demos} to 0. Inference sees only the question.")
elif method == "etd":
    thoughts = st.multiselect("Thought types", ["cot", "pot", "eot"], ["cot", "pot", "eot"],
                              key="t:thoughts")
    extra += ["--thoughts", ",".join(thoughts)]

argv = ["train", "--method", method, "--data", source, "--output", output,
        *(["--base-model", base.strip()] if base.strip() else []),
        "--lora-r", str(lora_r), "--lora-alpha", str(lora_alpha), "--lora-dropout", str(dropout),
        "--target-modules", targets.strip(), "--lr", str(lr), "--lr-scheduler", scheduler,
        "--warmup-ratio", str(warmup), "--epochs", str(epochs), "--max-steps", str(max_steps),
        "--batch-size", str(batch), "--grad-accum", str(accum), "--max-length", str(max_len),
        "--seed", str(seed), "--save-steps", str(save_steps),
        *(["--limit", str(limit)] if limit else []), *extra]
ui.command_preview(argv)
problem = ("Choose training data." if not source else
           name_problem(output, "Adapter name") or
           (None if not base.strip() or HF_ID.fullmatch(base.strip()) else
            "Base model must be a Hugging Face id like org/name (the app takes no paths)."))
if problem:
    st.warning(problem)
if st.button("Start training", type="primary", disabled=bool(problem), key="t:start"):
    ui.submit_job(argv, "train", name=f"train {output}")
st.caption("A cancelled or failed training job resumes from its last checkpoint (Jobs → Resume "
           "adds `--resume`).")
