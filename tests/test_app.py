"""AppTest: every page renders against a real workspace, forms validate, actions change the store."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from student_fixtures import tiny_model  # noqa: F401

from distill import jobs
from distill.progress import read_jsonl
from kb.schema import Entry, Source
from kb.store import KBStore

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


def entry(i: int, task="gsm8k", status="pending", **kw) -> Entry:
    return Entry(
        id=f"e{i:03d}",
        task=task,
        status=status,
        title=f"Title {i}",
        learning_summary=kw.pop("summary", f"Check units before adding (case {i})."),
        supplementary_knowledge=f"Knowledge {i}: a fraction is part of a whole.",
        concepts=kw.pop("concepts", ["fractions"] if i % 2 else ["units"]),
        source=Source(kind="error_analysis", dataset=task, question=f"Q{i}?"),
        **kw,
    )


def seed(n: int, **kw) -> KBStore:
    kb = KBStore()
    for i in range(n):
        kb.add(entry(i, **kw), by="seed")
    return kb


def run(page: str | None = None, curator: str | None = "Ada") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    if curator:
        at.session_state["user"] = curator  # as if typed in the sidebar
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Everything shown as text, for 'is this message on screen' checks."""
    parts = [
        e.value
        for kind in ("markdown", "text", "code", "caption", "success", "info", "warning", "error")
        for e in getattr(at, kind)
    ]
    return re.sub(r"\\(.)", r"\1", "\n".join(str(p) for p in parts))  # as the reader sees it


def submit_form(at: AppTest, label: str = "Save") -> AppTest:
    next(b for b in at.button if b.label == label).click()
    return at.run()


def editor_key(entry_id: str, version: int, field: str) -> str:
    return f"kb-editor:{entry_id}:{version}:{field}"


# ---------------------------------------------------------------------------------- KB page


def test_empty_workspace_shows_the_guide_and_adds_an_entry_by_hand():
    at = run()
    assert "The knowledge base is empty" in texts(at)
    at.text_input(key="kb:add-id").set_value("hand-1")
    at.text_input(key="kb:add-task").set_value("gsm8k")
    at.text_area(key="kb:add-summary").set_value("   ")  # blank: refused, field named
    at.text_area(key="kb:add-knowledge").set_value("Percent means per hundred.")
    submit_form(at, "Add entry")
    assert "learning_summary: must not be empty" in texts(at)
    assert KBStore().stats()["total"] == 0
    at.text_area(key="kb:add-summary").set_value("Convert percent to a fraction first.")
    at.text_input(key="kb:add-concepts").set_value("percent, fractions,")
    submit_form(at, "Add entry")
    saved = KBStore().get("hand-1")
    assert saved.concepts == ["percent", "fractions"] and saved.source.kind == "manual"
    assert "Added hand-1." in texts(at)
    assert at.text_input(key="kb:add-id").value == ""  # a fresh form for the next one
    at.text_input(key="kb:add-id").set_value("hand-1")  # the same id again
    at.text_input(key="kb:add-task").set_value("gsm8k")
    at.text_area(key="kb:add-summary").set_value("Again.")
    at.text_area(key="kb:add-knowledge").set_value("Again.")
    submit_form(at, "Add entry")
    assert "id: 'hand-1' already exists" in texts(at)
    assert KBStore().get("hand-1").learning_summary == "Convert percent to a fraction first."


def test_filters_search_and_paging_query_the_store():
    kb = seed(60)
    kb.add(entry(100, task="bbh", summary="Track the object swaps carefully."), by="seed")
    at = run()
    assert at.metric[0].value == "61"
    assert len(at.dataframe[0].value) == 50  # one page, not everything
    assert "1–50 of 61 matching entries" in texts(at)
    at.pagination(key="kb:page").set_value(2).run()
    assert len(at.dataframe[0].value) == 11
    at.selectbox(key="kb:task").select("bbh").run()
    table = at.dataframe[0].value
    assert list(table["id"]) == ["e100"]  # the page resets to 1 when the filter narrows
    at.selectbox(key="kb:task").select("(any)").run()
    at.text_input(key="kb:text").set_value("swaps").run()
    assert list(at.dataframe[0].value["id"]) == ["e100"]
    at.text_input(key="kb:text").set_value("").run()
    at.selectbox(key="kb:concept").select("fractions").run()
    assert set(at.dataframe[0].value["id"]) == {f"e{i:03d}" for i in range(1, 60, 2)}


def test_edit_saves_a_new_version_and_history_restores():
    kb = seed(3)
    at = run()
    at.selectbox(key="kb:edit").select("e001").run()
    at.text_input(key=editor_key("e001", 1, "title")).set_value("Units first")
    submit_form(at)
    assert kb.get("e001").title == "Units first" and kb.get("e001").version == 2
    assert "Saved version 2." in texts(at)
    revision = at.selectbox(key="kb-editor:e001:2:revision")
    assert revision.options[0].startswith("v2 · update")
    assert "+Units first" in texts(at)  # the diff of the newest revision
    revision.select_index(1).run()
    next(b for b in at.button if b.label == "Restore v1").click().run()
    assert kb.get("e001").title == "Title 1" and kb.get("e001").version == 3


def test_kb_text_is_never_markup():
    kb = KBStore()
    sneaky = "img![x](http://example.invalid/x.png)"
    kb.add(entry(1).model_copy(update={"id": sneaky, "title": "<b>bold</b>"}), by="**bob**")
    at = run()
    at.selectbox(key="kb:edit").select(sneaky).run()
    caption = next(c.value for c in at.caption if "version 1" in c.value)
    assert "\\!\\[x\\]\\(http\\:" in caption and "\\*\\*bob\\*\\*" in caption
    assert not at.get("html") and not any("<b>" in m.value for m in at.markdown)


