"""Knowledge base: search, filter, page through, review entry by entry, edit, act in bulk,
merge near-duplicates, restore deleted entries.

Selection is by entry id, never by row position: the table's widget key carries a signature of
the rows it shows, so a filter, page, sort or data change (or a finished bulk action) starts a
fresh, empty selection instead of ticking whatever entries now sit at the old positions.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd
import streamlit as st

import ui
from distill.data import STARTER_KB
from kb.jsonl import import_jsonl
from kb.schema import STATUSES, Entry, EntryInvalid, Source, validate_entry
from kb.store import ConflictError, DuplicateEntry, EntryNotFound

ANY = "(any)"
FLAGGED = "(any flag)"
UNFLAGGED = "(no flags)"
FLAG_HELP = {
    "restates_source": "repeats numbers, names or words of its source question",
    "generic": "mostly boilerplate that many other entries say too",
    "false_arithmetic": "a calculation in it is wrong",
    "empty_or_overlong": "a section is (nearly) empty or very long",
}
PAGE_SIZES = (25, 50, 100)
MAX_OPTIONS = 2000  # longer facet lists become a text box
LARGE_BACKLOG = 200  # entries to embed before a semantic search; above it, suggest a job
ADD_FIELDS = ("kb:add-id", "kb:add-task", "kb:add-title", "kb:add-concepts", "kb:add-summary", "kb:add-knowledge")
VIEWS = {"table": "Table", "review": "Review one by one", "trash": "Trash"}
SCOPES = ("ticked", "page", "all")
TRASH_PAGE = 25

kb = ui.store()
st.title("Knowledge base")
stats = ui.stats()
cols = st.columns(4)
cols[0].metric("Entries", stats["total"])
for col, status in zip(cols[1:], STATUSES):
    col.metric(status.capitalize(), stats["by_status"][status])


def empty_state_guide() -> None:
    st.info(
        "The knowledge base is empty. Three ways to fill it:\n"
        "1. **Export / import** page: upload a KB JSONL file.\n"
        "2. **Teacher jobs** page: run `teach knowledge` on a student's errors (NesyCD) or on "
        "training examples (SKIntern); entries arrive as *pending* for you to review.\n"
        "3. **Add an entry by hand** below.\n\n"
        "Then accept the entries you trust: only *accepted* knowledge is retrieved for the student."
    )
    if STARTER_KB.exists() and st.button(
        "Load the starter KB (knowledge the local teacher distilled "
        "from a student's GSM8K errors; it arrives pending, with "
        "quality flags, for you to review)"
    ):
        report = import_jsonl(kb, STARTER_KB, on_duplicate="skip", by=ui.user())
        st.session_state["kb:flash"] = report.summary()
        st.rerun()


# ------------------------------------------------------------------------------------ filters


def filters(sortable: bool = True) -> dict:
    """The filter bar, in rows of at most three so every label stays readable at ~800 px."""
    facets = ui.facets()
    search, mode = st.columns([3, 2])
    text = search.text_input(
        "Search", key="kb:text", placeholder="words in title, summary, knowledge, concepts or source question"
    )
    semantic = mode.radio("Mode", ["Text", "Semantic"], key="kb:mode", horizontal=True) == "Semantic"
    c = st.columns(3)
    status = c[0].multiselect("Status", STATUSES, key="kb:status")
    task = c[1].selectbox("Task", [ANY, *facets["tasks"]], key="kb:task")
    if len(facets["concepts"]) <= MAX_OPTIONS:
        concept = c[2].selectbox("Concept", [ANY, *facets["concepts"]], key="kb:concept")
    else:  # thousands of concepts: a list would be slow to send and useless to scroll
        concept = c[2].text_input("Concept (exact)", key="kb:concept-text").strip() or ANY
    c = st.columns(3)
    source_kind = c[0].selectbox("Source", [ANY, *facets["source_kinds"]], key="kb:source")
    flag = c[1].selectbox(
        "Quality flag",
        [ANY, FLAGGED, UNFLAGGED, *facets.get("flags", [])],
        key="kb:flag",
        help="Flags found by the quality checks (nesy kb check): "
        + "; ".join(f"{code}: {text}" for code, text in FLAG_HELP.items()),
    )
    sort, descending = "id", False
    if sortable:
        sort = c[2].selectbox(
            "Sort by", ["updated_at", "created_at", "id", "task", "status", "title", "version"], key="kb:sort"
        )
        descending = c[2].toggle("Descending", value=True, key="kb:desc")
    pick = lambda v: None if v in (ANY, FLAGGED, UNFLAGGED) else v  # noqa: E731
    return {
        "text": text.strip() or None,
        "semantic": semantic,
        "status": status or None,
        "task": pick(task),
        "concept": pick(concept),
        "source_kind": pick(source_kind),
        "flag": pick(flag),
        "flagged": {FLAGGED: True, UNFLAGGED: False}.get(flag),
        "sort": sort,
        "descending": descending,
    }


def store_query(f: dict) -> dict:
    return {
        k: f[k] for k in ("status", "task", "concept", "text", "source_kind", "flag", "flagged", "sort", "descending")
    }


def signature(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


# -------------------------------------------------------------------------------- table view


def load_page(f: dict) -> tuple[list[Entry], list[float] | None, int]:
    """The entries to show now: one page of a store query, or the top hits of a semantic search."""
    ready = index_hint() if f["semantic"] else True
    if f["semantic"] and f["text"] and ready:
        k = st.slider("Results", 5, 100, 25, key="kb:k")
        try:
            hits = ui.index().search(f["text"], k=k, statuses=tuple(f["status"] or STATUSES), task=f["task"])
        except Exception as e:  # noqa: BLE001 - index missing/unbuilt: say so, keep the page usable
            st.error(f"Semantic search is unavailable: {ui.md(e)}")
            return [], None, 0
        hits = [h for h in hits if flag_matches(h.entry, f)]  # the index knows no flags
        return [h.entry for h in hits], [round(h.score, 3) for h in hits], len(hits)
    if f["semantic"] and f["text"]:
        return [], None, 0
    size = st.session_state.get("kb:size", PAGE_SIZES[1])
    query = store_query(f)
    page = st.session_state.get("kb:page", 1)
    result = kb.query(**query, offset=(page - 1) * size, limit=size)
    if page > 1 and not result.entries:  # the filters narrowed past this page: back to the first
        st.session_state["kb:page"] = 1
        result = kb.query(**query, offset=0, limit=size)
    return result.entries, None, result.total


def flag_matches(entry: Entry, f: dict) -> bool:
    codes = {flag.code for flag in entry.flags}
    return (f["flag"] is None or f["flag"] in codes) and (f["flagged"] is None or f["flagged"] == bool(codes))


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
        c[0].warning(
            f"{backlog} entries changed since the index was last updated. A semantic "
            "search would embed them here first, which can take minutes: update the "
            "index in the background instead."
        )
    else:
        c[0].caption(
            "Semantic search embeds entries changed since the last search first. After "
            "a large import, update the index in the background instead of waiting here."
            + (f" ({ui.md(problem)})" if problem else "")
        )
    if c[1].button("Update index (job)", key="kb:reindex"):
        ui.submit_job(["kb", "reindex"], "kb-reindex", name="update the embedding index")
    if backlog <= LARGE_BACKLOG:
        return True
    return st.checkbox(f"Embed the {backlog} entries here and search anyway", key="kb:embed-here")


def reset_selection_if_view_changed(view: str) -> None:
    """A new view (other filters, page, sort, or a finished bulk action) starts with nothing
    selected: "select all" goes back to ticked rows and a pending confirmation is dropped.
    (A confirmation lists its ids and versions, so an edit by someone else meanwhile makes the
    store refuse it rather than silently act on something else.)"""
    if st.session_state.get("kb:view-sig") != view:
        st.session_state["kb:view-sig"] = view
        st.session_state["kb:scope"] = "ticked"
        st.session_state.pop("kb:bulk", None)


def results_table(entries: list[Entry], scores: list[float] | None, total: int, view: str) -> tuple[str, list[str]]:
    """The scope selector and the table; returns (scope, ids selected on this page).

    The table's key is the view signature: its row positions always refer to these entries."""
    n = len(entries)
    labels = {"ticked": "Ticked rows", "page": f"All {n} on this page", "all": f"All {total} matching"}
    scope = st.radio(
        "Select",
        SCOPES,
        format_func=labels.get,
        key="kb:scope",
        horizontal=True,
        help="Bulk actions apply to this selection. It resets whenever the filters, "
        "page, sort or rows change, and after every bulk action.",
    )
    impact = kb.impact([e.id for e in entries])  # from evaluations and comparisons
    rows = [
        {
            **ui.entry_row(e, **({"score": s} if scores else {})),
            "flags": [f.code for f in e.flags],
            **impact_columns(impact.get(e.id)),
        }
        for e, s in zip(entries, scores or [None] * n)
    ]
    ticking = scope == "ticked"
    table = st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key=f"kb:table:{view}",
        on_select="rerun" if ticking else "ignore",
        selection_mode="multi-row",
        column_order=[
            "id",
            "title",
            "status",
            "flags",
            "summary",
            "knowledge",
            "task",
            "concepts",
            *(["score"] if scores else []),
            *IMPACT_COLUMNS,
            "updated",
            "by",
            "version",
        ],
        column_config={
            **{k: st.column_config.NumberColumn(k, help=h) for k, h in IMPACT_HELP.items()},
            "summary": st.column_config.TextColumn(
                "learning summary", width="large", help="Double-click a cell to read it whole"
            ),
            "knowledge": st.column_config.TextColumn(
                "supplementary knowledge", width="large", help="Double-click a cell to read it whole"
            ),
            "flags": st.column_config.ListColumn(
                "quality flags", help="Open an entry (tick its row) or use Review to read what each flag found"
            ),
        },
    )
    if ticking:
        return scope, [entries[i].id for i in table.selection.rows if i < n]
    return scope, [e.id for e in entries]


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


