"""Evaluation results: the reports of `nesy eval` jobs ($NESY_HOME/evals/<name>/results.json).

Every accuracy is shown with its 95 % interval and every pair of configurations with its flip
counts and exact McNemar p-value (distill.evaluate / distill.stats compute them; this page only
shows them). Reports are found and read by name through distill.evaluate.report_file, so a link
inside evals/ cannot steer the page outside $NESY_HOME.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

import ui
from distill.evaluate import (
    INTERVAL_LABELS,
    empty_retrieval_warnings,
    format_p,
    list_reports,
    load_report,
    report_file,
    with_interval,
)
from distill.progress import read_jsonl
from kb.workspace import InvalidName


def reports() -> dict[str, dict]:
    """Report name -> results, newest first (unreadable or foreign reports skipped)."""
    out = {}
    for name in list_reports():
        try:
            out[name] = load_report(name)
        except (ValueError, TypeError, KeyError, AttributeError, OSError):
            continue  # being rewritten right now, or not a report nesy wrote
    return out


def interval_text(ci) -> str:
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else "-"


def config_table(results: dict) -> pd.DataFrame:
    rows = []
    for name, m in results["configs"].items():
        rows.append(
            {
                "configuration": name,
                "model": m["model"],
                "knowledge": f"top-{m['k']}" if m["with_kb"] else "none",
                "thought": m["thought"],
                "n": m["n"],
                "no knowledge retrieved": m.get("retrieval_empty", 0) if m["with_kb"] else None,
                "accuracy": m["accuracy"],
                "95% interval": interval_text(m.get("accuracy_ci")),
                "accuracy (flexible)": m["accuracy_flexible"],
                "95% interval (flexible)": interval_text(m.get("accuracy_flexible_ci")),
                "prompt tokens": round(m["prompt_tokens_mean"], 1),
                "GFLOPs / question": round(m["flops_per_question"] / 1e9, 3),
                "latency s": round(m["latency_s_mean"], 2),
            }
        )
    return pd.DataFrame(rows)


def accuracy_chart(results: dict) -> alt.LayerChart:
    """Bars of strict and flexible accuracy per configuration with their 95 % intervals as error bars."""
    rows = [
        {
            "configuration": name,
            "measure": label,
            "accuracy": m[key],
            "low": (m.get(f"{key}_ci") or [m[key]] * 2)[0],
            "high": (m.get(f"{key}_ci") or [m[key]] * 2)[1],
        }
        for name, m in results["configs"].items()
        for key, label in (("accuracy", "strict"), ("accuracy_flexible", "flexible"))
    ]
    data = pd.DataFrame(rows)
    # labelOverlap=False: vega would otherwise drop every other name once there are a dozen;
    # labelLimit=0: whole names, since a rerun is told apart by its suffix (nesycd-se-kb-curated)
    axis = alt.Axis(labelAngle=-35, labelOverlap=False, labelLimit=0)
    x = alt.X("configuration:N", sort=list(results["configs"]), title=None, axis=axis)
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=x,
            xOffset=alt.XOffset("measure:N", sort=["strict", "flexible"]),
            y=alt.Y(
                "accuracy:Q",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
                title="accuracy (95 % interval)",
            ),
            color=alt.Color("measure:N", sort=["strict", "flexible"]),
            tooltip=[
                "configuration",
                "measure",
                alt.Tooltip("accuracy:Q", format=".1%"),
                alt.Tooltip("low:Q", format=".1%", title="95% low"),
                alt.Tooltip("high:Q", format=".1%", title="95% high"),
            ],
        )
    )
    errors = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2, color="black")
        .encode(x=x, xOffset=alt.XOffset("measure:N", sort=["strict", "flexible"]), y="low:Q", y2="high:Q")
    )
    return alt.layer(bars, errors).properties(height=280)


def per_task(results: dict) -> pd.DataFrame | None:
    table = pd.DataFrame(
        {
            name: {t: with_interval(acc, m.get("per_task_ci", {}).get(t)) for t, acc in m["per_task"].items()}
            for name, m in results["configs"].items()
        }
    )
    return table.fillna("-") if len(table) > 1 else None


def comparisons_table(results: dict) -> pd.DataFrame | None:
    rows = [
        {
            "first": c["first"],
            "second": c["second"],
            "n": c["n"],
            "both right": c["both_right"],
            "only first right (b)": c["first_only"],
            "only second right (c)": c["second_only"],
            "both wrong": c["both_wrong"],
            "second − first": f"{100 * c['difference']:+.1f} pts",
            "exact McNemar p": format_p(c["p_value"]),
            "verdict": c["verdict"],
        }
        for c in results.get("comparisons") or []
    ]
    return pd.DataFrame(rows) if rows else None


def flips(results: dict) -> None:
    for f in results.get("flips", []):
        st.subheader(f"{ui.md(f['without'])} → {ui.md(f['with'])}: {len(f['fixed'])} fixed, {len(f['broken'])} broken")
        if "p_value" in f:
            st.caption(f"On {f['n']} shared questions: exact McNemar p = {format_p(f['p_value'])}, **{f['verdict']}**.")
        rows = [
            {
                "flip": kind,
                **{k: row[k] for k in ("example_id", "before", "after", "gold")},
                "entries": ", ".join(row["entries"]),
            }
            for kind in ("fixed", "broken")
            for row in f[kind]
        ]
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
    try:
        path = report_file(name, "samples.jsonl")
    except InvalidName:
        return
    if not path.is_file():
        return
    with st.expander("Samples (prompt, output, extracted, gold)"):
        rows = read_jsonl(path)
        configs = sorted({r["config"] for r in rows})
        c = st.columns(2)
        config = c[0].selectbox("Configuration", configs, key="ev:s-config")
        only_wrong = c[1].checkbox("Only wrong answers", key="ev:s-wrong")
        shown = [r for r in rows if r["config"] == config and not (only_wrong and r["correct"])]
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "example": r["example_id"],
                        "extracted": r["extracted"],
                        "gold": r["gold"],
                        "correct": r["correct"],
                        "retrieved": ", ".join(e for e, _ in r.get("retrieved") or []),
                    }
                    for r in shown
                ]
            ),
            hide_index=True,
        )
        if shown:
            pick = st.selectbox("Read one", [r["example_id"] for r in shown], key="ev:s-pick")
            row = next(r for r in shown if r["example_id"] == pick)
            st.text("Prompt:\n" + row["prompt"])
            st.text("Output:\n" + row["output"])


st.title("Evaluation results")
all_reports = reports()
if not all_reports:
    st.info(
        "No evaluation reports yet. Run a batch comparison on **Compare answers**, or "
        "`nesy eval --config base --config base,kb` from a shell; reports appear here."
    )
    st.stop()
name = st.selectbox("Report", list(all_reports), key="ev:report")
results = all_reports[name]
method = (results.get("interval") or {}).get("method", "wilson")
st.caption(
    ui.md(
        f"{results.get('dataset')} / {results.get('split')} · sample of "
        f"{results.get('limit') or 'all'} · {report_file(name, 'results.json').parent} · "
        f"intervals: 95 % {INTERVAL_LABELS.get(method, method)}"
    )
)
for line in empty_retrieval_warnings(results):
    st.warning(ui.md(line.removeprefix("warning: ")))
table = config_table(results)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "accuracy": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent"),
        "accuracy (flexible)": st.column_config.NumberColumn(format="percent"),
    },
)
st.altair_chart(accuracy_chart(results), width="stretch")
if (tasks := per_task(results)) is not None:
    st.subheader("Accuracy per task")
    st.dataframe(tasks)
if (pairs := comparisons_table(results)) is not None:
    st.subheader("Paired comparisons")
    st.caption(
        "Each pair of configurations on the questions both answered (strict accuracy). "
        "b and c are the answers that flipped; the exact McNemar test asks whether b and c "
        "differ more than chance would make them. p ≥ 0.05 is labelled *not significant*; "
        f"the {len(pairs)} p-values are not corrected for multiple comparisons."
    )
    st.dataframe(pairs, hide_index=True)
flips(results)
samples(name)