def test_invalid_edit_is_refused_with_the_field_named():
    kb = seed(2)
    at = run()
    at.selectbox(key="kb:edit").select("e000").run()
    at.text_input(key=editor_key("e000", 1, "task")).set_value("  ")
    submit_form(at)
    assert "task: must not be empty" in texts(at)
    assert kb.get("e000").version == 1 and kb.get("e000").task == "gsm8k"


def test_conflict_is_shown_and_never_overwrites():
    kb = seed(2)
    at = run()
    at.selectbox(key="kb:edit").select("e000").run()
    kb.update("e000", {"title": "Bob's title"}, expected_version=1, by="bob")  # saved first
    at.text_input(key=editor_key("e000", 1, "title")).set_value("Alice's title")
    submit_form(at)
    shown = texts(at)
    assert "Not saved: bob saved this entry" in shown and "version 2" in shown
    assert kb.get("e000").title == "Bob's title"
    next(b for b in at.button if b.label == "Discard my edits and load their version").click().run()
    assert at.text_input(key=editor_key("e000", 2, "title")).value == "Bob's title"
    at.text_input(key=editor_key("e000", 2, "title")).set_value("Alice's title")
    submit_form(at)
    assert kb.get("e000").title == "Alice's title" and kb.get("e000").updated_by


def test_bulk_accept_and_delete_need_confirmation():
    kb = seed(4)
    kb.add(entry(50, task="bbh"), by="seed")
    at = run()
    at.selectbox(key="kb:task").select("gsm8k").run()
    at.radio(key="kb:scope").set_value("page").run()
    at.button(key="kb:accept").click().run()
    assert kb.stats()["by_status"]["accepted"] == 0  # not before confirming
    shown = texts(at)
    assert "Accept these 4 entries?" in shown
    assert "e003, e002, e001, e000" in shown  # the confirmation lists the ids
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["by_status"] == {"pending": 1, "accepted": 4, "rejected": 0}
    assert "Marked 4 entries accepted: e003, e002, e001, e000." in texts(at)
    assert at.radio(key="kb:scope").value == "ticked"  # nothing stays selected after the action
    assert "0 selected" in texts(at) and at.button(key="kb:delete").disabled
    at.radio(key="kb:scope").set_value("page").run()
    at.button(key="kb:delete").click().run()
    at.button(key="kb:bulk-no").click().run()
    assert kb.stats()["total"] == 5
    at.button(key="kb:delete").click().run()
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["total"] == 1 and kb.get("e050")


def test_select_all_names_its_scope_and_resets_when_the_filter_changes():
    kb = seed(60)
    kb.add(entry(100, task="bbh"), by="seed")
    at = run()
    scope = at.radio(key="kb:scope")
    assert scope.value == "ticked" and "0 selected" in texts(at)
    assert list(scope.proto.options) == ["Ticked rows", "All 50 on this page", "All 61 matching"]
    scope.set_value("page").run()
    assert "50 selected: e100, e059" in texts(at)
    at.selectbox(key="kb:task").select("bbh").run()  # another filter: the selection is gone
    assert at.radio(key="kb:scope").value == "ticked"
    assert "0 selected" in texts(at) and at.button(key="kb:reject").disabled
    at.radio(key="kb:scope").set_value("page").run()
    at.selectbox(key="kb:task").select("(any)").run()
    assert at.radio(key="kb:scope").value == "ticked"
    at.radio(key="kb:scope").set_value("all").run()
    assert "61 selected: every entry matching the filters" in texts(at)
    at.button(key="kb:reject").click().run()
    shown = texts(at)
    assert "Reject these 61 entries?" in shown and "e000" in shown and "e100" in shown
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["by_status"]["rejected"] == 61
    assert at.radio(key="kb:scope").value == "ticked"


def test_page_change_drops_a_pending_bulk_confirmation():
    kb = seed(60)
    at = run()
    at.radio(key="kb:scope").set_value("page").run()
    at.button(key="kb:delete").click().run()
    assert "Delete these 50 entries?" in texts(at)
    at.pagination(key="kb:page").set_value(2).run()  # other rows: nothing carried over
    assert "Delete these" not in texts(at) and not [b for b in at.button if b.key == "kb:bulk-yes"]
    assert at.radio(key="kb:scope").value == "ticked" and "0 selected" in texts(at)
    assert kb.stats()["total"] == 60


def test_table_shows_summary_and_knowledge():
    kb = seed(1)
    long = "Check the units of every quantity before adding them together. " * 4
    kb.update("e000", {"learning_summary": long}, expected_version=1, by="seed")
    at = run()
    table = at.dataframe[0].value
    assert {"summary", "knowledge"} <= set(table.columns)
    assert table["summary"][0] == long.strip()  # whole; the grid truncates it to the column
    assert table["knowledge"][0] == "Knowledge 0: a fraction is part of a whole."


