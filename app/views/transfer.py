"""Export / import: the curated KB as canonical JSONL out; a JSONL file in, checked before applying."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

import ui
from kb import jsonl
from kb.schema import STATUSES
from kb.store import KBLocked

ANY = "(any)"
kb = ui.store()
st.title("Export / import")


def export_section() -> None:
    st.header("Export")
    facets = ui.facets()
    left, right = st.columns(2)
    statuses = left.multiselect(
        "Statuses",
        STATUSES,
        default=["accepted"],
        key="x:status",
        help="Only accepted knowledge is retrieved for the student.",
    )
    task = right.selectbox("Task", [ANY, *facets["tasks"]], key="x:task")
    task = None if task == ANY else task
    count = kb.query(status=statuses or None, task=task, limit=0).total
    st.caption(
        f"{count} entries will be exported (canonical lines, id order: export → import → export is byte-identical)."
    )

    def export_bytes() -> bytes:  # run only when the button is clicked
        out = io.StringIO()
        jsonl.export_jsonl(kb, out, status=statuses or None, task=task)
        return out.getvalue().encode("utf-8")

    name = "kb-" + ("-".join(statuses) if statuses else "all") + (f"-{task}" if task else "") + ".jsonl"
    st.download_button(
        f"Download {count} entries",
        export_bytes,
        file_name=name,
        mime="application/jsonl",
        disabled=count == 0,
        key="x:download",
        on_click="ignore",
        icon=":material/download:",
    )
    st.caption(f"Same file from the CLI: `nesy kb export {name}`")


def import_section() -> None:
    st.header("Import")
    upload = st.file_uploader("JSONL file (one entry per line)", type=["jsonl", "json", "txt"], key="x:upload")
    pasted = st.text_area("…or paste lines", key="x:paste", height=100)
    data = upload.getvalue() if upload is not None else pasted.encode("utf-8")
    if not data.strip():
        st.caption("Nothing is written until you have seen the validation report and applied it.")
        return
    policy = st.radio(
        "Ids that already exist",
        jsonl.POLICIES,
        horizontal=True,
        key="x:policy",
        format_func={"fail": "refuse the file", "skip": "keep mine (skip)", "overwrite": "replace with the file's"}.get,
    )
    report = jsonl.validate_jsonl(data, on_duplicate=policy)  # the CLI's checks, line and field
    report.source = upload.name if upload is not None else "pasted text"
    if report.ok:
        jsonl.report_missing_links(kb, report)
    existing = kb.live_ids(e.id for e in report.entries)
    validation_report(report, existing, policy)
    if not report.ok or (existing and policy == "fail"):
        return
    if st.button(f"Apply: import {len(report.entries)} entries", type="primary", key="x:apply"):
        try:
            done = jsonl.import_jsonl(kb, data, on_duplicate=policy, by=ui.user())
        except (jsonl.ImportRejected, KBLocked) as e:
            st.error(f"Nothing was imported: {ui.md(e)}")
            return
        st.success(
            f"Imported: {done.added} added, {done.overwritten} overwritten, "
            f"{done.skipped} skipped, {done.unchanged} unchanged."
        )
        st.page_link(ui.PAGES["kb"], label="Open the knowledge base", icon=":material/arrow_forward:")


def validation_report(report, existing: set[str], policy: str) -> None:
    st.subheader("Validation report")
    new = len(report.entries) - len(existing)
    st.write(
        f"{report.lines} lines · {len(report.entries)} valid entries · {new} new · "
        f"{len(existing)} already in the KB · {len(report.problems)} problems"
    )
    if report.problems:
        st.error(
            f"The file has problems; nothing can be imported until they are fixed. First: {ui.md(report.first_error())}"
        )
        problem_table(report.problems)
    elif existing and policy == "fail":
        st.warning(
            f"{len(existing)} ids already exist ({ui.md(', '.join(sorted(existing)[:5]))}"
            f"{' …' if len(existing) > 5 else ''}). Choose skip or replace to import."
        )
    else:
        st.success("The file is valid.")
    if report.ok and report.warnings:
        st.warning(
            f"{len(report.warnings)} links point to ids that are neither in the file nor "
            "in the knowledge base; they are imported as they are."
        )
        problem_table(report.warnings)
    if report.entries:
        with st.expander("Preview"):
            st.dataframe(
                pd.DataFrame([ui.entry_row(e, exists=e.id in existing) for e in report.entries[:200]]), hide_index=True
            )


def problem_table(problems) -> None:
    st.dataframe(
        pd.DataFrame([{"line": p.line, "field": p.field or "", "problem": p.message} for p in problems]),
        hide_index=True,
    )


export_section()
st.divider()
import_section()
