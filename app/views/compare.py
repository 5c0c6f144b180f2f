"""Compare answers: the student without and with retrieved knowledge, side by side.

Nothing is generated in this page's process: "Answer both ways" hands the question to a warm
student, a `nesy answer --session` job (distill/answer_session.py) that loaded the student once and
answers comparisons until it has been idle a while; a different student (base model, adapter,
backend) gets its own session. The job writes each request's events — the exact prompt and the
retrieved entries of each side, each streamed token, done — tagged with the request id to the job
folder; a fragment polls that file twice a second and draws this request's tokens as they come.
Cancel stops the job (SIGTERM: the answer ends at the next token; the next comparison loads the
student again). A whole dataset sample runs as a `nesy eval` job whose report is on
Evaluation results. Retrieved entries open in an editor here; re-running shows what the edit changed.
The student backend (in process, the embedded llama.cpp server, or an OpenAI-compatible URL) is the
CLI's `--backend`, passed to both commands and checked by the CLI's own `check_backend`.
"""

from __future__ import annotations

import streamlit as st

import ui
from config_form import HF_ID
from distill import answer_session, data, jobs
from distill.answers import answers_match
from distill.progress import read_jsonl
from distill.student_server import BACKEND_HELP, LLAMA_CPP, LLAMA_CPP_BASES, StudentBackendError, check_backend
from kb.workspace import subdir

TYPED = "Type a question"
TRAINED = "as trained"
SIDES = ("without", "with")
EVENTS = answer_session.EVENTS  # distill.infer.EventWriter.FILE (infer not imported: torch loads with it)
SERVED = "OpenAI-compatible URL"
BACKENDS = ("transformers", *(f"{LLAMA_CPP}:{base}" for base in LLAMA_CPP_BASES), SERVED)


@st.cache_data(show_spinner=False, max_entries=16)
def sample_examples(dataset: str, split: str) -> list:
    return data.get_dataset(dataset).load(split, limit=200, seed=0)


def adapters() -> list[str]:
    return sorted(p.name for p in subdir("adapters").iterdir() if (p / "adapter_config.json").exists())


def question_picker() -> dict:
    """The question, its gold answer if known, answer type and the task description for retrieval."""
    mode = st.radio("Question", [TYPED, "Pick from a dataset"], horizontal=True, key="cmp:mode")
    if mode == TYPED:
        question = st.text_area("Your question", key="cmp:question", height=100)
        c = st.columns(2)
        answer_type = c[0].selectbox("Answer type", data.ANSWER_TYPES, key="cmp:type")
        gold = c[1].text_input("Gold answer (optional)", key="cmp:gold")
        return {
            "question": question.strip(),
            "gold": gold.strip() or None,
            "answer_type": answer_type,
            "task_description": "",
        }
    c = st.columns(3)
    names = data.list_datasets()
    dataset = c[0].selectbox("Dataset", names, index=names.index("gsm8k") if "gsm8k" in names else 0, key="cmp:dataset")
    spec = data.get_dataset(dataset)
    split = c[1].selectbox("Split", spec.splits, key="cmp:split")
    examples = sample_examples(dataset, split)
    by_label = {f"{e.id}: {ui.short(e.question, 90)}": e for e in examples}
    example = by_label[c[2].selectbox("Example", list(by_label), key="cmp:example")]
    st.text(data.format_question(example))
    return {
        "question": data.format_question(example),
        "gold": example.answer,
        "answer_type": spec.answer_type_for(example.task),
        "task_description": spec.task_description(example.task),
    }


def answer_request(q: dict, settings: dict, both: bool) -> dict:
    """The comparison as a request to the session (distill.answer_session.FIELDS)."""
    return {
        "question": q["question"],
        "gold": q["gold"] if both else None,
        "answer_type": q["answer_type"],
        "task": q["task_description"],
        "kb": True,
        "compare": both,
        "k": settings["k"] or None,
        "thought": settings["thought"],
        "max_new_tokens": settings["max_new_tokens"],
        "min_score": settings["min_score"],
        "include_pending": "pending" in settings["statuses"],
    }


def backend_argv(model: dict) -> list[str]:
    return ["--backend", model["backend"]] if model["backend"] != "transformers" else []


