"""Train student: the form is generated from the method's config (`distill/methods/`), the same
fields `nesy train METHOD` has, and the command shown is exactly what the job runs."""

from __future__ import annotations

import streamlit as st

import ui
from config_form import KEEP, config_form, keep, remembered
from distill import data
from distill.methods import METHODS
from distill.methods.options import config_path, fields, from_options, list_configs, read_config, save_config, to_argv
from distill.train import PRESETS, TrainOptions
from kb.errors import NesyError

SHARED = {s.name for s in fields(TrainOptions)}


def widget_key(method: str, preset: str, name: str) -> str:
    """The form's session key of an option (as config_form keys it)."""
    scope = "t" if name in SHARED else f"t:{method}"
    return f"{scope}:{preset}:{name}" if name in PRESETS[preset] else f"{scope}:{name}"


def load_into_form(name: str) -> None:
    """A saved config's values into the form's widgets (a button callback: before they are drawn)."""
    try:
        method, values = read_config(name)
        cfg = from_options(METHODS[method].config, values)
    except NesyError as e:
        st.session_state["t:config-flash"] = ("error", f"Not loaded: {e}")
        return
    state = {"t:method": method, "t:preset": cfg.preset}
    for spec in fields(METHODS[method].config):
        value = getattr(cfg, spec.name)
        state[widget_key(method, cfg.preset, spec.name)] = (
            list(value or ())
            if spec.kind == "list"
            else (value if value is not None or spec.kind in ("int", "float") else "")
        )
    for key, value in state.items():
        st.session_state[key] = st.session_state[KEEP + key] = value
    st.session_state["t:config-flash"] = ("success", f"Loaded config {name} ({method}).")


def saved_configs(method_name: str, cfg) -> None:
    """Save the form as a named YAML config, or load one: the files `nesy train --config` reads."""
    flash = st.session_state.pop("t:config-flash", None)
    st.subheader("Saved configs")
    st.caption("YAML files in the workspace: the same files `nesy train METHOD --config FILE.yaml` reads.")
    with st.container(border=True, key="t:configs"):
        if flash:
            getattr(st, flash[0])(ui.md(flash[1]))
        c = st.columns([3, 1])
        name = c[0].text_input("Config name", key="t:config-name", placeholder="e.g. nesycd-r8")
        if c[1].button("Save config", key="t:config-save", disabled=cfg is None or not name.strip()):
            try:
                st.session_state["t:config-saved"] = (method_name, str(save_config(name.strip(), method_name, cfg)))
            except NesyError as e:
                st.error(ui.md(str(e)))
        if saved := st.session_state.get("t:config-saved"):  # stays until the next save
            st.success(ui.md(f"Saved {saved[1]}"))
            st.code(f"nesy train {saved[0]} --config {saved[1]}", language="bash")
        names = list_configs()
        if names:
            c = st.columns([3, 1])
            chosen = c[0].selectbox("Saved config", names, key="t:config-pick")
            c[1].button("Load config", key="t:config-load", on_click=load_into_form, args=(chosen,))
            st.caption(ui.md(f"{config_path(chosen)}"))
        else:
            st.caption("No saved configs yet.")


st.title("Train a student")
if not data.list_rationale_sets():
    st.info(
        "No rationale sets yet. Generate one on **Teacher jobs** (Rationales), or import a "
        "records.jsonl from the CLI (`nesy train METHOD --data FILE` reads a file by path)."
    )

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
saved_configs(method.name, cfg if argv else None)
st.caption("A cancelled or failed training job resumes from its last checkpoint (Jobs → Resume adds `--resume`).")
