"""Knowledge base: search, filter, page through, edit, review in bulk, merge near-duplicates."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

import ui
from distill.data import STARTER_KB
from kb.jsonl import import_jsonl
from kb.schema import STATUSES, Entry, EntryInvalid, Source, validate_entry
from kb.store import ConflictError, DuplicateEntry, EntryNotFound

ANY = "(any)"
PAGE_SIZES = (25, 50, 100)
MAX_OPTIONS = 2000  # longer facet lists become a text box
LARGE_BACKLOG = 200  # entries to embed before a semantic search; above it, suggest a job
ADD_FIELDS = ("kb:add-id", "kb:add-task", "kb:add-title", "kb:add-concepts", "kb:add-summary",
              "kb:add-knowledge")

kb = ui.store()
st.title("Knowledge base")
stats = ui.stats()
cols = st.columns(4)
cols[0].metric("Entries", stats["total"])
for col, status in zip(cols[1:], STATUSES):
    col.metric(status.capitalize(), stats["by_status"][status])


def empty_state_guide() -> None:
    st.info("The knowledge base is empty. Three ways to fill it:\n"
            "1. **Export / import** page: upload a KB JSONL file.\n"
            "2. **Teacher jobs** page: run `teach knowledge` on a student's errors (NesyCD) or on "
            "training examples (SKIntern); entries arrive as *pending* for you to review.\n"
            "3. **Add an entry by hand** below.\n\n"
            "Then accept the entries you trust: only *accepted* knowledge is retrieved for the student.")
    if STARTER_KB.exists() and st.button("Load the starter KB (distilled by a real NesyCD run on GSM8K)"):
        report = import_jsonl(kb, STARTER_KB, on_duplicate="skip", by=ui.user())
        st.session_state["kb:flash"] = report.summary()
        st.rerun()


def filters() -> dict:
    facets = ui.facets()
    search, mode = st.columns([4, 1])
    text = search.text_input("Search", key="kb:text", placeholder="words in title, summary, "
                             "knowledge, concepts or source question")
    semantic = mode.radio("Mode", ["Text", "Semantic"], key="kb:mode", horizontal=True) == "Semantic"
    c = st.columns([2, 2, 2, 2, 2, 1])
    status = c[0].multiselect("Status", STATUSES, key="kb:status")
    task = c[1].selectbox("Task", [ANY, *facets["tasks"]], key="kb:task")
    if len(facets["concepts"]) <= MAX_OPTIONS:
        concept = c[2].selectbox("Concept", [ANY, *facets["concepts"]], key="kb:concept")
    else:  # thousands of concepts: a list would be slow to send and useless to scroll
        concept = c[2].text_input("Concept (exact)", key="kb:concept-text").strip() or ANY
    source_kind = c[3].selectbox("Source", [ANY, *facets["source_kinds"]], key="kb:source")
    sort = c[4].selectbox("Sort by", ["updated_at", "created_at", "id", "task", "status", "title",
                                      "version"], key="kb:sort")
    descending = c[5].toggle("Desc", value=True, key="kb:desc")
    pick = lambda v: None if v == ANY else v  # noqa: E731
    return {"text": text.strip() or None, "semantic": semantic, "status": status or None,
            "task": pick(task), "concept": pick(concept), "source_kind": pick(source_kind),
            "sort": sort, "descending": descending}


def load_page(f: dict) -> tuple[list[Entry], list[float] | None, int]:
    """The entries to show now: one page of a store query, or the top hits of a semantic search."""
    ready = index_hint() if f["semantic"] else True
    if f["semantic"] and f["text"] and ready:
        k = st.slider("Results", 5, 100, 25, key="kb:k")
        try:
            hits = ui.index().search(f["text"], k=k, statuses=tuple(f["status"] or STATUSES),
                                     task=f["task"])
        except Exception as e:  # noqa: BLE001 - index missing/unbuilt: say so, keep the page usable
            st.error(f"Semantic search is unavailable: {ui.md(e)}")
            return [], None, 0
        return [h.entry for h in hits], [round(h.score, 3) for h in hits], len(hits)
    if f["semantic"] and f["text"]:
        return [], None, 0
    size = st.session_state.get("kb:size", PAGE_SIZES[1])
    query = {k: f[k] for k in ("status", "task", "concept", "text", "source_kind", "sort", "descending")}
    page = st.session_state.get("kb:page", 1)
    result = kb.query(**query, offset=(page - 1) * size, limit=size)
    if page > 1 and not result.entries:  # the filters narrowed past this page: back to the first
        st.session_state["kb:page"] = 1
        result = kb.query(**query, offset=0, limit=size)
    return result.entries, None, result.total


def index_hint() -> bool:
    """Offer the background index update; False when a large backlog should not be embedded
    inside this page (the user can still choose to)."""
    backlog, problem = 0, None
    try:
        backlog = ui.index().pending_count()
    except Exception as e:  # noqa: BLE001 - index unreadable: say so, the search reports it too
        problem = e
    c = st.columns([4, 1])
    if backlog > LARGE_BACKLOG:
        c[0].warning(f"{backlog} entries changed since the index was last updated. A semantic "
                     "search would embed them here first, which can take minutes: update the "
                     "index in the background instead.")
    else:
        c[0].caption("Semantic search embeds entries changed since the last search first. After "
                     "a large import, update the index in the background instead of waiting here."
                     + (f" ({ui.md(problem)})" if problem else ""))
    if c[1].button("Update index (job)", key="kb:reindex"):
        ui.submit_job(["kb", "reindex"], "kb-reindex", name="update the embedding index")
    if backlog <= LARGE_BACKLOG:
        return True
    return st.checkbox(f"Embed the {backlog} entries here and search anyway", key="kb:embed-here")


def results_table(entries: list[Entry], scores: list[float] | None) -> list[str]:
    """The table; returns the ids of the selected rows."""
    rows = [ui.entry_row(e, **({"score": s} if scores else {})) for e, s in
            zip(entries, scores or [None] * len(entries))]
    table = st.dataframe(pd.DataFrame(rows), hide_index=True, on_select="rerun",
                         selection_mode="multi-row", key="kb:table",
                         column_config={"summary": st.column_config.TextColumn(width="large")})
    selected = [entries[i].id for i in table.selection.rows if i < len(entries)]
    if st.checkbox(f"Select all {len(entries)} on this page", key="kb:all"):
        selected = [e.id for e in entries]
    return selected


def pager(total: int) -> None:
    if st.session_state.get("kb:mode") == "Semantic" and st.session_state.get("kb:text"):
        return
    size = st.session_state.get("kb:size", PAGE_SIZES[1])
    left, right = st.columns([4, 1])
    with left:
        page = st.pagination(max(1, math.ceil(total / size)), key="kb:page")
    right.selectbox("Per page", PAGE_SIZES, index=1, key="kb:size")
    first = (page - 1) * size + 1 if total else 0
    st.caption(f"{first}–{min(page * size, total)} of {total} matching entries")


def bulk_actions(selected: list[str], entries: list[Entry]) -> None:
    pending = st.session_state.get("kb:bulk")
    if pending:
        action, ids, versions = pending
        st.warning(f"{action.capitalize()} {len(ids)} entr{'y' if len(ids) == 1 else 'ies'}: "
                   f"{ui.md(', '.join(ids[:8]))}{' …' if len(ids) > 8 else ''}?")
        yes, no = st.columns(2)
        if yes.button(f"Confirm {action}", type="primary", key="kb:bulk-yes") and \
                (action != "delete" or ui.require_curator("delete entries")):
            apply_bulk(action, ids, versions)
        if no.button("Cancel", key="kb:bulk-no"):
            del st.session_state["kb:bulk"]
            st.rerun()
        return
    c = st.columns(4)
    c[0].caption(f"{len(selected)} selected")
    for col, action in zip(c[1:], ("accept", "reject", "delete")):
        if col.button(f"{action.capitalize()} selected", disabled=not selected, key=f"kb:{action}"):
            shown = {e.id: e.version for e in entries}  # what the reviewer looked at
            st.session_state["kb:bulk"] = (action, selected, {i: shown[i] for i in selected})
            st.rerun()


def apply_bulk(action: str, ids: list[str], versions: dict[str, int]) -> None:
    del st.session_state["kb:bulk"]
    if action == "delete":
        skipped = []
        for entry_id in ids:  # each delete checks the version shown, so a fresh edit is not lost
            try:
                kb.delete(entry_id, expected_version=versions.get(entry_id), by=ui.user())
            except (ConflictError, EntryNotFound):
                skipped.append(entry_id)
        message = f"Deleted {len(ids) - len(skipped)}."
        if skipped:
            message += f" Skipped {len(skipped)} changed meanwhile: {', '.join(skipped)}"
    else:
        status = {"accept": "accepted", "reject": "rejected"}[action]
        try:
            changed = kb.set_status(ids, status, by=ui.user(), expected_versions=versions)
        except (ConflictError, EntryNotFound) as e:  # the whole batch was refused
            st.session_state["kb:error"] = (f"Nothing was {status}: {moved_on(e)} Review the "
                                            "refreshed list and select again.")
            st.session_state.pop("kb:table", None)
            st.rerun()
        message = f"Marked {changed} entr{'y' if changed == 1 else 'ies'} {status}."
    st.session_state["kb:flash"] = message
    st.session_state.pop("kb:table", None)
    st.rerun()


def moved_on(error: ConflictError | EntryNotFound) -> str:
    """Why a bulk action's selection is stale, in the reviewer's words."""
    if isinstance(error, ConflictError):
        return (f"{error.entry_id} was changed by {error.current.updated_by or 'someone'} after "
                f"you selected it (now version {error.current.version}).")
    return f"{error} (deleted after you selected it)."


def editor_and_tools(entries: list[Entry], selected: list[str]) -> None:
    if "entry" in st.query_params:  # a deep link: /?entry=<id>
        ui.open_entry(st.query_params.pop("entry"))
    requested = st.session_state.pop("open_entry", None)
    ids = [e.id for e in entries]
    if requested:
        st.session_state["kb:edit"] = requested
    elif len(selected) == 1:
        st.session_state["kb:edit"] = selected[0]
    options = list(dict.fromkeys([*([st.session_state["kb:edit"]] if st.session_state.get("kb:edit")
                                    else []), *ids]))
    if not options:
        return
    entry_id = st.selectbox("Edit entry", options, index=None, key="kb:edit",
                            placeholder="Choose an entry, or select one row in the table")
    if entry_id is None:
        return
    left, right = st.columns([3, 2])
    with left:
        ui.entry_editor(kb, entry_id, key="kb-editor")
    with right:
        similar_entries(entry_id)


def similar_entries(entry_id: str) -> None:
    st.subheader("Similar entries")
    if not st.button("Find similar", key="kb:similar"):
        return
    try:
        hits = ui.index().similar(entry_id, k=5)
    except Exception as e:  # noqa: BLE001
        st.error(f"Similarity search is unavailable: {ui.md(e)}")
        return
    if not hits:
        st.caption("Nothing similar.")
    for hit in hits:
        st.text(f"{hit.score:.3f}  {hit.entry.id}  [{hit.entry.status}]\n{ui.short(hit.entry.learning_summary, 160)}")
        st.button(f"Open {ui.md(hit.entry.id)}", key=f"kb:open-{hit.entry.id}", on_click=ui.open_entry,
                  args=(hit.entry.id,))


def suggested_merges() -> None:
    with st.expander("Suggested merges (near-duplicates)"):
        threshold = st.slider("Similarity threshold", 0.70, 0.99, 0.90, 0.01, key="kb:dup-threshold")
        if st.button("Find near-duplicates", key="kb:dups"):
            try:
                st.session_state["kb:dup-pairs"] = ui.index().near_duplicates(threshold=threshold)
            except Exception as e:  # noqa: BLE001
                st.error(f"Near-duplicate search is unavailable: {ui.md(e)}")
        pairs = st.session_state.get("kb:dup-pairs")
        if pairs is None:
            return
        if not pairs:
            st.caption("No pairs above the threshold.")
        live = kb.get_many([i for pair in pairs for i in pair[:2]])
        for n, (a, b, score) in enumerate(pairs[:30]):
            if a not in live or b not in live:
                continue  # merged or deleted since the search
            st.markdown(f"**{score:.3f}**")
            left, right = st.columns(2)
            for col, entry in ((left, live[a]), (right, live[b])):
                col.text(f"{entry.id} [{entry.status}]\n{ui.short(entry.learning_summary, 200)}")
            if left.button(f"Keep {ui.md(a)}, merge {ui.md(b)} into it", key=f"kb:merge-{n}-a"):
                merge(a, b)
            if right.button(f"Keep {ui.md(b)}, merge {ui.md(a)} into it", key=f"kb:merge-{n}-b"):
                merge(b, a)


def merge(keep: str, drop: str) -> None:
    if not ui.require_curator("merge entries"):
        return
    try:
        kb.merge(keep, drop, by=ui.user())
    except (ConflictError, EntryNotFound, ValueError) as e:
        st.error(f"Not merged: {ui.md(e)}")
        return
    st.session_state["kb:flash"] = f"Merged {drop} into {keep}."
    st.rerun()


def add_entry_form() -> None:
    with st.expander("Add an entry by hand", expanded=stats["total"] == 0):
        problems = st.session_state.get("kb:add-problems", {})
        with st.form("kb:add", clear_on_submit=False):
            c = st.columns(3)
            entry_id = c[0].text_input("Id", key="kb:add-id")
            task = c[1].text_input("Task", key="kb:add-task")
            status = c[2].selectbox("Status", STATUSES, key="kb:add-status")
            title = st.text_input("Title", key="kb:add-title")
            concepts = st.text_input("Concepts (comma-separated)", key="kb:add-concepts")
            summary = st.text_area("Learning summary", key="kb:add-summary")
            knowledge = st.text_area("Supplementary knowledge", key="kb:add-knowledge")
            for field, message in problems.items():
                st.error(ui.md(f"{field}: {message}"))
            if not st.form_submit_button("Add entry"):
                return
        data = {"id": entry_id.strip(), "task": task.strip(), "status": status,
                "title": title.strip() or None, "concepts": ui.split_list(concepts),
                "learning_summary": summary, "supplementary_knowledge": knowledge,
                "source": Source(kind="manual").model_dump()}
        try:
            entry = kb.add(validate_entry(data), by=ui.user())
        except DuplicateEntry:
            st.session_state["kb:add-problems"] = {"id": f"{entry_id!r} already exists"}
        except EntryInvalid as e:
            st.session_state["kb:add-problems"] = dict(e.problems)
        else:
            for key in ADD_FIELDS:  # a fresh form for the next entry
                st.session_state.pop(key, None)
            st.session_state.pop("kb:add-problems", None)
            st.session_state["kb:flash"] = f"Added {entry.id}."
            ui.open_entry(entry.id)
        st.rerun()


if flash := st.session_state.pop("kb:flash", None):
    st.success(ui.md(flash))
if problem := st.session_state.pop("kb:error", None):
    st.error(ui.md(problem))
if stats["total"] == 0:
    empty_state_guide()
else:
    f = filters()
    entries, scores, total = load_page(f)
    selected = results_table(entries, scores)
    pager(total)
    bulk_actions(selected, entries)
    st.divider()
    editor_and_tools(entries, selected)
    suggested_merges()
add_entry_form()