def backend_picker() -> tuple[str, str | None]:
    """(the --backend value, the CLI's complaint about it or None)."""
    c = st.columns([2, 3])
    kind = c[0].selectbox("Student backend", BACKENDS, key="cmp:backend", help=BACKEND_HELP)
    if kind != SERVED:
        return kind, None
    url = (
        c[1]
        .text_input(
            "Server URL",
            key="cmp:backend-url",
            placeholder="http://gpu-box:8000/v1",
            help="The server's OpenAI base URL; it must serve the adapter under the adapter's "
            "name (vLLM: --enable-lora --lora-modules NAME=PATH).",
        )
        .strip()
    )
    try:
        return check_backend(url), None
    except StudentBackendError as e:
        return url, str(e)


def start(model: dict, q: dict, settings: dict, both: bool = True) -> None:
    if not ui.require_curator("compare answers (it runs as a job)"):
        return
    job, request = answer_session.ask_warm(model, answer_request(q, settings, both))
    runs = [job.id] if both else [*st.session_state.get("cmp:jobs", [])[:1], job.id]
    requests = [request] if both else [*st.session_state.get("cmp:requests", [None])[:1], request]
    st.session_state["cmp:jobs"], st.session_state["cmp:requests"] = runs, requests
    st.session_state["cmp:asked"] = q


def runs() -> list[tuple[str, str | None]]:
    """(job id, request id) of each answer of the comparison; request None = the whole job's
    events (a one-shot `nesy answer --events` job)."""
    job_ids = st.session_state.get("cmp:jobs") or []
    requests = st.session_state.get("cmp:requests") or []
    return [(job_id, requests[i] if i < len(requests) else None) for i, job_id in enumerate(job_ids)]


def fold(pairs: list[tuple[str, str | None]]) -> dict:
    """The events of the comparison's requests as one state per side (a later answer's side wins),
    plus, for the last one: the session's `loaded` event, and its `error` and `served` events."""
    sides: dict[str, dict] = {}
    loaded = error = served = None
    for job_id, request in pairs:
        loaded = error = served = None
        for ev in read_jsonl(jobs.home() / "jobs" / job_id / EVENTS):
            kind, side = ev["event"], ev.get("side")
            if kind == "loaded":
                loaded = ev
            elif request is not None and ev.get("request") != request:
                continue  # another comparison served by the same session
            elif kind == "start":
                sides[side] = {**ev, "pieces": [], "done": None}
            elif kind == "token" and side in sides:
                sides[side]["pieces"].append(ev["text"])
            elif kind == "done" and side in sides:
                sides[side]["done"] = ev
            elif kind == "error":
                error = ev
            elif kind == "served":
                served = ev
    return {"sides": sides, "loaded": loaded, "error": error, "served": served}


def answering(job: jobs.Job, request: str | None, state: dict) -> bool:
    """Is the last request still being answered (or waiting for its student)?"""
    return job.active and (request is None or state["served"] is None)


def still_answering() -> bool:
    pairs = runs()
    if not pairs:
        return False
    job_id, request = pairs[-1]
    return answering(jobs.get(job_id), request, fold(pairs[-1:]))


def verdict(extracted, q: dict) -> str:
    if q["gold"] is None:
        return ""
    return " (correct)" if answers_match(extracted, q["gold"], q["answer_type"]) else " (wrong)"


@st.fragment(run_every=0.5)
def live_results() -> None:
    """Polls the job's events while it runs; once it has ended, the whole page reruns once."""
    if show_results():
        st.rerun(scope="app")


def show_results() -> bool:
    """Draw the comparison; True when its answer just ended (so the page should refresh once)."""
    pairs, q = runs(), st.session_state.get("cmp:asked")
    if not pairs:
        return False
    job_id, request = pairs[-1]
    job = jobs.get(job_id)
    state = fold(pairs)
    busy = answering(job, request, state)
    st.divider()
    status_line(job, state, busy)
    if q["gold"] is not None:
        st.text(f"Gold answer: {q['gold']}")
    left, right = st.columns(2)
    for col, side in zip((left, right), SIDES):
        with col:
            side_view(side, state["sides"].get(side), q, busy)
    flip_note(state["sides"], q)
    watched = f"{job_id}/{request}"
    ended = st.session_state.get("cmp:watching") == watched and not busy
    st.session_state["cmp:watching"] = watched if busy else None
    return ended