def id_list(ids: list[str], limit: int = 12) -> str:
    return ", ".join(ids[:limit]) + (f" … and {len(ids) - limit} more" if len(ids) > limit else "")


def entries_word(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def bulk_actions(f: dict, scope: str, selected: list[str], entries: list[Entry], total: int) -> None:
    pending = st.session_state.get("kb:bulk")
    if pending:
        confirm_bulk(*pending)
        return
    count = total if scope == "all" else len(selected)
    if scope == "all":
        st.caption(f"{count} selected: every entry matching the filters")
    else:
        st.caption(ui.md(f"{count} selected" + (f": {id_list(selected)}" if selected else "")))
    row = st.container(horizontal=True, key="kb:bulk-buttons")  # wraps on a narrow screen
    for action in ("accept", "reject", "delete"):
        if row.button(f"{action.capitalize()} selected", disabled=not count, key=f"kb:{action}"):
            if scope == "all":
                chosen = all_matching(f, entries)
            else:
                shown = {e.id: e.version for e in entries}  # what the reviewer looked at
                chosen = {i: shown[i] for i in selected}
            st.session_state["kb:bulk"] = (action, list(chosen), chosen)
            st.rerun()


def all_matching(f: dict, entries: list[Entry]) -> dict[str, int]:
    """id -> version of every entry the filters match (a semantic search: its hits)."""
    if f["semantic"] and f["text"]:
        return {e.id: e.version for e in entries}
    result = kb.query(**store_query(f), offset=0, limit=10**9)
    return {e.id: e.version for e in result.entries}


def confirm_bulk(action: str, ids: list[str], versions: dict[str, int]) -> None:
    extra = " They move to the Trash, where they can be restored." if action == "delete" else ""
    what = "this entry" if len(ids) == 1 else f"these {entries_word(len(ids))}"
    st.warning(f"{action.capitalize()} {what}?{extra} Nothing changes until you confirm.")
    with st.container(height=min(220, 40 + 22 * (len(ids) // 6 + 1)), key="kb:bulk-ids"):
        st.text(", ".join(ids))
    yes, no = st.columns(2)
    if yes.button(f"Confirm: {action} {entries_word(len(ids))}", type="primary", key="kb:bulk-yes") and (
        action != "delete" or ui.require_curator("delete entries")
    ):
        apply_bulk(action, ids, versions)
    if no.button("Cancel", key="kb:bulk-no"):
        del st.session_state["kb:bulk"]
        st.rerun()


def fresh_selection() -> None:
    """Nothing stays ticked: the next run draws a new table widget."""
    st.session_state["kb:gen"] = st.session_state.get("kb:gen", 0) + 1
    st.session_state.pop("kb:bulk", None)


def apply_bulk(action: str, ids: list[str], versions: dict[str, int]) -> None:
    fresh_selection()
    loaded = st.session_state.get("kb-editor:loaded")
    if loaded is not None and loaded.id in versions:  # the editor shows the new version next
        st.session_state.pop("kb-editor:loaded")
    if action == "delete":
        skipped = []
        for entry_id in ids:  # each delete checks the version shown, so a fresh edit is not lost
            try:
                kb.delete(entry_id, expected_version=versions.get(entry_id), by=ui.user())
            except (ConflictError, EntryNotFound):
                skipped.append(entry_id)
        done = [i for i in ids if i not in skipped]
        message = f"Deleted {entries_word(len(done))}: {id_list(done)} (restorable from the Trash)."
        if skipped:
            message += f" Skipped {len(skipped)} changed meanwhile: {', '.join(skipped)}"
    else:
        status = {"accept": "accepted", "reject": "rejected"}[action]
        try:
            changed = kb.set_status(ids, status, by=ui.user(), expected_versions=versions)
        except (ConflictError, EntryNotFound) as e:  # the whole batch was refused
            st.session_state["kb:error"] = (
                f"Nothing was {status}: {moved_on(e)} Review the refreshed list and select again."
            )
            st.rerun()
        message = f"Marked {entries_word(changed)} {status}: {id_list(ids)}."
    st.session_state["kb:flash"] = message
    st.rerun()


def moved_on(error: ConflictError | EntryNotFound) -> str:
    """Why a selection is stale, in the reviewer's words."""
    if isinstance(error, ConflictError):
        return (
            f"{error.entry_id} was changed by {error.current.updated_by or 'someone'} after "
            f"you selected it (now version {error.current.version})."
        )
    return f"{error} (deleted after you selected it)."


def editor_and_tools(entries: list[Entry], selected: list[str], scope: str) -> None:
    if "entry" in st.query_params:  # a deep link: /?entry=<id>
        ui.open_entry(st.query_params.pop("entry"))
    requested = st.session_state.pop("open_entry", None)
    ids = [e.id for e in entries]
    if requested:
        st.session_state["kb:edit"] = requested
    elif scope == "ticked" and len(selected) == 1:
        st.session_state["kb:edit"] = selected[0]
    options = list(dict.fromkeys([*([st.session_state["kb:edit"]] if st.session_state.get("kb:edit") else []), *ids]))
    if not options:
        return
    entry_id = st.selectbox(
        "Edit entry", options, index=None, key="kb:edit", placeholder="Choose an entry, or tick one row in the table"
    )
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
        st.button(
            f"Open {ui.md(hit.entry.id)}", key=f"kb:open-{hit.entry.id}", on_click=ui.open_entry, args=(hit.entry.id,)
        )


# ------------------------------------------------------------------------------------ merges


def suggested_merges() -> None:
    pending = st.session_state.get("kb:merge")
    with st.expander("Suggested merges (near-duplicates)", expanded=bool(pending)):
        if pending:
            confirm_merge(*pending)
            return
        threshold = st.slider(
            "Similarity threshold",
            0.70,
            0.99,
            0.90,
            0.01,
            key="kb:dup-threshold",
            help="Pairs of entries whose embeddings are at least this similar.",
        )
        if st.button("Find near-duplicates", key="kb:dups"):
            try:
                st.session_state["kb:dup-pairs"] = ui.index().near_duplicates(threshold=threshold)
            except Exception as e:  # noqa: BLE001
                st.error(f"Near-duplicate search is unavailable: {ui.md(e)}")
        pairs = st.session_state.get("kb:dup-pairs")
        if pairs is None:
            return
        pairs = [p for p in pairs if p[2] >= threshold]  # a raised threshold narrows at once
        if not pairs:
            st.caption(f"No pairs at similarity ≥ {threshold:.2f}.")
            return
        st.caption(
            f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} at similarity ≥ {threshold:.2f}"
            + (" (the first 30 shown)" if len(pairs) > 30 else "")
        )
        live = kb.get_many([i for pair in pairs for i in pair[:2]])
        for n, (a, b, score) in enumerate(pairs[:30]):
            if a not in live or b not in live:
                continue  # merged or deleted since the search
            st.markdown(f"**{score:.3f}**")
            left, right = st.columns(2)
            for col, entry in ((left, live[a]), (right, live[b])):
                col.text(f"{entry.id} [{entry.status}]\n{ui.short(entry.learning_summary, 200)}")
            if left.button(f"Keep {ui.md(a)}, merge {ui.md(b)} into it…", key=f"kb:merge-{n}-a"):
                ask_merge(live[a], live[b])
            if right.button(f"Keep {ui.md(b)}, merge {ui.md(a)} into it…", key=f"kb:merge-{n}-b"):
                ask_merge(live[b], live[a])


def ask_merge(keep: Entry, drop: Entry) -> None:
    st.session_state["kb:merge"] = (keep.id, drop.id, keep.version, drop.version)
    st.rerun()


def confirm_merge(keep_id: str, drop_id: str, keep_version: int, drop_version: int) -> None:
    """Show the entry the merge would leave; merge only those versions, only on confirmation."""
    try:
        result = kb.preview_merge(keep_id, drop_id)
    except (EntryNotFound, ValueError) as e:
        st.error(f"Cannot merge any more: {ui.md(e)}")
        st.button(
            "Back to the suggestions", key="kb:merge-back", on_click=st.session_state.pop, args=("kb:merge", None)
        )
        return
    st.warning(
        ui.md(
            f"Merge {drop_id} into {keep_id}? {drop_id} is deleted (restorable from the "
            f"Trash) and links to it will point to {keep_id}. {keep_id} keeps its own "
            f"summary and knowledge and gains {drop_id}'s concepts and links."
        )
    )
    st.markdown(f"**{ui.md(keep_id)} after the merge** (version {result.version})")
    with st.container(border=True, key="kb:merge-preview"):
        st.text(
            f"Title: {result.title or ''}\nTask: {result.task}   Status: {result.status}\n"
            f"Concepts: {', '.join(result.concepts)}\nLinks: {', '.join(result.links) or '-'}"
        )
        st.text("Learning summary:\n" + result.learning_summary)
        st.text("Supplementary knowledge:\n" + result.supplementary_knowledge)
    yes, no = st.columns(2)
    if yes.button(
        f"Confirm: merge {ui.md(drop_id)} into {ui.md(keep_id)}", type="primary", key="kb:merge-yes"
    ) and ui.require_curator("merge entries"):
        try:
            kb.merge(keep_id, drop_id, by=ui.user(), expected_versions=(keep_version, drop_version))
        except (ConflictError, EntryNotFound, ValueError) as e:
            st.session_state["kb:error"] = "Not merged: " + (
                moved_on(e) if isinstance(e, (ConflictError, EntryNotFound)) else str(e)
            )
        else:
            st.session_state["kb:flash"] = f"Merged {drop_id} into {keep_id}."
            fresh_selection()
        st.session_state.pop("kb:merge", None)
        st.rerun()
    if no.button("Cancel", key="kb:merge-no"):
        st.session_state.pop("kb:merge", None)
        st.rerun()


# ------------------------------------------------------------------------------------ impact

IMPACT_COLUMNS = ("retrieved", "fixed", "broken", "shared")
IMPACT_HELP = {
    "retrieved": "times retrieved for a question, over every evaluation and comparison",
    "fixed": "answers that were wrong without knowledge and right with it, this entry retrieved",
    "broken": "answers that were right without knowledge and wrong with it, this entry retrieved",
    "shared": "of those flips, how many were shared with other entries retrieved for the same "
    "question (each of them is credited)",
}


def impact_columns(m: dict | None) -> dict:
    m = m or {}
    return {
        "retrieved": m.get("retrieved", 0),
        "fixed": m.get("fixed", 0),
        "broken": m.get("broken", 0),
        "shared": m.get("fixed_shared", 0) + m.get("broken_shared", 0),
    }


def impact_panel() -> None:
    """Every entry that evaluations or comparisons retrieved, the most harmful first."""
    impact = kb.impact()
    with st.expander(f"Impact on answers ({len(impact)} entries retrieved by evaluations and comparisons)"):
        if not impact:
            st.caption(
                "No evaluation or comparison has retrieved an entry yet. Run `nesy eval` with a "
                "`kb` configuration, or Compare answers with a gold answer."
            )
            return
        live = kb.get_many(list(impact))
        rows = sorted(
            (
                {
                    "id": i,
                    "title": live[i].title or "" if i in live else "(deleted)",
                    "status": live[i].status if i in live else "-",
                    **impact_columns(m),
                    "net": m["fixed"] - m["broken"],
                    "reports": m["reports"],
                }
                for i, m in impact.items()
            ),
            key=lambda r: (-r["broken"], r["net"], -r["retrieved"], r["id"]),
        )
        st.caption(
            "Harmful entries first (most answers broken). A flip with several entries retrieved "
            "credits each of them; `shared` counts those. Click a header to sort."
        )
        st.dataframe(
            pd.DataFrame(rows),
            hide_index=True,
            key="kb:impact-table",
            column_config={k: st.column_config.NumberColumn(k, help=h) for k, h in IMPACT_HELP.items()},
        )
        c = st.columns([3, 1])
        chosen = c[0].selectbox("Entry", [r["id"] for r in rows if r["id"] in live], key="kb:impact-pick")
        if chosen and c[1].button("Open it", key="kb:impact-open"):
            ui.open_entry(chosen)
            st.rerun()


# ------------------------------------------------------------------------------- review view


def review(f: dict) -> None:
    """One card per entry matching the filters, in id order (a status change never reorders it)."""
    query = {**store_query(f), "sort": "id", "descending": False}
    key = signature(query)
    if st.session_state.get("kb:review-sig") != key:  # other filters: start at their first entry
        st.session_state["kb:review-sig"] = key
        st.session_state["kb:review-pos"] = 0
    if f["semantic"]:
        st.caption("Review goes through the entries matching the filters; the search box is used as words (text mode).")
    pos = st.session_state.get("kb:review-pos", 0)
    result = kb.query(**query, offset=pos, limit=1)
    if not result.entries:
        if result.total:
            st.success(f"You reached the end of the {entries_word(result.total)} matching the filters.")
            st.button(
                "Back to the first",
                key="kb:review-first",
                on_click=st.session_state.__setitem__,
                args=("kb:review-pos", 0),
            )
        else:
            st.info("No entry matches the filters. Tip: filter Status = pending to review new knowledge.")
        return
    entry = result.entries[0]
    review_card(entry, pos, result.total, query)
    if st.session_state.get("kb:review-edit") == entry.id:
        ui.entry_editor(kb, entry.id, key="kb-review-editor")


def review_card(entry: Entry, pos: int, total: int, query: dict) -> None:
    with st.container(border=True, key="kb-review-card"):
        st.caption(f"Entry {pos + 1} of {total} matching the filters (in id order)")
        st.subheader(ui.md(entry.title or entry.id))
        st.caption(
            ui.md(
                f"{entry.id} · {entry.status} · task {entry.task} · version {entry.version} "
                f"· updated {(entry.updated_at or '')[:19]} by {entry.updated_by or '-'}"
            )
        )
        if entry.flags:
            flag_badges(entry)
            st.warning("Quality flags: " + ui.md("; ".join(ui.flags(entry))))
        else:
            st.caption("Quality flags: none")
        left, right = st.columns(2)
        with left:
            st.markdown("**Learning summary**")
            st.text(entry.learning_summary)
        with right:
            st.markdown("**Supplementary knowledge**")
            st.text(entry.supplementary_knowledge)
        src = entry.source
        left, right = st.columns(2)
        with left:
            st.markdown("**Source question**")
            st.text((src.question if src else None) or "(none recorded)")
        with right:
            st.markdown("**The student's wrong answer**")
            st.text((src.student_response if src else None) or "(none recorded)")
        st.caption(
            ui.md(
                "Concepts: "
                + (", ".join(entry.concepts) or "-")
                + (f" · source: {src.kind} {src.dataset or ''} {src.example_id or ''}" if src else "")
            )
        )
        c = [st.container(horizontal=True, key="kb-review-buttons")] * 5  # wraps when narrow
        c[0].button(
            "Accept",
            key="kb:review-accept",
            shortcut="A",
            type="primary",
            on_click=review_decide,
            args=(entry.id, entry.version, "accepted", pos, query),
        )
        c[1].button(
            "Reject",
            key="kb:review-reject",
            shortcut="X",
            on_click=review_decide,
            args=(entry.id, entry.version, "rejected", pos, query),
        )
        c[2].button("Edit", key="kb:review-edit-button", shortcut="E", on_click=toggle_edit, args=(entry.id,))
        c[3].button(
            "Previous", key="kb:review-prev", shortcut="P", disabled=pos == 0, on_click=review_go, args=(pos - 1,)
        )
        c[4].button(
            "Next", key="kb:review-next", shortcut="N", disabled=pos + 1 >= total, on_click=review_go, args=(pos + 1,)
        )
        st.caption("Keys: A accept · X reject (Streamlit reserves R) · E edit · P previous · N next")


def flag_badges(entry: Entry) -> None:
    """One badge per quality flag; the code's meaning on hover."""
    row = st.container(horizontal=True, key=f"kb-flag-badges-{signature(entry.id)}")
    for flag in entry.flags:
        with row:
            st.badge(flag.code, icon=":material/flag:", color="orange", help=FLAG_HELP.get(flag.code))


def review_decide(entry_id: str, version: int, status: str, pos: int, query: dict) -> None:
    """Set this entry's status (only the version on the card) and move to the next entry."""
    try:
        kb.set_status([entry_id], status, by=ui.user(), expected_versions={entry_id: version})
    except (ConflictError, EntryNotFound) as e:
        st.session_state["kb:error"] = f"Not {status}: {moved_on(e)} The card shows it afresh."
        return
    st.session_state["kb:flash"] = f"{entry_id} {status}."
    still_here = kb.query(**query, offset=pos, limit=1).entries
    # still matching the filters: step past it; it left them (e.g. status = pending): the next
    # entry has moved up into its place
    review_go(pos + 1 if still_here and still_here[0].id == entry_id else pos)


def review_go(pos: int) -> None:
    st.session_state["kb:review-pos"] = max(0, pos)
    st.session_state.pop("kb:review-edit", None)


def toggle_edit(entry_id: str) -> None:
    editing = st.session_state.get("kb:review-edit") == entry_id
    st.session_state["kb:review-edit"] = None if editing else entry_id


# -------------------------------------------------------------------------------- trash view


def trash() -> None:
    page = st.session_state.get("kb:trash-page", 1)
    result = kb.deleted_entries(offset=(page - 1) * TRASH_PAGE, limit=TRASH_PAGE)
    if not result.total:
        st.info("The trash is empty. Deleted and merged-away entries land here and can be restored.")
        return
    st.caption(
        f"{entries_word(result.total)} deleted, most recent first. Restoring brings an entry "
        "back as it was when deleted, as a new version; its history stays complete."
    )
    for entry in result.entries:
        last = kb.history(entry.id)[-1]
        merged_into = (last.changes.get("merged_into") or [None, None])[1]
        how = f"merged into {merged_into}" if merged_into else "deleted"
        with st.container(border=True, key=f"kb:trash-{entry.id}"):
            text, action = st.columns([5, 1])
            text.text(
                f"{entry.id}  [{entry.status}]  {entry.title or ''}\n"
                f"{how} by {last.by} at {last.at[:19].replace('T', ' ')}\n"
                f"{ui.short(entry.learning_summary, 200)}"
            )
            if action.button("Restore", key=f"kb:restore-{entry.id}"):
                restore_deleted(entry, last.revision_id, merged_into)
    if result.total > TRASH_PAGE:
        st.pagination(math.ceil(result.total / TRASH_PAGE), key="kb:trash-page")


def restore_deleted(entry: Entry, revision_id: int, merged_into: str | None) -> None:
    if not ui.require_curator("restore entries"):
        return
    try:
        restored = kb.restore(entry.id, revision_id, expected_version=entry.version, by=ui.user())
    except (ConflictError, EntryNotFound, ValueError) as e:
        st.error(f"Not restored: {ui.md(e)}")
        return
    note = f" ({merged_into} keeps the concepts and links it got from the merge)" if merged_into else ""
    st.session_state["kb:flash"] = f"Restored {entry.id} as version {restored.version}{note}."
    fresh_selection()
    st.rerun()


# ---------------------------------------------------------------------------------- add entry


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
        data = {
            "id": entry_id.strip(),
            "task": task.strip(),
            "status": status,
            "title": title.strip() or None,
            "concepts": ui.split_list(concepts),
            "learning_summary": summary,
            "supplementary_knowledge": knowledge,
            "source": Source(kind="manual").model_dump(),
        }
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


# -------------------------------------------------------------------------------------- page

if flash := st.session_state.pop("kb:flash", None):
    st.success(ui.md(flash))
if problem := st.session_state.pop("kb:error", None):
    st.error(ui.md(problem))
if "entry" in st.query_params or st.session_state.get("open_entry"):
    st.session_state["kb:view"] = "table"  # a deep link or "open entry" shows the editor
labels = {**VIEWS, "trash": f"Trash ({stats['deleted']})"}
view = st.radio(
    "View", list(VIEWS), format_func=labels.get, key="kb:view", horizontal=True, label_visibility="collapsed"
)
if view == "trash":
    trash()
elif stats["total"] == 0:
    empty_state_guide()
else:
    f = filters(sortable=view != "review")
    if view == "review":
        review(f)
    else:
        entries, scores, total = load_page(f)
        view = signature(
            f,
            st.session_state.get("kb:page", 1),
            st.session_state.get("kb:size", PAGE_SIZES[1]),
            st.session_state.get("kb:gen", 0),
        )
        reset_selection_if_view_changed(view)
        # the table's key also changes with the rows themselves (someone else's edit reorders them)
        view_sig = signature(view, [(e.id, e.version) for e in entries], total)
        scope, selected = results_table(entries, scores, total, view_sig)
        pager(total)
        bulk_actions(f, scope, selected, entries, total)
        st.divider()
        editor_and_tools(entries, selected, scope)
        suggested_merges()
        impact_panel()
if view != "trash":
    add_entry_form()
