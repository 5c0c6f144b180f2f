"""Compare answers: the student without and with retrieved knowledge, side by side.

One question runs here (the student is loaded once per model and cached); a whole dataset sample
runs as a `nesy eval` job whose report (accuracy without/with the KB, flips) is on Evaluation
results. Retrieved entries open in an editor here; re-running shows what the edit changed.
"""
from __future__ import annotations

import streamlit as st

import ui
from distill import data
from distill.answers import answers_match
from kb.workspace import subdir

TYPED = "Type a question"
TRAINED = "as trained"


@st.cache_resource(show_spinner="Loading the student (once per model)…", max_entries=2)
def student(base_model: str | None, adapter: str | None):
    from distill.infer import Student  # lazy: torch + transformers
    return Student(base_model, adapter=adapter)


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
        return {"question": question.strip(), "gold": gold.strip() or None,
                "answer_type": answer_type, "task_description": ""}
    c = st.columns(3)
    names = data.list_datasets()
    dataset = c[0].selectbox("Dataset", names, index=names.index("gsm8k") if "gsm8k" in names else 0,
                             key="cmp:dataset")
    spec = data.get_dataset(dataset)
    split = c[1].selectbox("Split", spec.splits, key="cmp:split")
    examples = sample_examples(dataset, split)
    by_label = {f"{e.id}: {ui.short(e.question, 90)}": e for e in examples}
    example = by_label[c[2].selectbox("Example", list(by_label), key="cmp:example")]
    st.text(data.format_question(example))
    return {"question": data.format_question(example), "gold": example.answer,
            "answer_type": spec.answer_type_for(example.task),
            "task_description": spec.task_description(example.task)}


def run_pair(model: dict, q: dict, settings: dict, which=("without", "with")) -> None:
    s = student(model["base"], model["adapter"])
    results = st.session_state.get("cmp:results", {}) if which != ("without", "with") else {}
    for side in which:
        index = ui.index() if side == "with" else None
        with st.spinner(f"Answering {side} knowledge…"):
            results[side] = s.answer([q["question"]], kb_index=index, k=settings["k"],
                                     statuses=settings["statuses"], thought=settings["thought"],
                                     max_new_tokens=settings["max_new_tokens"],
                                     answer_type=q["answer_type"],
                                     task_description=q["task_description"])[0]
    st.session_state["cmp:results"] = results
    st.session_state["cmp:asked"] = q


def verdict(result, q: dict) -> str:
    if q["gold"] is None:
        return ""
    return " ✅ correct" if answers_match(result.extracted, q["gold"], q["answer_type"]) else " ❌ wrong"


def show_results() -> None:
    results, q = st.session_state.get("cmp:results"), st.session_state.get("cmp:asked")
    if not results:
        return
    st.divider()
    if q["gold"] is not None:
        st.text(f"Gold answer: {q['gold']}")
    left, right = st.columns(2)
    for col, side in ((left, "without"), (right, "with")):
        r = results.get(side)
        if r is None:
            continue
        col.subheader(f"{side.capitalize()} knowledge")
        col.text(f"Answer: {r.extracted}{verdict(r, q)}")
        col.caption(f"{r.prompt_tokens} prompt tokens · {r.latency_s:.1f} s")
        col.text(r.text)
    flip_note(results, q)
    retrieved_entries(results.get("with"))


def flip_note(results: dict, q: dict) -> None:
    a, b = results.get("without"), results.get("with")
    if q["gold"] is None or a is None or b is None:
        return
    before = answers_match(a.extracted, q["gold"], q["answer_type"])
    after = answers_match(b.extracted, q["gold"], q["answer_type"])
    ids = ", ".join(e for e, _ in b.retrieved) or "none"
    if before != after:
        (st.success if after else st.error)(
            f"The knowledge flipped this answer {'wrong → right' if after else 'right → wrong'} "
            f"(entries: {ui.md(ids)}).")