def test_review_card_accepts_rejects_edits_and_moves_on():
    kb = KBStore()
    for i in range(3):
        kb.add(
            entry(i).model_copy(
                update={
                    "source": Source(
                        kind="error_analysis",
                        dataset="gsm8k",
                        question=f"How many apples in basket {i}?",
                        student_response=f"The answer is {i + 40}.",
                    )
                }
            ),
            by="seed",
        )
    kb.add(entry(9, status="accepted"), by="seed")
    at = run()
    at.multiselect(key="kb:status").set_value(["pending"]).run()
    at.radio(key="kb:view").set_value("review").run()
    shown = texts(at)
    assert "Entry 1 of 3 matching the filters" in shown
    assert "Check units before adding (case 0)." in shown  # the full summary and knowledge
    assert "Knowledge 0: a fraction is part of a whole." in shown
    assert "How many apples in basket 0?" in shown and "The answer is 40." in shown
    assert "Quality flags: none" in shown
    shortcuts = {b.key: b.proto.shortcut.upper() for b in at.button if b.key and b.key.startswith("kb:review")}
    assert shortcuts["kb:review-accept"] == "A" and shortcuts["kb:review-reject"] == "X"
    assert shortcuts["kb:review-edit-button"] == "E" and shortcuts["kb:review-next"] == "N"
    at.button(key="kb:review-accept").click().run()
    assert kb.get("e000").status == "accepted"
    assert "Entry 1 of 2 matching" in texts(at) and "basket 1?" in texts(at)  # the next one
    at.button(key="kb:review-next").click().run()
    assert "basket 2?" in texts(at)
    at.button(key="kb:review-reject").click().run()
    assert kb.get("e002").status == "rejected" and kb.get("e001").status == "pending"
    assert "You reached the end of the 1 entry matching the filters." in texts(at)
    at.button(key="kb:review-first").click().run()
    assert "basket 1?" in texts(at) and at.button(key="kb:review-prev").disabled
    at.button(key="kb:review-edit-button").click().run()
    at.text_input(key="kb-review-editor:e001:1:title").set_value("Reviewed title")
    submit_form(at)
    assert kb.get("e001").title == "Reviewed title"


def test_review_card_shows_quality_flags():
    import ui  # app/ is on sys.path once the app ran

    run()
    flagged = type("E", (), {"flags": ["tied to its source problem", {"code": "vague"}]})()
    assert ui.flags(flagged) == ["tied to its source problem", "vague"]
    assert ui.flags(entry(1)) == []


def test_trash_lists_deleted_entries_and_restores_them():
    kb = seed(3)
    kb.delete("e001", expected_version=1, by="bob")
    at = run(curator=None)
    at.radio(key="kb:view").set_value("trash").run()
    shown = texts(at)
    assert "1 entry deleted" in shown and "deleted by bob" in shown and "e001" in shown
    at.button(key="kb:restore-e001").click().run()
    assert "Type your name in the sidebar to restore entries" in texts(at)
    with pytest.raises(KeyError):
        kb.get("e001")
    at.sidebar.text_input(key="user").input("Grace").run()
    at.button(key="kb:restore-e001").click().run()
    restored = kb.get("e001")
    assert restored.title == "Title 1" and restored.updated_by == "Grace"
    assert "Restored e001 as version 3." in texts(at) and "The trash is empty" in texts(at)


def test_merge_shows_the_resulting_entry_and_asks_to_confirm():
    kb = seed(2)
    kb.update("e001", {"concepts": ["units", "money"]}, expected_version=1, by="seed")
    at = run()
    at.session_state["kb:dup-pairs"] = [("e000", "e001", 0.97), ("e000", "e002", 0.71)]
    at.run()
    at.slider(key="kb:dup-threshold").set_value(0.95).run()
    assert "1 pair at similarity ≥ 0.95" in texts(at)
    next(b for b in at.button if b.label.startswith("Keep e000")).click().run()
    shown = texts(at)
    assert "Merge e001 into e000?" in shown and "e000 after the merge" in shown
    assert "Concepts: units, money" in shown  # the preview: e000 gains e001's concepts
    assert kb.get("e001")  # nothing merged yet
    at.button(key="kb:merge-no").click().run()
    assert kb.get("e001") and "Merge e001 into e000?" not in texts(at)
    next(b for b in at.button if b.label.startswith("Keep e000")).click().run()
    at.button(key="kb:merge-yes").click().run()
    assert kb.get("e000").concepts == ["units", "money"]
    with pytest.raises(KeyError):
        kb.get("e001")
    assert "Merged e001 into e000." in texts(at)


def test_first_open_names_the_product_and_explains_it():
    seed(1)
    at = run()
    shown = texts(at) + "\n".join(h.value for h in at.subheader)
    assert "Welcome to NeSy Studio" in shown
    assert "distils the reasoning of a large teacher LLM into a small student model" in shown
    at.button(key="welcome:dismiss").click().run()
    assert "Welcome to NeSy Studio" not in "\n".join(h.value for h in at.subheader)
    assert "NeSy Studio" in texts(at)  # the name stays in the sidebar
    again = run()  # a new browser session in the same workspace: "Got it" was kept
    assert "Welcome to NeSy Studio" not in "\n".join(h.value for h in again.subheader)


def test_the_welcome_shows_in_each_new_session_until_dismissed():
    seed(1)
    run()
    assert "Welcome to NeSy Studio" in "\n".join(h.value for h in run().subheader)


def test_deleting_merging_and_starting_jobs_need_a_typed_curator_name():
    kb = seed(2)
    at = run(curator=None)
    assert at.sidebar.text_input(key="user").value in ("", None)  # never prefilled
    at.radio(key="kb:scope").set_value("page").run()
    at.button(key="kb:delete").click().run()
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["total"] == 2 and "Type your name in the sidebar" in texts(at)
    at.switch_page("views/jobs.py").run()
    at.button(key="jobs:selftest").click().run()
    assert jobs.list_jobs() == [] and "Type your name in the sidebar to start jobs" in texts(at)
    at.sidebar.text_input(key="user").input("Grace").run()
    at.button(key="jobs:selftest").click().run()
    [job] = jobs.list_jobs()
    jobs.cancel(job.id, grace=5)
    jobs.wait(job.id, timeout=60)


