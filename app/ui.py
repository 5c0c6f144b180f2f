"""Small presentation helpers shared by the pages: cached resources, the entry editor, job buttons.

No business logic: every decision about entries, jobs or models is made in kb/ or distill/.
KB text is user/model written, so it is shown with st.text / st.code / st.dataframe, never as HTML.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path

import streamlit as st

from kb.schema import STATUSES, EntryInvalid
from kb.store import ConflictError, EntryNotFound, KBStore
from kb.workspace import home, subdir

PAGES = {  # page id -> script, so pages can link to each other by name
    "kb": "views/kb.py",
    "graph": "views/graph.py",
    "transfer": "views/transfer.py",
    "distill": "views/distill.py",
    "train": "views/train.py",
    "jobs": "views/jobs.py",
    "compare": "views/compare.py",
    "evaluate": "views/evaluate.py",
}


# ---------------------------------------------------------------------------- cached resources


@st.cache_resource(show_spinner=False)
def _store(path: str) -> KBStore:
    return KBStore(path)


def store() -> KBStore:
    """The KB of the current workspace (one per $NESY_HOME, shared by all sessions)."""
    return _store(str(home() / "kb.sqlite"))


@st.cache_data(show_spinner=False, max_entries=4)
def _stats(path: str, seq: int) -> dict:
    return _store(path).stats()


@st.cache_data(show_spinner=False, max_entries=4)
def _facets(path: str, seq: int) -> dict:
    return _store(path).facets()


def stats() -> dict:
    """store.stats(), recomputed only when the KB changed (its change sequence moved)."""
    return _stats(str(home() / "kb.sqlite"), store().current_seq())


def facets() -> dict:
    """store.facets() (distinct tasks, concepts, sources), recomputed only when the KB changed."""
    return _facets(str(home() / "kb.sqlite"), store().current_seq())


@st.cache_resource(show_spinner="Loading the embedding index…")
def _index(path: str):
    from kb.index import KBIndex  # lazy: sentence-transformers is heavy, most pages never need it

    return KBIndex(_store(path))


def index():
    """The embedding index; its queries sync with the store first, so edits feed straight in."""
    return _index(str(home() / "kb.sqlite"))


def curator() -> str | None:
    """The name typed in this browser session; never prefilled, so it is a person's own word."""
    return (st.session_state.get("user") or "").strip() or None


def user() -> str:
    """Who is editing (recorded in every revision)."""
    return curator() or "anonymous"


def require_curator(action: str) -> bool:
    """Job launches and deletions need a typed curator name (the app may be reachable by others)."""
    if curator():
        return True
    st.warning(f"Type your name in the sidebar to {action}: it is recorded with what you do.")
    return False


PRODUCT = "NeSy Studio"
OVERVIEW = (
    "NeSy Studio distils the reasoning of a large teacher LLM into a small student model the "
    "neural-symbolic way: general reasoning goes into the student's weights (LoRA), while "
    "specialised knowledge, written by the teacher from the student's own mistakes, goes into "
    "this symbolic knowledge base, where you read, edit, accept or reject it, see it as a graph, "
    "and the student retrieves the accepted entries at answer time. Everything runs on this "
    "machine: nothing you do here leaves it."
)


WELCOMED = "welcomed"  # marker in $NESY_HOME/app/: "Got it" was clicked once in this workspace


def welcome(page: str) -> None:
    """The product's name and what it is for, on a session's first page until the session moves
    to another page, and in every new session until someone clicks "Got it" (kept in the workspace)."""
    st.sidebar.markdown(f"**{PRODUCT}** · neural-symbolic distillation")
    first = st.session_state.setdefault("welcome:page", page)
    if st.session_state.get("welcomed") or first != page or (subdir("app") / WELCOMED).exists():
        st.session_state["welcomed"] = True
        return
    with st.container(border=True, key="welcome"):
        st.subheader(f"Welcome to {PRODUCT}")
        st.write(OVERVIEW)
        st.caption(
            "Start on the Knowledge base page: review pending entries (Review), or load "
            "the starter knowledge base. Teacher jobs and training live under Distil."
        )
        st.button("Got it", key="welcome:dismiss", on_click=dismiss_welcome)


