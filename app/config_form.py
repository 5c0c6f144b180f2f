"""A Streamlit form generated from a config dataclass (the same fields `nesy train METHOD` has).

`config_form(config_class, prefix)` renders one widget per field, chosen by its type (checkbox,
number, select, multiselect, text) with the field's help text, and returns the values that were
given; `distill.methods.options.from_options` turns them into the config (its checks run there) and
`to_argv` into the command the job runs. Nothing here knows a particular option, except the three
widget hints fields carry: a rationale-set select (no paths from the browser), a workspace name,
and a Hugging Face model id.

Values survive page switches: Streamlit forgets a widget's state when its page is not shown, so
each value is also kept under a plain session key and put back when the widget is drawn again.
"""

from __future__ import annotations

import re

import streamlit as st

from distill import data
from distill.methods.options import OptionSpec, fields
from distill.train import PRESETS

HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
KEEP = "keep:"  # prefix of the session keys that outlive the widgets


def remembered(key: str, default):
    """Put a kept value (or the default) into the widget's state before it is drawn."""
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(KEEP + key, default)


def keep(key: str):
    st.session_state[KEEP + key] = st.session_state[key]
    return st.session_state[key]


def widget(spec: OptionSpec, key: str, default, where=st):
    """Draw one field's widget; returns its value (None / "" = not given)."""
    label = spec.name.replace("_", " ").capitalize()
    if spec.widget == "rationale_set":
        sets = data.list_rationale_sets()
        remembered(key, sets[0] if sets else None)
        if st.session_state[key] not in sets:
            st.session_state[key] = sets[0] if sets else None
        where.selectbox(label, sets, key=key, help=spec.help)
    elif spec.kind == "bool":
        remembered(key, bool(default))
        where.checkbox(label, key=key, help=spec.help)
    elif spec.kind in ("int", "float"):
        remembered(key, default)
        step = 1 if spec.kind == "int" else None
        where.number_input(label, key=key, help=spec.help, step=step, format=None if spec.kind == "int" else "%g")
    elif spec.kind == "choice":
        remembered(key, default)
        where.selectbox(label, spec.choices, key=key, help=spec.help)
    elif spec.kind == "list":
        remembered(key, list(default or ()))
        where.multiselect(label, spec.choices, key=key, help=spec.help)
    else:
        remembered(key, default or "")
        placeholder = "embedded SmolLM2-135M" if spec.widget == "hf_model" else None
        where.text_input(label, key=key, help=spec.help, placeholder=placeholder)
    return keep(key)


def problem_of(spec: OptionSpec, value) -> str | None:
    """Rules of the browser form beyond the config's own checks: names and ids, never paths."""
    if spec.widget == "hf_model" and value and not HF_ID.fullmatch(value.strip()):
        label = spec.name.replace("_", " ").capitalize()
        return f"{label} must be a Hugging Face id like org/name (the app takes no paths)."
    return None


def config_form(config_class, shared_class, columns: int = 4) -> tuple[dict, list[str]]:
    """Widgets for every field of config_class; returns (values given, form problems).

    Fields of shared_class (the options every method has) keep their values across methods; a
    field the preset fills is keyed by the preset, so switching preset shows that preset's values.
    """
    specs = fields(config_class)
    shared = {s.name for s in fields(shared_class)}
    preset_spec = next(s for s in specs if s.name == "preset")
    preset = widget(preset_spec, "t:preset", preset_spec.default)
    baseline = config_class(data="-", output="preview", preset=preset)
    values, problems = {"preset": preset}, []
    own = [s for s in specs if s.name not in shared]
    for title, group in (
        ("Training options", [s for s in specs if s.name in shared and s.name != "preset"]),
        (f"{config_class.method} options", own),
    ):
        if not group:
            continue
        st.subheader(title)
        cells = st.columns(columns)
        for i, spec in enumerate(group):
            scope = "t" if spec.name in shared else f"t:{config_class.method}"
            key = f"{scope}:{preset}:{spec.name}" if spec.name in PRESETS[preset] else f"{scope}:{spec.name}"
            default = None if spec.required else getattr(baseline, spec.name)
            value = widget(spec, key, default, cells[i % columns])
            values[spec.name] = value
            if problem := problem_of(spec, value):
                problems.append(problem)
    return values, problems