def test_bulk_accept_refuses_all_when_an_entry_changed_after_selection():
    kb = seed(3)
    at = run()
    at.radio(key="kb:scope").set_value("page").run()
    at.button(key="kb:accept").click().run()
    kb.update("e001", {"title": "Bob's fix"}, expected_version=1, by="bob")  # meanwhile
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["by_status"]["accepted"] == 0  # not even the two unchanged ones
    assert "Nothing was accepted: e001 was changed by bob after you selected it" in texts(at)
    at.radio(key="kb:scope").set_value("page").run()  # the refreshed list: the new version
    at.button(key="kb:accept").click().run()
    at.button(key="kb:bulk-yes").click().run()
    assert kb.stats()["by_status"]["accepted"] == 3


@pytest.mark.slow  # the reindex job loads MiniLM in its own process
def test_semantic_search_with_a_large_backlog_offers_a_job_instead_of_embedding():
    from kb.index import KBIndex

    kb = KBStore()
    kb.import_entries([entry(i) for i in range(250)], by="seed")
    at = run()
    at.radio(key="kb:mode").set_value("Semantic").run()
    at.text_input(key="kb:text").set_value("fractions").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "250 entries changed since the index was last updated" in texts(at)
    assert at.checkbox(key="kb:embed-here").value is False
    assert KBIndex(kb).pending_count() == 250  # nothing was embedded by the page
    at.button(key="kb:reindex").click().run()
    [job] = jobs.list_jobs()
    assert job.argv == ["kb", "reindex"]
    assert jobs.wait(job.id, timeout=300).status == "succeeded", jobs.log_tail(job.id)
    assert KBIndex(kb).pending_count() == 0
    at.text_input(key="kb:text").set_value("fraction part of a whole").run()
    assert "changed since the index was last updated" not in texts(at)
    assert len(at.dataframe[0].value) == 25  # the search ran: the default 25 results


# -------------------------------------------------------------------------------- Jobs page


def test_jobs_page_empty_state_and_selftest_launch():
    at = run("jobs")
    assert "No jobs yet" in texts(at)
    assert "nesy jobs selftest --steps 60" in texts(at)
    at.number_input(key="jobs:selftest-steps").set_value(2)
    at.number_input(key="jobs:selftest-delay").set_value(0.0)
    at.button(key="jobs:selftest").click().run()
    [job] = jobs.list_jobs()
    assert job.argv[:4] == ["jobs", "selftest", "--steps", "2"]
    assert jobs.wait(job.id, timeout=60).status == "succeeded"