def dismiss_welcome() -> None:
    st.session_state["welcomed"] = True
    (subdir("app") / WELCOMED).touch()


def sidebar_user() -> None:
    st.sidebar.text_input("Your name (needed to start jobs or delete)", key="user", placeholder="e.g. Ada Lovelace")


# ---------------------------------------------------------------------------- entry navigation


def open_entry(entry_id: str) -> None:
    """Ask the KB page (or an editor beside a graph) to open this entry."""
    st.session_state["open_entry"] = entry_id


def md(text) -> str:
    """Text safe to put in a markdown string (captions, alerts, labels): markup characters are
    backslash-escaped, so an id like `![x](http://…)` shows as typed and loads nothing."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:=])", r"\\\1", str(text))


def short(text: str | None, n: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def entry_row(entry, **extra) -> dict:
    """One table row. Summary and knowledge are whole: the grid truncates them to the column
    width and shows the full text when a cell is opened (double-click)."""
    return {
        "id": entry.id,
        "title": entry.title or "",
        "task": entry.task,
        "status": entry.status,
        "summary": " ".join(entry.learning_summary.split()),
        "knowledge": " ".join(entry.supplementary_knowledge.split()),
        "concepts": ", ".join(entry.concepts),
        "flags": ", ".join(flags(entry)),
        "updated": (entry.updated_at or "")[:19].replace("T", " "),
        "by": entry.updated_by or "",
        "version": entry.version,
        **extra,
    }


def flags(entry) -> list[str]:
    """The entry's quality flags as text (the knowledge-quality work fills an Entry.flags field;
    entries without one have none)."""
    raw = getattr(entry, "flags", None) or []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    out = []
    for flag in raw:
        if isinstance(flag, dict):
            flag = ": ".join(
                str(flag[k]) for k in ("code", "kind", "name", "message", "detail") if flag.get(k)
            ) or json.dumps(flag, ensure_ascii=False)
        elif hasattr(flag, "model_dump"):
            flag = ": ".join(str(v) for v in flag.model_dump().values() if v)
        out.append(str(flag))
    return out


def split_list(text: str) -> list[str]:
    """Comma-separated input -> list, dropping blanks (what a person means by 'a, b,')."""
    return [part.strip() for part in text.split(",") if part.strip()]


# ------------------------------------------------------------------------------- entry editor


def entry_editor(kb: KBStore, entry_id: str, *, key: str = "editor") -> None:
    """Edit one entry: form with per-field errors, conflict detection, history, restore, delete.

    The form edits the version that was loaded (kept in session state); saving passes that version
    to store.update, so someone else's newer save is reported, never overwritten.
    """
    loaded_key, problems_key, conflict_key, flash_key = (
        f"{key}:{s}" for s in ("loaded", "problems", "conflict", "flash")
    )
    loaded = st.session_state.get(loaded_key)
    if loaded is None or loaded.id != entry_id:
        try:
            loaded = kb.get(entry_id)
        except EntryNotFound:
            st.warning(f"Entry {md(entry_id)} does not exist (deleted or merged).")
            return
        st.session_state[loaded_key] = loaded
        st.session_state.pop(problems_key, None)
        st.session_state.pop(conflict_key, None)

    if flash := st.session_state.pop(flash_key, None):
        st.success(md(flash))
    conflict = st.session_state.get(conflict_key)
    if conflict is not None:
        _show_conflict(kb, loaded, conflict, key)
    else:
        _warn_if_stale(kb, loaded, key)

    problems = st.session_state.get(problems_key, {})
    values = _entry_form(loaded, problems, key)
    if values is not None:
        _save(kb, loaded, values, key)
    _entry_source(loaded)
    _entry_history(kb, loaded, key)
    _entry_delete(kb, loaded, key)


def _reload(key: str) -> None:
    for suffix in ("loaded", "problems", "conflict"):
        st.session_state.pop(f"{key}:{suffix}", None)


def _warn_if_stale(kb: KBStore, loaded, key: str) -> None:
    try:
        latest = kb.get(loaded.id)
    except EntryNotFound:
        st.warning("This entry was deleted or merged by someone else; saving will fail.")
        return
    if latest.version != loaded.version:
        st.info(
            f"{md(latest.updated_by)} changed this entry at {md(latest.updated_at)} (now version "
            f"{latest.version}; you opened version {loaded.version})."
        )
        st.button("Load the latest version", key=f"{key}:stale-reload", on_click=_reload, args=(key,))


def _show_conflict(kb: KBStore, loaded, current, key: str) -> None:
    st.error(
        f"Not saved: {md(current.updated_by or 'someone')} saved this entry at {md(current.updated_at)} "
        f"(version {current.version}) while you were editing version {loaded.version}. "
        "Your edits are still in the form; nothing was overwritten."
    )
    with st.expander(f"Their version {current.version}", expanded=True):
        st.text(
            f"Title: {current.title or ''}\nStatus: {current.status}\nTask: {current.task}\n"
            f"Concepts: {', '.join(current.concepts)}"
        )
        st.text("Learning summary:\n" + current.learning_summary)
        st.text("Supplementary knowledge:\n" + current.supplementary_knowledge)
    st.button("Discard my edits and load their version", key=f"{key}:conflict-reload", on_click=_reload, args=(key,))


def _entry_form(entry, problems: dict, key: str) -> dict | None:
    """The form; returns the submitted values, or None when not submitted."""
    k = f"{key}:{entry.id}:{entry.version}"  # a new version re-initialises the widgets

    def error_for(field: str) -> None:
        for name, message in problems.items():
            if name == field or name.startswith(field + "."):
                st.error(md(f"{name}: {message}"))

    with st.form(f"{k}:form"):
        st.caption(md(f"{entry.id} · version {entry.version} · updated {entry.updated_at} by {entry.updated_by}"))
        title = st.text_input("Title", entry.title or "", key=f"{k}:title")
        error_for("title")
        left, right = st.columns(2)
        task = left.text_input("Task", entry.task, key=f"{k}:task")
        with left:
            error_for("task")
        status = right.selectbox("Status", STATUSES, index=STATUSES.index(entry.status), key=f"{k}:status")
        concepts = st.text_input("Concepts (comma-separated)", ", ".join(entry.concepts), key=f"{k}:concepts")
        error_for("concepts")
        summary = st.text_area("Learning summary", entry.learning_summary, height=140, key=f"{k}:summary")
        error_for("learning_summary")
        knowledge = st.text_area(
            "Supplementary knowledge", entry.supplementary_knowledge, height=140, key=f"{k}:knowledge"
        )
        error_for("supplementary_knowledge")
        links = st.text_input("Links (entry ids, comma-separated)", ", ".join(entry.links), key=f"{k}:links")
        error_for("links")
        if not st.form_submit_button("Save", type="primary"):
            return None
    return {
        "title": title.strip() or None,
        "task": task,
        "status": status,
        "concepts": split_list(concepts),
        "learning_summary": summary,
        "supplementary_knowledge": knowledge,
        "links": split_list(links),
    }


def _save(kb: KBStore, loaded, values: dict, key: str) -> None:
    changes = {f: v for f, v in values.items() if getattr(loaded, f) != v}
    if not changes:
        st.info("Nothing changed.")
        return
    try:
        saved = kb.update(loaded.id, changes, expected_version=loaded.version, by=user())
    except EntryInvalid as e:
        st.session_state[f"{key}:problems"] = dict(e.problems)
    except ConflictError as e:
        st.session_state[f"{key}:conflict"] = e.current
    except EntryNotFound:
        st.session_state[f"{key}:problems"] = {"(entry)": "it was deleted or merged meanwhile"}
    else:
        st.session_state[f"{key}:loaded"] = saved
        st.session_state.pop(f"{key}:problems", None)
        st.session_state[f"{key}:flash"] = f"Saved version {saved.version}."
    st.rerun()


def _entry_source(entry) -> None:
    if entry.source is None:
        return
    with st.expander(f"Source ({md(entry.source.kind or 'unknown')})"):
        src = entry.source
        st.text(
            f"dataset: {src.dataset or '-'}   example: {src.example_id or '-'}\n"
            f"teacher: {src.teacher_model or '-'}   student: {src.student_model or '-'}"
        )
        if src.question:
            st.text("Question:\n" + src.question)
        if src.student_response:
            st.text("Student response:\n" + src.student_response)


def _entry_history(kb: KBStore, entry, key: str) -> None:
    with st.expander("History"):
        revisions = list(reversed(kb.history(entry.id)))
        by_label = {f"v{r.version} · {r.action} · {r.by} · {r.at[:19]} · #{r.revision_id}": r for r in revisions}
        label = st.selectbox("Revision", list(by_label), key=f"{key}:{entry.id}:{entry.version}:revision")
        rev = by_label.get(label)
        if rev is None:
            return
        st.code(revision_diff(rev.changes) or "(no field changes)", language="diff")
        if rev.snapshot and st.button(f"Restore v{rev.version}", key=f"{key}:restore"):
            try:
                restored = kb.restore(entry.id, rev.revision_id, expected_version=entry.version, by=user())
            except ConflictError as e:
                st.session_state[f"{key}:conflict"] = e.current
            else:
                st.session_state[f"{key}:loaded"] = restored
                st.session_state[f"{key}:flash"] = f"Restored v{rev.version} as version {restored.version}."
            st.rerun()


def revision_diff(changes: dict) -> str:
    """A revision's field changes as a readable unified diff."""
    out = []
    for field, (old, new) in changes.items():
        old_lines = _as_lines(old)
        new_lines = _as_lines(new)
        out.append(f"## {field}")
        out += list(difflib.unified_diff(old_lines, new_lines, lineterm="", n=2))[2:] or [
            f"- {old_lines}",
            f"+ {new_lines}",
        ]
    return "\n".join(out)