def status_line(job: jobs.Job, state: dict, busy: bool) -> None:
    c = st.columns([5, 1])
    loaded = state["loaded"]
    if state["error"]:
        c[0].error(ui.md(f"The student could not answer this: {state['error']['message']}"))
    elif busy and job.status == "queued":
        c[0].info("Waiting for a free job slot (another job is running; see **Jobs**).")
    elif busy and not loaded:
        c[0].info("Loading the student in a background job…")
    elif busy:
        c[0].caption(f"Answering… the student is warm (loaded in {loaded['seconds']:.1f} s, once for all comparisons).")
    elif job.active and loaded:
        idle = loaded.get("idle_timeout") or answer_session.IDLE_TIMEOUT_S
        span = f"{idle / 60:.0f} min" if idle >= 60 else f"{idle:.0f} s"
        c[0].caption(f"The student stays loaded for the next comparison (until {span} pass without one).")
    elif job.status == "cancelled" and state["served"] is None:
        c[0].warning("Cancelled: the answers stop where they were.")
    elif job.status == "failed":
        c[0].error(ui.md(f"The comparison failed: {job.reason}"))
    elif state["served"] is None and not state["sides"]:
        c[0].warning("The student session ended before answering this: answer again.")
    if busy and c[1].button("Cancel", key="cmp:cancel"):
        jobs.cancel(job.id, grace=10)
        st.rerun(scope="app")


def side_view(side: str, s: dict | None, q: dict, running: bool) -> None:
    st.subheader(f"{side.capitalize()} knowledge")
    if s is None:
        st.caption("Waiting…" if running else "Not answered.")
        return
    done = s["done"]
    if done:
        st.text(f"Answer: {done['extracted']}{verdict(done['extracted'], q)}")
        st.caption(f"{done['prompt_tokens']} prompt tokens · {done['latency_s']:.1f} s · thought {s['thought']}")
    st.text("".join(s["pieces"]) if not done else done["text"])
    with st.expander("The exact prompt", expanded=False):
        st.caption(
            "The user text the method built (knowledge block included), then the prompt "
            "as the model saw it (template applied)."
        )
        st.code(s["prompt"], language=None, wrap_lines=True)
        st.code(s["rendered"], language=None, wrap_lines=True)
    if side == "with":
        retrieved_entries(s)


def flip_note(sides: dict, q: dict) -> None:
    a, b = sides.get("without"), sides.get("with")
    if q["gold"] is None or not (a and a["done"] and b and b["done"]):
        return
    before = answers_match(a["done"]["extracted"], q["gold"], q["answer_type"])
    after = answers_match(b["done"]["extracted"], q["gold"], q["answer_type"])
    ids = ", ".join(e for e, _ in b["retrieved"]) or "none"
    if before != after:
        shared = " (shared by these entries)" if len(b["retrieved"]) > 1 else ""
        (st.success if after else st.error)(
            f"The knowledge flipped this answer {'wrong → right' if after else 'right → wrong'} "
            f"(entries: {ui.md(ids)}){shared}. Counted in each entry's impact on the Knowledge base page."
        )


def retrieved_entries(s: dict) -> None:
    st.markdown("**Retrieved knowledge**")
    floor = s.get("min_score")
    st.caption(f"top-{s['k']} by {s['retriever']}" + (f", minimum similarity {floor:g}" if floor else ""))
    if not s["retrieved"]:
        if not s.get("retrieval_ran", True):
            st.caption("No retrieval ran (adaptive retrieval found the student confident).")
        elif floor:
            st.warning(
                f"No entry passed the minimum similarity {floor:g}: answered without knowledge. "
                "Lower it, or accept better-matching entries."
            )
        else:
            st.warning(
                "Nothing retrieved: no accepted entries of the kinds this student uses. Accept "
                "entries on the Knowledge base page, or include pending ones."
            )
        return
    entries = ui.store().get_many([e for e, _ in s["retrieved"]])
    for entry_id, score in s["retrieved"]:
        entry = entries.get(entry_id)
        summary = ui.short(entry.learning_summary, 200) if entry else "(deleted since)"
        c = st.columns([5, 1])
        c[0].text(f"{score:.3f}  {entry_id}  [{entry.status if entry else '-'}]\n{summary}")
        c[1].button(
            "Edit", key=f"cmp:edit-{entry_id}", on_click=st.session_state.__setitem__, args=("cmp:edit", entry_id)
        )


def entry_editor() -> None:
    if st.session_state.get("cmp:edit"):
        with st.container(border=True):
            ui.entry_editor(ui.store(), st.session_state["cmp:edit"], key="cmp-editor")
            st.button("Close editor", key="cmp:close", on_click=st.session_state.pop, args=("cmp:edit", None))