def retrieved_entries(result) -> None:
    if result is None:
        return
    st.subheader("Retrieved knowledge")
    if not result.retrieved:
        st.caption("Nothing retrieved: no accepted entries yet (or adaptive retrieval skipped it). "
                   "Accept entries on the Knowledge base page, or include pending ones.")
        return
    entries = ui.store().get_many([e for e, _ in result.retrieved])
    for entry_id, score in result.retrieved:
        entry = entries.get(entry_id)
        summary = ui.short(entry.learning_summary, 200) if entry else "(deleted since)"
        c = st.columns([5, 1])
        c[0].text(f"{score:.3f}  {entry_id}  [{entry.status if entry else '-'}]\n{summary}")
        c[1].button("Edit", key=f"cmp:edit-{entry_id}", on_click=st.session_state.__setitem__,
                    args=("cmp:edit", entry_id))
    if st.session_state.get("cmp:edit"):
        with st.container(border=True):
            ui.entry_editor(ui.store(), st.session_state["cmp:edit"], key="cmp-editor")
            st.button("Close editor", key="cmp:close", on_click=st.session_state.pop,
                      args=("cmp:edit", None))


def batch_job(model: dict, settings: dict) -> None:
    with st.expander("Batch: a dataset sample as a background job (accuracy without/with the KB, flips)"):
        c = st.columns(4)
        names = data.list_datasets()
        dataset = c[0].selectbox("Dataset", names, index=names.index("gsm8k") if "gsm8k" in names else 0,
                                 key="cmp:b-dataset")
        splits = list(data.get_dataset(dataset).splits)
        split = c[1].selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0,
                               key="cmp:b-split")
        limit = c[2].number_input("Sample size", 1, 100_000, 50, key="cmp:b-limit")
        name = c[3].text_input("Report name", key="cmp:b-name", placeholder=f"{dataset}-{split}-compare"
                               ) or f"{dataset}-{split}-compare"
        spec = model["adapter"] or "base"
        thought = f",thought={settings['thought']}" if settings["thought"] else ""
        extra = f",k={settings['k']}{thought}" + (",pending" if "pending" in settings["statuses"] else "")
        argv = ["eval", "--dataset", dataset, "--split", split, "--limit", str(limit),
                "--name", name.strip(), "--config", f"without={spec}{thought}",
                "--config", f"with={spec},kb{extra}",
                *(["--base-model", model["base"]] if model["base"] else []),
                "--max-new-tokens", str(settings["max_new_tokens"])]
        ui.command_preview(argv)
        if st.button("Start batch comparison", key="cmp:b-start", disabled=not name.strip()):
            ui.submit_job(argv, "eval", name=f"compare {name.strip()}")


st.title("Compare answers")
c = st.columns([2, 2, 1, 1, 1])
adapter = c[0].selectbox("Student", ["(base model)", *adapters()], key="cmp:adapter",
                         help="A trained adapter, or the base model alone.")
base = c[1].text_input("Base model", key="cmp:base", placeholder="embedded SmolLM2-135M")
k = c[2].number_input("k entries", 1, 10, 1, key="cmp:k")
thought = c[3].selectbox("Thought", [TRAINED, "cot", "pot", "eot", "vote"], key="cmp:thought",
                         help="The type the adapter was trained on (from its card), or another one.")
max_new = c[4].number_input("Max new tokens", 16, 2048, 256, step=16, key="cmp:max-new")
pending = st.checkbox("Also retrieve pending entries", key="cmp:pending")
model = {"base": base.strip() or None, "adapter": None if adapter == "(base model)" else adapter}
settings = {"k": int(k), "thought": None if thought == TRAINED else thought, "max_new_tokens": int(max_new),
            "statuses": ("accepted", "pending") if pending else ("accepted",)}

q = question_picker()
b = st.columns([1, 1, 4])
if b[0].button("Answer both ways", type="primary", disabled=not q["question"], key="cmp:run"):
    run_pair(model, q, settings)
if st.session_state.get("cmp:results") and b[1].button("Re-run with knowledge", key="cmp:rerun",
                                                        help="After editing an entry"):
    run_pair(model, st.session_state["cmp:asked"], settings, which=("with",))
show_results()
batch_job(model, settings)
