"""Teacher jobs: generate rationales (CoT/PoT/EoT) or distil knowledge into pending KB entries.

The page only builds a `nesy teach ...` argv, shows it, and submits it as a background job.
API keys are never put on the command line or on disk: the job reads them from an environment
variable, which may be filled from Streamlit secrets for this server's processes. Only the
variables the operator declared for teacher keys can be chosen (distill.teacher.allowed_key_envs:
$NESY_TEACHER_KEY_ENVS or the secret `teacher_key_envs`, optionally bound to a host); no other
server variable is listed or sent. No filesystem path is taken from the browser: the student
error file is chosen among the NesyCD runs in the workspace.
"""

from __future__ import annotations

import os

import streamlit as st

import ui
from distill import data, models
from distill.teacher import KEY_ENVS_VAR, allowed_key_envs
from kb.workspace import home

NO_KEY = "(no key)"
EMBEDDED, SERVER = "Embedded local teacher (llama.cpp)", "OpenAI-compatible server"
GOLD = "The dataset's own rationales (gold, no teacher calls)"
ANNOTATIONS = "GSM8K calculator annotations (PoT/EoT, no teacher calls)"

st.title("Teacher jobs")
st.caption(
    "Long work runs as a background job: you can leave this page, follow it on **Jobs**, "
    "cancel it and resume it (finished teacher calls are cached, so nothing is paid twice)."
)


def teacher_options(prefix: str, free: tuple[str, ...] = ()) -> tuple[list[str], str | None]:
    """Teacher arguments, and an error to show instead of starting when they are incomplete.
    `free`: the teacher-less sources this tab offers (gold rationales, calculator annotations)."""
    kind = st.radio("Teacher", [EMBEDDED, SERVER, *free], key=f"{prefix}:teacher", horizontal=True)
    if kind == GOLD:
        st.caption(
            "CoT rationales from the dataset's own human-written solutions (GSM8K, "
            "StrategyQA, AGIEval), verified like a teacher's: a free baseline."
        )
        return ["--teacher", "gold"], None
    if kind == ANNOTATIONS:
        st.caption(
            "PoT programs / EoT equation systems built from GSM8K's calculator annotations, "
            "each run or solved in the sandbox and checked against the gold; one set per thought."
        )
        return ["--teacher", "annotations"], None
    if kind == EMBEDDED:
        model = st.selectbox(
            "Model",
            list(models.TEACHERS),
            key=f"{prefix}:local-model",
            help="Packaged GGUF teachers; assembled once on first use.",
        )
        return ["--teacher", "local", "--model", model], None
    c = st.columns([3, 2, 2])
    url = c[0].text_input(
        "Base URL",
        "http://127.0.0.1:8000/v1",
        key=f"{prefix}:url",
        help="OpenAI, vLLM, Ollama, llama.cpp, LM Studio or TGI.",
    )
    model = c[1].text_input("Model name", key=f"{prefix}:model")
    allowed = allowed_key_envs(_secrets(), url)
    key_env = c[2].selectbox(
        "API key",
        [NO_KEY, *allowed],
        key=f"{prefix}:env",
        help="Only the variables the operator declared for teacher keys; the key itself is never stored or shown.",
    )
    st.caption(api_key_status(key_env) if key_env in allowed else no_key_note(allowed))
    problem = None
    if not url.startswith(("http://", "https://")):
        problem = "The base URL must start with http:// or https://."
    elif not model.strip():
        problem = "Name the model the server should use."
    name = key_env if key_env in allowed else ""  # '' = the job sends no key
    return ["--teacher", url, "--model", model.strip(), "--api-key-env", name], problem


def _secrets():
    try:
        return st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return None


def no_key_note(allowed: list[str]) -> str:
    if allowed:
        return "No key is sent. Local servers usually need none."
    return (
        f"No key is sent. To offer one, the operator declares it before starting the app: "
        f"`{KEY_ENVS_VAR}=OPENAI_API_KEY` (or `OPENAI_API_KEY@api.openai.com` to send it to that "
        "host only), or `teacher_key_envs` in `.streamlit/secrets.toml`."
    )


def api_key_status(name: str) -> str:
    if os.environ.get(name):
        return f"`{name}` is set in this server's environment."
    try:
        secret = st.secrets.get(name)
    except Exception:  # noqa: BLE001 - no secrets file at all
        secret = None
    if secret:
        os.environ[name] = str(secret)  # jobs inherit it; never written to disk
        return f"`{name}` comes from Streamlit secrets (passed to jobs through the environment)."
    return (
        f"`{name}` is not set: export it before starting the app, or add it to "
        "`.streamlit/secrets.toml`. Local servers usually need no key."
    )


@st.cache_data(show_spinner=False, max_entries=64)
def record_count(dataset: str, split: str) -> int | None:
    """How many examples a dataset split has (None: it cannot be read)."""
    try:
        return len(data.get_dataset(dataset).load(split))
    except (data.DatasetError, OSError, ValueError):
        return None


def rationale_counts() -> dict[str, int]:
    """The workspace's rationale sets with their record counts (lines of records.jsonl)."""
    out = {}
    for name in data.list_rationale_sets():
        with open(home() / "datasets" / name / "records.jsonl", "rb") as f:
            out[name] = sum(1 for line in f if line.strip())
    return out


