"""Evaluation results: the reports of `nesy eval` jobs ($NESY_HOME/evals/<name>/results.json)."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import ui
from kb.workspace import subdir


def reports() -> dict[str, dict]:
    """Report name -> results, newest first."""
    paths = sorted(subdir("evals").glob("*/results.json"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    out = {}
    for path in paths:
        try:
            out[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # being rewritten right now
    return out


def config_table(results: dict) -> pd.DataFrame:
    rows = []
    for name, m in results["configs"].items():
        rows.append({"configuration": name, "model": m["model"],
                     "knowledge": f"top-{m['k']}" if m["with_kb"] else "none",
                     "thought": m["thought"], "n": m["n"],
                     "accuracy": m["accuracy"], "accuracy (flexible)": m["accuracy_flexible"],
                     "prompt tokens": round(m["prompt_tokens_mean"], 1),
                     "GFLOPs / question": round(m["flops_per_question"] / 1e9, 3),
                     "latency s": round(m["latency_s_mean"], 2)})
    return pd.DataFrame(rows)


def per_task(results: dict) -> pd.DataFrame | None:
    table = pd.DataFrame({name: m["per_task"] for name, m in results["configs"].items()})
    return table if len(table) > 1 else None


def flips(results: dict) -> None:
    for f in results.get("flips", []):
        st.subheader(f"{ui.md(f['without'])} → {ui.md(f['with'])}: {len(f['fixed'])} fixed, "
                     f"{len(f['broken'])} broken")
        rows = [{"flip": kind, **{k: row[k] for k in ("example_id", "before", "after", "gold")},
                 "entries": ", ".join(row["entries"])}
                for kind in ("fixed", "broken") for row in f[kind]]
        if not rows:
            st.caption("No answer changed with the knowledge.")
            continue
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        entries = sorted({e for row in rows for e in row["entries"].split(", ") if e})
        if entries:
            c = st.columns([3, 1])
            chosen = c[0].selectbox("Entry behind a flip", entries, key=f"ev:entry-{f['with']}")
            if c[1].button("Edit it", key=f"ev:edit-{f['with']}"):
                ui.open_entry(chosen)
                st.switch_page(ui.PAGES["kb"])


def samples(name: str) -> None:
    path = subdir("evals", name) / "samples.jsonl"
    if not path.exists():
        return
    with st.expander("Samples (prompt, output, extracted, gold)"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        configs = sorted({r["config"] for r in rows})
        c = st.columns(2)
        config = c[0].selectbox("Configuration", configs, key="ev:s-config")
        only_wrong = c[1].checkbox("Only wrong answers", key="ev:s-wrong")
        shown = [r for r in rows if r["config"] == config and not (only_wrong and r["correct"])]
        st.dataframe(pd.DataFrame([{"example": r["example_id"], "extracted": r["extracted"],
                                    "gold": r["gold"], "correct": r["correct"],
                                    "retrieved": ", ".join(e for e, _ in r.get("retrieved") or [])}
                                   for r in shown]), hide_index=True)
        if shown:
            pick = st.selectbox("Read one", [r["example_id"] for r in shown], key="ev:s-pick")
            row = next(r for r in shown if r["example_id"] == pick)
            st.text("Prompt:\n" + row["prompt"])
            st.text("Output:\n" + row["output"])


st.title("Evaluation results")
all_reports = reports()
if not all_reports:
    st.info("No evaluation reports yet. Run a batch comparison on **Compare answers**, or "
            "`nesy eval --config base --config base,kb` from a shell; reports appear here.")
    st.stop()
name = st.selectbox("Report", list(all_reports), key="ev:report")
results = all_reports[name]
st.caption(ui.md(f"{results.get('dataset')} / {results.get('split')} · sample of "
                 f"{results.get('limit') or 'all'} · {subdir('evals', name)}"))
table = config_table(results)
st.dataframe(table, hide_index=True, column_config={
    "accuracy": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent"),
    "accuracy (flexible)": st.column_config.NumberColumn(format="percent")})
st.bar_chart(table.set_index("configuration")[["accuracy", "accuracy (flexible)"]], stack=False,
             height=260)
if (tasks := per_task(results)) is not None:
    st.subheader("Accuracy per task")
    st.dataframe(tasks.style.format("{:.1%}"))
flips(results)
samples(name)