def batch_job(model: dict, settings: dict, problem: str | None) -> None:
    with st.expander("Batch: a dataset sample as a background job (accuracy without/with the KB, flips)"):
        c = st.columns(4)
        names = data.list_datasets()
        dataset = c[0].selectbox(
            "Dataset", names, index=names.index("gsm8k") if "gsm8k" in names else 0, key="cmp:b-dataset"
        )
        splits = list(data.get_dataset(dataset).splits)
        split = c[1].selectbox(
            "Split", splits, index=splits.index("test") if "test" in splits else 0, key="cmp:b-split"
        )
        limit = c[2].number_input("Sample size", 1, 100_000, 50, key="cmp:b-limit")
        name = (
            c[3].text_input("Report name", key="cmp:b-name", placeholder=f"{dataset}-{split}-compare")
            or f"{dataset}-{split}-compare"
        )
        spec = model["adapter"] or "base"
        thought = f",thought={settings['thought']}" if settings["thought"] else ""
        extra = (
            (f",k={settings['k']}" if settings["k"] else "")
            + thought
            + (f",min_score={settings['min_score']:g}" if settings["min_score"] else "")
            + (",pending" if "pending" in settings["statuses"] else "")
        )
        argv = [
            "eval",
            "--dataset",
            dataset,
            "--split",
            split,
            "--limit",
            str(limit),
            "--name",
            name.strip(),
            "--config",
            f"without={spec}{thought}",
            "--config",
            f"with={spec},kb{extra}",
            *(["--base-model", model["base"]] if model["base"] else []),
            *backend_argv(model),
            "--max-new-tokens",
            str(settings["max_new_tokens"]),
        ]
        ui.command_preview(argv)
        if st.button("Start batch comparison", key="cmp:b-start", disabled=not name.strip() or bool(problem)):
            ui.submit_job(argv, "eval", name=f"compare {name.strip()}")


st.title("Compare answers")
c = st.columns([2, 2, 1, 1, 1, 1])
adapter = c[0].selectbox(
    "Student", ["(base model)", *adapters()], key="cmp:adapter", help="A trained adapter, or the base model alone."
)
base = c[1].text_input(
    "Base model",
    key="cmp:base",
    placeholder="embedded SmolLM2-135M",
    help="A Hugging Face id like org/name (the app takes no paths).",
)
k = c[2].number_input("k entries", 0, 10, 0, key="cmp:k", help="0 = the adapter's card (else 3)")
thought = c[3].selectbox(
    "Thought",
    [TRAINED, "cot", "pot", "eot", "vote"],
    key="cmp:thought",
    help="The type the adapter was trained on (from its card), or another one.",
)
max_new = c[4].number_input("Max new tokens", 16, 2048, 256, step=16, key="cmp:max-new")
min_score = c[5].number_input(
    "Minimum similarity",
    0.0,
    100.0,
    0.0,
    step=0.05,
    key="cmp:min-score",
    help="Entries scoring below this are not retrieved (0 = the card's; cosine similarity for dense retrieval).",
)
backend, problem = backend_picker()
pending = st.checkbox("Also retrieve pending entries", key="cmp:pending")
model = {"base": base.strip() or None, "adapter": None if adapter == "(base model)" else adapter, "backend": backend}
settings = {
    "k": int(k),
    "thought": None if thought == TRAINED else thought,
    "max_new_tokens": int(max_new),
    "min_score": float(min_score) or None,
    "statuses": ("accepted", "pending") if pending else ("accepted",),
}
if model["base"] and not HF_ID.fullmatch(model["base"]):
    problem = "The base model must be a Hugging Face id like org/name (the app takes no paths)."
if problem:
    st.warning(problem)

q = question_picker()
running = still_answering()
b = st.columns([1, 1, 4])
if b[0].button(
    "Answer both ways", type="primary", disabled=not q["question"] or bool(problem) or running, key="cmp:run"
):
    start(model, q, settings)
    running = True
if st.session_state.get("cmp:jobs") and b[1].button(
    "Re-run with knowledge", key="cmp:rerun", disabled=running, help="After editing an entry"
):
    start(model, st.session_state["cmp:asked"], settings, both=False)
    running = True
if running:
    live_results()
else:
    show_results()
entry_editor()
batch_job(model, settings, problem)