def dataset_options(prefix: str) -> tuple[str, str, int | None]:
    c = st.columns(3)
    names = data.list_datasets()
    dataset = c[0].selectbox(
        "Dataset", names, index=names.index("gsm8k") if "gsm8k" in names else 0, key=f"{prefix}:dataset"
    )
    splits = list(data.get_dataset(dataset).splits)

    def with_count(split: str) -> str:
        n = record_count(dataset, split)
        return split if n is None else f"{split} ({n:,} records)"

    split = c[1].selectbox(
        "Split",
        splits,
        index=splits.index("train") if "train" in splits else 0,
        key=f"{prefix}:split",
        format_func=with_count,
    )
    limit = c[2].number_input(
        "Limit (0 = all)",
        0,
        1_000_000,
        20,
        key=f"{prefix}:limit",
        help="A seeded random sample of this many questions.",
    )
    return dataset, split, int(limit) or None


def launch(argv: list[str], kind: str, problem: str | None, key: str) -> None:
    ui.command_preview(argv)
    if problem:
        st.warning(problem)
    if st.button("Start job", type="primary", disabled=bool(problem), key=key):
        ui.submit_job(argv, kind)


def rationales_tab() -> None:
    dataset, split, limit = dataset_options("r")
    c = st.columns(4)
    thoughts = c[0].multiselect(
        "Thought types",
        ["cot", "pot", "eot"],
        ["cot"],
        key="r:thoughts",
        help="CoT text, PoT programs, EoT equations (ETD uses all three).",
    )
    samples = c[1].number_input("Samples per question", 1, 16, 1, key="r:samples")
    temperature = c[2].number_input(
        "Temperature", 0.0, 2.0, 0.0 if samples == 1 else 0.7, step=0.1, key="r:temperature"
    )
    max_tokens = c[3].number_input("Max tokens", 32, 8192, 512, key="r:max-tokens")
    c = st.columns(2)
    out = (
        c[0].text_input(
            "Rationale set name",
            key="r:out",
            placeholder=f"{dataset}-{split}",
            help="Saved under datasets/<name>; the Train page reads it.",
        )
        or f"{dataset}-{split}"
    )
    concurrency = c[1].number_input("Concurrent requests", 1, 256, 4, key="r:concurrency")
    teacher, problem = teacher_options("r", free=(GOLD, ANNOTATIONS))
    if teacher[1] == "annotations":
        thoughts = [t for t in thoughts if t != "cot"] or ["pot", "eot"]
    elif teacher[1] == "gold":
        thoughts = ["cot"]
    argv = [
        "teach",
        "rationales",
        "--dataset",
        dataset,
        "--split",
        split,
        *(["--limit", str(limit)] if limit else []),
        "--thoughts",
        ",".join(thoughts),
        "--n-samples",
        str(samples),
        "--temperature",
        str(temperature),
        "--max-tokens",
        str(max_tokens),
        "--out",
        out.strip(),
        *teacher,
        "--concurrency",
        str(concurrency),
    ]
    if not thoughts:
        problem = "Choose at least one thought type."
    elif not data.NAME_RE.match(out.strip()):
        problem = "The rationale set name is a name, not a path: lower-case letters, digits, '_' and '-' (at most 64)."
    launch(argv, "teach-rationales", problem, "r:start")
    sets = rationale_counts()
    with st.expander(f"Rationale sets in the workspace ({len(sets)})"):
        if sets:
            st.dataframe([{"set": name, "records": n} for name, n in sets.items()], hide_index=True)
        else:
            st.caption("None yet.")


def error_files() -> dict[str, object]:
    """NesyCD runs with a student error file: adapter name -> its errors.jsonl."""
    return {path.parent.name: path for path in sorted((home() / "adapters").glob("*/errors.jsonl"))}


def knowledge_tab() -> None:
    source = st.radio(
        "Knowledge from",
        ["Student errors (NesyCD)", "Examples + gold answers (SKIntern)"],
        key="k:source",
        horizontal=True,
    )
    problem = None
    if source.startswith("Student"):
        runs = error_files()
        run = st.selectbox(
            "Student errors of the NesyCD run",
            list(runs),
            key="k:errors",
            help="errors.jsonl written by the S_P pass of `nesy train "
            "nesycd` (adapters/<name>/). For a file of your own, use the CLI: "
            "`nesy teach knowledge --errors FILE`.",
        )
        head = ["--errors", str(runs[run])] if run else []
        if not run:
            problem = "No student error file yet: run `nesy train nesycd` first."
    else:
        dataset, split, limit = dataset_options("k")
        head = ["--dataset", dataset, "--split", split, *(["--limit", str(limit)] if limit else []), "--with-answer"]
    c = st.columns(3)
    auto = c[0].checkbox(
        "Accept entries automatically",
        key="k:auto",
        help="Off: entries arrive as pending for review on the Knowledge base page.",
    )
    max_tokens = c[1].number_input("Max tokens", 32, 8192, 400, key="k:max-tokens")
    concurrency = c[2].number_input("Concurrent requests", 1, 256, 4, key="k:concurrency")
    teacher, teacher_problem = teacher_options("k")
    argv = [
        "teach",
        "knowledge",
        *head,
        *(["--auto-accept"] if auto else []),
        "--max-tokens",
        str(max_tokens),
        *teacher,
        "--concurrency",
        str(concurrency),
    ]
    launch(argv, "teach-knowledge", problem or teacher_problem, "k:start")


rationales, knowledge = st.tabs(["Rationales", "Knowledge"])
with rationales:
    rationales_tab()
with knowledge:
    knowledge_tab()