def test_jobs_page_shows_progress_and_cancels_a_running_job():
    job = jobs.submit(["jobs", "selftest", "--steps", "400", "--seconds-per-step", "0.05"], "selftest")
    deadline = time.monotonic() + 60
    while not jobs.progress(job.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    at = run("jobs")
    shown = texts(at)
    assert job.command_line() in shown and "Status: **running**" in shown
    assert at.get("progress") and "/400" in at.get("progress")[0].proto.text
    at.button(key=f"jobs:cancel-{job.id}").click().run()
    assert jobs.wait(job.id, timeout=30).status == "cancelled"
    at.run()
    assert "Status: **cancelled** — stopped cleanly on request" in texts(at)
    at.button(key=f"jobs:resume-{job.id}").click().run()
    resumed = jobs.list_jobs()[0]
    assert resumed.resumed_from == job.id
    jobs.cancel(resumed.id)
    jobs.wait(resumed.id, timeout=30)


@pytest.mark.parametrize("page", ["graph", "transfer", "distill", "train", "compare", "evaluate"])
def test_every_page_renders_on_an_empty_workspace(page):
    run(page)


# ------------------------------------------------------------------------- graph and transfer


def test_graph_focuses_a_found_node_and_edits_it_beside_the_graph():
    kb = seed(6)
    kb.add(entry(7, task="bbh", summary="<script>alert(1)</script> is just text"), by="seed")
    at = run("graph")
    assert "Nothing to draw" not in texts(at)
    html = graph_html(at)
    assert "alert(1)</script>" not in html  # KB text is escaped in the page
    at.text_input(key="graph:find").set_value("e007").run()
    at.selectbox(key="graph:focus").select("entry:e007").run()
    assert "3 of 11 nodes shown (1 entries)" in texts(at)  # e007 with its task and concept
    assert at.selectbox(key="graph:node").value == "e007"
    at.text_input(key="graph-editor:e007:1:title").set_value("Edited from the graph")
    submit_form(at)
    assert kb.get("e007").title == "Edited from the graph"


def graph_html(at: AppTest) -> str:
    """The pyvis page the graph component was given."""
    return json.loads(at.get("bidi_component")[0].proto.json)["html"]


def test_graph_folds_concept_names_and_keeps_labels_short():
    kb = KBStore()
    for i, concept in enumerate(["Percentages", "percentage", "percent  change"]):
        kb.add(
            entry(i, concepts=[concept]).model_copy(
                update={"title": "A very long title that would cover its neighbours on the canvas"}
            ),
            by="seed",
        )
    at = run("graph")
    nodes = json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", graph_html(at)).group(1))
    concepts = sorted(n["label"] for n in nodes if n["id"].startswith("concept:"))
    assert concepts == ["percent change", "percentage"]  # one node for "Percentages"/"percentage"
    entry_node = next(n for n in nodes if n["id"] == "entry:e000")
    assert len(entry_node["label"]) <= 28 and entry_node["label"].endswith("…")
    assert entry_node["title"].startswith("A very long title that would cover its neighbours")
    assert "6 of 6 nodes shown" in texts(at)
    html = graph_html(at)
    assert '"randomSeed": 7' in html and "setOptions({physics: false})" in html


def test_graph_size_cap_says_what_was_cut():
    seed(30)
    at = run("graph")
    at.number_input(key="graph:max").set_value(50).run()
    assert "showing the 50 most connected" not in texts(at)  # 30 entries + 2 tasks... fits
    at.number_input(key="graph:max").set_value(50)
    kb = KBStore()
    for i in range(30, 80):
        kb.add(entry(i), by="seed")
    at.run()
    assert "The graph has 83 nodes; showing the 50 most connected" in texts(at)


def test_import_shows_the_report_before_applying_then_export_counts():
    seed(2)
    good = "\n".join(jsonl_line(i) for i in (10, 11)) + "\n"
    at = run("transfer")
    at.text_area(key="x:paste").set_value(good + '{"id": "bad", "task": "t"}\n').run()
    shown = texts(at)
    assert "The file has problems" in shown
    problems = at.dataframe[0].value
    assert set(problems["field"]) >= {"learning_summary", "supplementary_knowledge", "status"}
    assert not [b for b in at.button if b.key == "x:apply"]
    at.text_area(key="x:paste").set_value(good + jsonl_line(0)).run()  # e000 exists already
    assert "1 ids already exist (e000)" in texts(at)
    at.radio(key="x:policy").set_value("skip").run()
    assert KBStore().stats()["total"] == 2  # nothing written yet
    at.button(key="x:apply").click().run()
    assert "Imported: 2 added, 0 overwritten, 1 skipped" in texts(at)
    assert KBStore().stats()["total"] == 4
    assert "0 entries will be exported" in texts(at)  # accepted only by default: none yet
    at.multiselect(key="x:status").set_value(["pending"]).run()
    assert "4 entries will be exported" in texts(at)


def jsonl_line(i: int) -> str:
    from kb.jsonl import dumps_entry

    return dumps_entry(entry(i))


# -------------------------------------------------------------- teacher / train job launchers


def started_job(at: AppTest, button_key: str) -> jobs.Job:
    at.button(key=button_key).click().run()
    [job] = jobs.list_jobs()
    jobs.cancel(job.id, grace=5)  # the argv is what we check; don't run a teacher here
    jobs.wait(job.id, timeout=60)
    return job


def test_teacher_page_builds_the_command_and_never_stores_the_key(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-teachers")
    monkeypatch.setenv("NESY_TEACHER_KEY_ENVS", "MY_TEACHER_KEY")
    at = run("distill")
    assert "nesy teach rationales --dataset gsm8k --split train --limit 20 --thoughts cot" in texts(at)
    at.multiselect(key="r:thoughts").set_value(["cot", "eot"])
    at.radio(key="r:teacher").set_value("OpenAI-compatible server").run()
    assert "Name the model the server should use." in texts(at)
    assert at.button(key="r:start").disabled
    at.text_input(key="r:model").set_value("qwen-72b")
    assert "AWS_SECRET_ACCESS_KEY" not in at.selectbox(key="r:env").options  # only declared names
    at.selectbox(key="r:env").select("MY_TEACHER_KEY").run()
    assert "`MY_TEACHER_KEY` is set in this server's environment." in texts(at)
    job = started_job(at, "r:start")
    assert job.argv[job.argv.index("--thoughts") + 1] == "cot,eot"
    assert job.argv[job.argv.index("--teacher") + 1] == "http://127.0.0.1:8000/v1"
    assert job.argv[job.argv.index("--api-key-env") + 1] == "MY_TEACHER_KEY"
    stored = (job.dir / "config.json").read_text() + (job.dir / "log.txt").read_text()
    assert "sk-secret-value" not in stored


def test_knowledge_tab_requires_an_error_file_or_uses_examples():
    at = run("distill")
    at.radio(key="k:source").set_value("Student errors (NesyCD)").run()
    assert at.button(key="k:start").disabled
    at.radio(key="k:source").set_value("Examples + gold answers (SKIntern)").run()
    assert "nesy teach knowledge --dataset gsm8k --split train --limit 20 --with-answer" in texts(at)


def test_train_page_builds_a_skintern_command_and_takes_no_paths():
    from kb.workspace import home

    at = run("train")
    assert "No rationale sets yet" in texts(at)
    assert at.button(key="t:start").disabled  # no data yet
    (home() / "datasets" / "gsm8k-cot").mkdir(parents=True)
    (home() / "datasets" / "gsm8k-cot" / "records.jsonl").write_text("{}\n")
    at = run("train")
    assert at.selectbox(key="t:data").options == ["gsm8k-cot"]  # no free-text path option
    for bad in ("../../victim", "/etc", "a/b"):
        at.text_input(key="t:output").set_value(bad).run()
        assert at.button(key="t:start").disabled and "--output takes a name" in texts(at)
    at.text_input(key="t:output").set_value("").run()
    at.text_input(key="t:base_model").set_value("/home/me/model").run()
    assert at.button(key="t:start").disabled
    at.text_input(key="t:base_model").set_value("").run()
    at.selectbox(key="t:method").select("skintern").run()
    at.number_input(key="t:skintern:stages").set_value(3).run()
    at.selectbox(key="t:preset").select("paper").run()
    assert "nesy train skintern --data gsm8k-cot --output skintern-gsm8k-cot --preset paper --stages 3" in texts(at)
    job = started_job(at, "t:start")
    assert job.kind == "train"
    assert (
        job.command_line()
        == "nesy train skintern --data gsm8k-cot --output skintern-gsm8k-cot --preset paper --stages 3"
    )


def test_train_page_form_is_the_methods_config_and_survives_a_page_switch():
    from distill.methods import METHODS
    from distill.methods.options import fields
    from kb.workspace import home

    (home() / "datasets" / "gsm8k-cot").mkdir(parents=True)
    (home() / "datasets" / "gsm8k-cot" / "records.jsonl").write_text("{}\n")
    at = run("train")
    at.selectbox(key="t:method").select("nesycd").run()
    shown = {
        w.key
        for kind in ("text_input", "number_input", "selectbox", "checkbox", "multiselect")
        for w in getattr(at, kind)
    }
    for spec in fields(METHODS["nesycd"].config):  # every option of `nesy train nesycd`, no other
        assert any(k.endswith(":" + spec.name) for k in shown), spec.name
    assert not any(k.endswith(":stages") for k in shown)
    at.text_input(key="t:nesycd:teacher").set_value("http://127.0.0.1:8000/v1").run()
    assert at.button(key="t:start").disabled and "a URL teacher needs a model name" in texts(at)
    at.switch_page("views/kb.py").run()
    at.switch_page("views/train.py").run()
    assert at.selectbox(key="t:method").value == "nesycd"
    assert at.text_input(key="t:nesycd:teacher").value == "http://127.0.0.1:8000/v1"


# ---------------------------------------------------------------------- compare and evaluate


def test_compare_batch_command_and_evaluate_report_with_flips():
    from distill.evaluate import EvalConfig, parse_config, summarise, table

    kb = seed(2)
    at = run("compare")
    assert "nesy eval --dataset gsm8k --split test --limit 50" in texts(at)
    assert "--config without=base --config with=base,kb --max-new-tokens" in texts(at)  # k, thought: the card's
    # a report as `nesy eval` writes it (its own summarise), with one flip caused by e001
    cfg = EvalConfig(configs=[parse_config("without=base"), parse_config("with=base,kb")], name="r1")
    rows = [
        {
            "config": c,
            "example_id": "x1",
            "task": "gsm8k",
            "correct": ok,
            "correct_flexible": ok,
            "extracted": ans,
            "gold": "4",
            "retrieved": [["e001", 0.8]] if c == "with" else [],
            "used_knowledge": c == "with",
            "prompt_tokens": 10,
            "params": 100,
            "latency_s": 0.1,
        }
        for c, ok, ans in (("without", False, "5"), ("with", True, "4"))
    ]
    results = summarise(rows, cfg, ["x1"])
    report = Path(jobs.home()) / "evals" / "r1"
    report.mkdir(parents=True)
    (report / "results.json").write_text(json.dumps(results))
    assert "without → with: 1 fixed, 0 broken" in table(results)
    at = run("evaluate")
    assert list(at.dataframe[0].value["configuration"]) == ["without", "with"]
    assert "without → with: 1 fixed, 0 broken" in [h.value for h in at.subheader]
    at.button(key="ev:edit-with").click().run()
    assert at.selectbox(key="kb:edit").value == "e001"  # the KB page opened the entry
    assert kb.get("e001")


def wait_served(job_id: str, timeout: float = 600) -> None:
    """Until the compare session job has answered its request (it then stays warm, running)."""
    deadline = time.monotonic() + timeout
    while not any(e["event"] == "served" for e in read_jsonl(jobs.home() / "jobs" / job_id / "answer_events.jsonl")):
        assert jobs.get(job_id).active and time.monotonic() < deadline, jobs.log_tail(job_id)
        time.sleep(0.2)


@pytest.mark.slow
def test_compare_answers_a_typed_question_both_ways_in_a_job():
    kb = seed(1, status="accepted")
    at = run("compare")
    at.text_input(key="cmp:base").set_value("/home/me/model").run()
    assert at.button(key="cmp:run").disabled  # no paths from the browser
    at.text_input(key="cmp:base").set_value("")
    at.number_input(key="cmp:max-new").set_value(16)
    at.text_area(key="cmp:question").set_value("Tom has 3 apples and buys 2 more. How many?")
    at.text_input(key="cmp:gold").set_value("5").run()
    at.button(key="cmp:run").click().run()
    [job] = jobs.list_jobs()
    assert job.argv[:3] == ["answer", "--session", "--events"]  # the question goes in as a request
    request = json.loads((job.dir / "requests" / "1.json").read_text())
    assert (request["question"], request["gold"], request["kb"], request["compare"]) == (
        "Tom has 3 apples and buys 2 more. How many?",
        "5",
        True,
        True,
    )
    wait_served(job.id)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    headers = [h.value for h in at.subheader]
    assert "Without knowledge" in headers and "With knowledge" in headers
    assert "e000" in texts(at)  # the one accepted entry was retrieved, with its score
    assert kb.impact()["e000"]["retrieved"] == 1
    at.button(key="cmp:edit-e000").click().run()
    at.text_input(key="cmp-editor:e000:1:title").set_value("Edited while comparing")
    submit_form(at)
    assert kb.get("e000").title == "Edited while comparing"
    jobs.wait(jobs.cancel(job.id, grace=5).id, timeout=60)  # the warm session would idle 10 min


def test_compare_runs_both_commands_through_the_chosen_student_backend(monkeypatch):
    """The Compare page's backend is the CLI's --backend: checked by the CLI's check_backend, passed
    to the batch `nesy eval` and to the answer job, which then answers through that server."""
    from openai_stub import ServesAdapters, serve

    monkeypatch.setattr(ServesAdapters, "models", {"base"})  # no adapter: the base under its name
    ServesAdapters.bodies = []
    at = run("compare")
    at.text_area(key="cmp:question").set_value("Tom has 3 apples and buys 4 more. How many?")
    at.selectbox(key="cmp:backend").set_value("OpenAI-compatible URL").run()
    at.text_input(key="cmp:backend-url").set_value("ftp://gpu-box/v1").run()
    assert any(w.value.startswith("--backend must be") for w in at.warning)
    assert at.button(key="cmp:run").disabled and at.button(key="cmp:b-start").disabled
    with serve(ServesAdapters) as url:
        at.text_input(key="cmp:backend-url").set_value(url).run()
        assert not at.warning and f"--backend {url} --max-new-tokens" in texts(at)  # the batch `nesy eval`
        at.button(key="cmp:run").click().run()
        [job] = jobs.list_jobs()
        assert job.argv[job.argv.index("--backend") + 1] == url
        wait_served(job.id)
        jobs.wait(jobs.cancel(job.id, grace=5).id, timeout=60)  # the warm session would idle 10 min
    at.run()
    assert "Answer: 7" in texts(at) and ServesAdapters.answer in texts(at)
    assert [b["model"] for b in ServesAdapters.bodies] == ["base", "base"]  # without and with knowledge


def test_empty_kb_offers_the_starter_kb_and_loads_it():
    from distill.data import STARTER_KB

    assert STARTER_KB.exists(), "the starter KB distilled by bench/real_run_gsm8k.sh ships in data/"
    at = run()
    load = [b for b in at.button if b.label.startswith("Load the starter KB")]
    assert load, "an empty KB offers the starter KB"
    load[0].click()
    at.run()
    expected = sum(1 for line in STARTER_KB.read_text(encoding="utf-8").splitlines() if line.strip())
    assert KBStore().stats()["total"] == expected
    assert "The knowledge base is empty" not in texts(at)


# ------------------------------------------------------------ impact, jobs, saved configs, compare


def record(report: str, impact: dict) -> None:
    from distill.evaluate import record_impact

    record_impact(report, impact)


def test_impact_columns_sort_the_harmful_entries_first_and_ring_the_graph_nodes():
    seed(4, status="accepted")
    record(
        "eval:r1",
        {
            "e001": {"retrieved": 5, "fixed": 1, "broken": 3, "broken_shared": 2},
            "e002": {"retrieved": 4, "fixed": 2},
            "e003": {"retrieved": 2},
        },
    )
    record("compare:q", {"e001": {"retrieved": 1, "broken": 1}})
    at = run()
    table = at.dataframe[0].value.set_index("id")
    assert (
        table.loc["e001", "retrieved"],
        table.loc["e001", "fixed"],
        table.loc["e001", "broken"],
        table.loc["e001", "shared"],
    ) == (6, 1, 4, 2)
    assert table.loc["e000", "retrieved"] == 0
    impact = at.dataframe[1].value  # the impact panel's table
    assert list(impact["id"]) == ["e001", "e003", "e002"]  # most broken first, then the least net help
    assert list(impact["reports"]) == [2, 1, 1]
    at.button(key="kb:impact-open").click().run()
    assert at.selectbox(key="kb:edit").value == "e001"
    at = run("graph")
    nodes = {
        n["id"]: n for n in json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", graph_html(at)).group(1))
    }
    assert nodes["entry:e001"]["impact"] == "harmful" and nodes["entry:e001"]["color"]["border"] == "#d50000"
    assert nodes["entry:e002"]["impact"] == "helpful" and nodes["entry:e003"]["impact"] == "neutral"
    assert "impact" not in nodes["entry:e000"]
    assert "impact: retrieved 6, fixed 1, broke 4 (2 shared with other entries)" in nodes["entry:e001"]["title"]


def finished_job(argv: list[str], kind: str = "selftest") -> jobs.Job:
    return jobs.wait(jobs.submit(argv, kind).id, timeout=60)


def test_jobs_page_a_job_that_produced_nothing_is_failed_with_its_reason_and_offers_nothing():
    from openai_stub import Scripted, serve

    Scripted.answers, Scripted.calls = ["The answer is 999999."], []
    with serve(Scripted) as url:
        job = finished_job(
            [
                "teach",
                "rationales",
                "--dataset",
                "gsm8k",
                "--limit",
                "2",
                "--teacher",
                url,
                "--model",
                "stub",
                "--api-key-env",
                "",
                "--out",
                "none-kept",
            ],
            "teach-rationales",
        )
    at = run("jobs")
    assert "Status: **failed**" in texts(at)
    assert any("produced nothing: kept 0 of 2 rationales" in e.value.replace("\\", "") for e in at.error)
    assert not [b for b in at.button if b.key == f"jobs:resume-{job.id}"]
    assert "Not resumable: it ran to the end and produced nothing" in texts(at)
    assert not at.get("page_link")  # no "Train a student on these rationales"


def test_jobs_page_shows_one_failure_line_and_the_joined_curve_of_a_resumed_job(tmp_path):
    failed = finished_job(["jobs", "selftest", "--steps", "5", "--seconds-per-step", "0", "--fail-at", "3"])
    at = run("jobs")
    assert [e.value.replace("\\", "") for e in at.error] == ["exit code 1: failing at step 3 as asked"]
    assert at.button(key=f"jobs:resume-{failed.id}")  # a checkpointed command: Resume can help
    ckpt = tmp_path / "c.txt"
    first = jobs.submit(
        ["jobs", "selftest", "--steps", "40", "--seconds-per-step", "0.05", "--checkpoint", str(ckpt)], "selftest"
    )
    deadline = time.monotonic() + 60
    while (jobs.progress(first.id) or {}).get("step", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    jobs.wait(jobs.cancel(first.id).id, timeout=30)
    resumed = jobs.wait(jobs.resume(first.id).id, timeout=90)
    at = run("jobs")
    at.selectbox(key="jobs:pick").select(resumed.id).run()
    assert "Curves join the 2 runs of this job" in texts(at) and "steps 1–40" in texts(at)
    assert at.get("vega_lite_chart")  # the loss curve, drawn from the joined rows


def test_train_config_saved_on_the_page_is_what_the_cli_reads_and_loads_back():
    from typer.testing import CliRunner

    from distill.methods.options import load_config
    from kb.workspace import home

    (home() / "datasets" / "gsm8k-cot").mkdir(parents=True)
    (home() / "datasets" / "gsm8k-cot" / "records.jsonl").write_text("{}\n")
    at = run("train")
    at.selectbox(key="t:method").select("nesycd").run()
    at.number_input(key="t:lora_r").set_value(8).run()
    at.text_input(key="t:config-name").set_value("../evil").run()
    at.button(key="t:config-save").click().run()
    assert "config name takes a name" in texts(at) and not (home() / "configs" / "evil.yaml").exists()
    at.text_input(key="t:config-name").set_value("small-r").run()
    at.button(key="t:config-save").click().run()
    path = home() / "configs" / "small-r.yaml"
    assert path.is_file() and f"nesy train nesycd --config {path}" in texts(at)
    assert load_config(str(path), "nesycd") == {
        "data": "gsm8k-cot",
        "output": "nesycd-gsm8k-cot",
        "preset": "cpu",
        "lora_r": 8,
    }
    # the CLI reads the same file (options given on the command line win): its error names lora_r 0
    from distill.cli import app

    out = CliRunner().invoke(app, ["train", "nesycd", "--config", str(path), "--lora-r", "0"])
    assert out.exit_code != 0 and "--lora-r must be at least 1" in str(out.exception or out.output)
    wrong = CliRunner().invoke(app, ["train", "skintern", "--config", str(path)])
    assert "is a nesycd config, not skintern" in str(wrong.exception or wrong.output)
    # a config written by hand (as for the CLI) loads into the form
    path.with_name("by-hand.yaml").write_text(
        "method: skintern\ndata: gsm8k-cot\noutput: sk\nstages: 3\npreset: paper\n"
    )
    at = run("train")
    at.selectbox(key="t:config-pick").select("by-hand").run()
    at.button(key="t:config-load").click().run()
    assert at.selectbox(key="t:method").value == "skintern"
    assert "nesy train skintern --data gsm8k-cot --output sk --preset paper --stages 3" in texts(at)


def test_distill_page_offers_gold_and_annotations_and_counts_records():
    at = run("distill")
    options = at.radio(key="r:teacher").options
    assert any("gold" in o for o in options) and any("annotations" in o for o in options)
    at.radio(key="r:teacher").set_value(next(o for o in options if "gold" in o)).run()
    assert "nesy teach rationales --dataset gsm8k --split train --limit 20 --thoughts cot" in texts(at)
    assert "--teacher gold" in texts(at)
    split = at.selectbox(key="r:split")
    assert split.format_func(split.value) == "train (7,473 records)"


def test_compare_page_draws_a_jobs_events_prompts_scores_and_an_empty_minimum(monkeypatch):
    """The page only reads the job's events: here a finished job's events written as `nesy answer
    --events` writes them (the model run itself: tests/test_jobs.py and the browser test)."""
    seed(1, status="accepted")
    job = finished_job(["jobs", "selftest", "--steps", "1", "--seconds-per-step", "0"], "compare")
    start = {"event": "start", "thought": "cot", "k": 3, "retriever": "dense", "retrieval_ran": True}
    events = [
        {"event": "loaded", "seconds": 1.5},
        {
            **start,
            "side": "without",
            "prompt": "Question: Q?\nAnswer: ",
            "rendered": "<|im_start|>user Q",
            "retrieved": [],
            "retrieval_empty": False,
            "min_score": None,
        },
        {"event": "token", "side": "without", "text": "It is "},
        {"event": "token", "side": "without", "text": "4"},
        {"event": "done", "side": "without", "text": "It is 4", "extracted": "4", "prompt_tokens": 9, "latency_s": 0.2},
        {
            **start,
            "side": "with",
            "prompt": "Knowledge: Check units\nQuestion: Q?",
            "rendered": "<|im_start|>…",
            "retrieved": [["e000", 0.7312]],
            "retrieval_empty": False,
            "min_score": 0.5,
        },
        {
            "event": "done",
            "side": "with",
            "text": "The answer is 5",
            "extracted": "5",
            "prompt_tokens": 30,
            "latency_s": 0.3,
        },
    ]
    (job.dir / "answer_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["user"] = "Ada"
    at.session_state["cmp:jobs"] = [job.id]
    at.session_state["cmp:asked"] = {"question": "Q?", "gold": "5", "answer_type": "number", "task_description": ""}
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    assert "Question: Q?\nAnswer: " in shown and "Knowledge: Check units\nQuestion: Q?" in shown
    assert "0.731  e000" in shown and "minimum similarity 0.5" in shown
    assert "Answer: 4 (wrong)" in shown and "Answer: 5 (correct)" in shown
    assert any("flipped this answer wrong → right" in s.value for s in at.success)
    events[5] = {**events[5], "retrieved": [], "retrieval_empty": True, "min_score": 0.9}
    (job.dir / "answer_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    at.run()
    assert any("No entry passed the minimum similarity 0.9" in w.value for w in at.warning)