def _as_lines(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines() or [""]
    return json.dumps(value, ensure_ascii=False, indent=1).splitlines()


def _entry_delete(kb: KBStore, entry, key: str) -> None:
    confirm_key = f"{key}:confirm-delete"
    if not st.session_state.get(confirm_key):
        st.button(
            "Delete this entry…", key=f"{key}:delete", on_click=st.session_state.__setitem__, args=(confirm_key, True)
        )
        return
    st.warning(
        f"Delete {md(entry.id)}? It disappears from search and retrieval; history keeps it "
        "and it can be restored from the Knowledge base page's Trash view."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, delete", key=f"{key}:delete-yes", type="primary") and require_curator("delete entries"):
        try:
            kb.delete(entry.id, expected_version=entry.version, by=user())
        except ConflictError as e:
            st.session_state[f"{key}:conflict"] = e.current
        else:
            st.session_state.pop(f"{key}:loaded", None)
            st.session_state.pop("open_entry", None)
            st.toast(f"Deleted {md(entry.id)}")
        st.session_state[confirm_key] = False
        st.rerun()
    if no.button("Cancel", key=f"{key}:delete-no"):
        st.session_state[confirm_key] = False
        st.rerun()


# ------------------------------------------------------------------------------- graph view

_GRAPH_JS = (Path(__file__).parent / "static" / "graph_component.js").read_text(encoding="utf-8")
_graph_component = st.components.v2.component("nesy_graph", js=_GRAPH_JS)


def graph_view(html: str, *, key: str, height: int = 760) -> str | None:
    """The pyvis page (kb.graph.render_html, all KB text escaped) in a bidirectional component;
    returns the node id clicked in this run ("entry:<id>", "concept:<name>", ...), else None."""
    data = {"html": html, "height": height, "key": hashlib.sha1(html.encode("utf-8")).hexdigest()}
    result = _graph_component(key=key, data=data, height=height + 10, on_clicked_change=lambda: None)
    return getattr(result, "clicked", None)


# ------------------------------------------------------------------------------------ jobs


def command_preview(argv: list[str]) -> None:
    """Show the equivalent CLI command (the same argv the job will run)."""
    import shlex

    st.caption("Equivalent command")
    st.code(shlex.join(["nesy", *argv]), language="bash", wrap_lines=True)


def submit_job(argv: list[str], kind: str, name: str | None = None) -> None:
    from distill import jobs

    if not require_curator("start jobs"):
        return
    job = jobs.submit(argv, kind, name=name)
    st.session_state["selected_job"] = job.id
    st.success(f"Job {job.id} {job.status}. Follow it on the Jobs page.")
    st.page_link(PAGES["jobs"], label="Open the Jobs page", icon=":material/work:")
