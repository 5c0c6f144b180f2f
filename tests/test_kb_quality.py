"""Knowledge quality checks (kb/quality.py) on real teacher output: the first starter KB the local
Qwen2.5-Coder-1.5B teacher distilled (tests/fixtures/starter_kb_v1.jsonl, 14 entries, shipped
pre-accepted until the checks existed); flags stored, filtered, exported and shown; the shipped
starter KB is pending and carries the flags the checks give it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from distill.data import STARTER_KB
from kb import quality
from kb.jsonl import dumps_entry, export_jsonl, import_jsonl
from kb.schema import Entry, EntryInvalid, Flag, Source, entry_from_json
from kb.store import KBStore

FIXTURES = Path(__file__).parent / "fixtures"
MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
V1 = [entry_from_json(line) for line in (FIXTURES / "starter_kb_v1.jsonl").read_text().splitlines()]
BY_ID = {e.id.removeprefix("gsm8k-gsm8k-train-").removesuffix("-error_analysis"): e for e in V1}


def entry(summary: str, knowledge: str, question: str | None = None, entry_id: str = "x", **fields) -> Entry:
    return Entry(
        id=entry_id,
        task="gsm8k",
        status="pending",
        learning_summary=summary,
        supplementary_knowledge=knowledge,
        source=Source(kind="error_analysis", question=question) if question else None,
        **fields,
    )


def codes(flags) -> list[str]:
    return [f.code for f in flags]


# ------------------------------------------------------------------------------ the checks


def test_restates_source_on_the_pie_shop_entry():
    """The issue's example: "The pie shop charges $3 per slice …" repeats its question."""
    pie = BY_ID["00510"]
    assert "The pie shop charges $3 per slice of custard pie." in pie.supplementary_knowledge
    flag = quality.restates_source(pie)
    assert flag.code == "restates_source"
    assert "numbers 10" in flag.detail and "copies “pie shop charges $3 per slice" in flag.detail
    # the same question with general knowledge: nothing restated
    general = entry(
        "Multiply the price of one part by the number of parts to get the total.",
        "Total earnings = price per item × number of items sold.",
        pie.source.question,
    )
    assert quality.restates_source(general) is None


def test_restates_source_names_and_numbers_but_not_unit_constants():
    tracy = quality.restates_source(BY_ID["00565"])
    assert "names Tracy, Michelle, Katie" in tracy.detail and "numbers 20" in tracy.detail
    question = "Harold had 100 marbles. He kept 20 marbles and shared the rest among 5 friends."
    # 100 is every percentage's number and a one-digit 5 says nothing: neither counts
    assert (
        quality.restates_source(
            entry("Turn a part into a percent by multiplying by 100.", "Share evenly: divide by 5 people.", question)
        )
        is None
    )
    assert (
        "names Harold"
        in quality.restates_source(
            entry("Harold keeps some and shares the rest.", "Sharing evenly means dividing.", question)
        ).detail
    )
    assert (
        quality.restates_source(entry("Keep 20 aside first.", "Then divide the rest.", question)).detail
        == "shares with its question: numbers 20"
    )
    # numbers written as words are numbers ("The cat spends twenty minutes" -> "20 minutes")
    assert (
        quality.restates_source(
            entry(
                "It takes 20 minutes * 8 feet/minute.",
                "Distance = rate × time.",
                "The cat spends twenty minutes resisting.",
            )
        ).detail
        == "shares with its question: numbers 20"
    )
    # an entry without a source question cannot restate one; list numbering is not a number
    assert quality.restates_source(entry("Keep 20 aside.", "Divide.")) is None
    assert (
        quality.restates_source(
            entry("\n".join(f"{n}. Do the next step." for n in range(1, 21)), "Check each step.", question)
        )
        is None
    )


def test_false_arithmetic_on_the_commodity_entry():
    """The issue's example: "$827 − $127 = $757" (the teacher wrote '-'; both minus signs work)."""
    flag = quality.false_arithmetic(BY_ID["02133"])
    assert flag.detail.startswith("$827 - $127 = $757 (is 700); $757 - $127 = $724 (is 630)")
    assert (
        quality.false_arithmetic(entry("Check: $827 − $127 = $757.", "Subtract.")).detail
        == "$827 − $127 = $757 (is 700)"
    )
    assert quality.false_arithmetic(BY_ID["00776"]) is None  # 12/3 = 4 and 2 * 12 = 24 are right


@pytest.mark.parametrize(
    "text, wrong",
    [
        ("1,200 × 3 = 3,600 and 3,600 ÷ 4 = 900", []),
        ("10 / 3 = 3.33 (rounded)", []),  # correctly rounded to the digits written
        ("2 + 3 * 4 = 14", []),  # * before +
        ("(50 / 200) × 100 = 25%, so 30% + 20% = 50%", []),
        ("7 / 2 = 3 boxes", ["7 / 2 = 3 (is 3.5)"]),
        ("2/3 = 0.66", ["2/3 = 0.66 (is 0.6667)"]),  # truncated is not rounded
        ("The tax 5 + 3 = 9 dollars", ["5 + 3 = 9 (is 8)"]),
        ("6 x 7 = 43", ["6 x 7 = 43 (is 42)"]),
        ("5 / 0 = 1", ["5 / 0 = 1 (division by zero)"]),
        ("x - 3 + 5 = 10", []),  # the tail of an equation, not a claim
        ("2 × 6 = 12 + 3", []),  # more expression on the right
        ("Speed = Distance ÷ Time", []),  # words, not numbers
    ],
)
def test_false_arithmetic_parses_simple_claims_exactly(text, wrong):
    flag = quality.false_arithmetic(entry(text, "Nothing else to check here."))
    assert (flag.detail.split("; ") if flag else []) == wrong


def test_empty_or_overlong():
    assert (
        quality.empty_or_overlong(entry("Read the question twice.", "[Supplementary Knowledge]")).detail
        == "supplementary knowledge is empty ('[Supplementary Knowledge]')"
    )
    assert (
        "learning summary is empty" in quality.empty_or_overlong(entry("1. N/A", "Percent means per hundred.")).detail
    )
    long = " ".join(["Check every step of the calculation again."] * 30)  # 210 words
    assert (
        quality.empty_or_overlong(entry("Read the question twice.", long)).detail
        == "supplementary knowledge has 210 words (over 200)"
    )
    assert quality.empty_or_overlong(BY_ID["00510"]) is None


def test_generic_flags_the_boilerplate_13_of_14():
    """13 of the 14 entries begin "1. Understand the question thoroughly. 2. Break down the
    problem …": flagged. The 14th (02484) wrote its own analysis: not flagged."""
    found = quality.generic(V1)
    assert len(found) == 13 and BY_ID["02484"].id not in found
    assert all(
        f.code == "generic"
        and f.detail.startswith("learning summary: ")
        and "understand the question thoroughly" in f.detail
        for f in found.values()
    )
    # against a KB of general, distinct knowledge, one such summary alone is not boilerplate
    distinct = [
        entry(f"Topic {n}: {text}", "Some fact.", entry_id=f"d{n}")
        for n, text in enumerate(
            [
                "Convert percentages to fractions before multiplying.",
                "Speed times time gives distance.",
                "Add the parts, then subtract what was removed.",
                "Round only at the very end.",
            ]
        )
    ]
    assert quality.generic([BY_ID["00115"]], distinct) == {}


def test_recheck_replaces_only_the_checks_that_ran():
    e = BY_ID["02133"].model_copy(
        update={
            "flags": [
                Flag(code="generic", detail="old"),
                Flag(code="false_arithmetic", detail="stale"),
                Flag(code="from_another_tool"),
            ]
        }
    )
    flags = quality.recheck(e, quality.check_entry(e))
    assert codes(flags) == ["restates_source", "generic", "false_arithmetic", "from_another_tool"]
    assert flags[1].detail == "old" and flags[2].detail.startswith("$827 - $127 = $757")


def test_the_teacher_demonstration_passes_the_checks():
    from distill.knowledge import KNOWLEDGE_DEMO, parse_knowledge

    parsed = parse_knowledge(KNOWLEDGE_DEMO["analysis"])
    demo = entry(parsed.learning_summary, parsed.supplementary_knowledge, KNOWLEDGE_DEMO["question"])
    assert quality.check_entry(demo) == []
    assert quality.arithmetic_claims(KNOWLEDGE_DEMO["response"])  # the student's sums are real claims


# ------------------------------------------------------------------- stored, filtered, exported


def flagged_store() -> KBStore:
    kb = KBStore()
    for e in V1[:4]:
        kb.add(e.model_copy(update={"flags": quality.check_entry(e)}), by="teacher")
    kb.add(entry("Convert the percent to a fraction first.", "Percent means per hundred.", entry_id="clean"), by="ann")
    return kb


def test_flags_are_stored_filtered_and_counted():
    kb = flagged_store()
    assert kb.get(V1[1].id).flags[0].code == "restates_source"
    assert {e.id for e in kb.query(flag="restates_source").entries} == {e.id for e in V1[:4]}
    assert [e.id for e in kb.query(flagged=False).entries] == ["clean"]
    assert kb.query(flagged=True).total == 4 and kb.query(flag=["generic", "x"]).total == 0
    assert kb.facets()["flags"] == ["restates_source"]
    assert kb.stats()["by_flag"] == {"restates_source": 4} and kb.stats()["flagged"] == 4
    kb.delete(V1[0].id, expected_version=1, by="ann")  # a deleted entry leaves the flag filters
    assert kb.query(flag="restates_source").total == 3 and kb.stats()["by_flag"]["restates_source"] == 3


def test_editing_the_text_rechecks_it():
    """A curator fixes a restating entry: its flag goes with the same revision; a title edit
    leaves flags alone; flags written explicitly are kept as given."""
    kb = flagged_store()
    pie = kb.get(V1[1].id)
    kb.update(pie.id, {"title": "Pie shop"}, expected_version=1, by="ann")
    assert codes(kb.get(pie.id).flags) == ["restates_source"]
    fixed = kb.update(
        pie.id,
        {
            "supplementary_knowledge": "Earnings = price per part × parts sold.",
            "learning_summary": "Count the parts before multiplying by the price.",
        },
        expected_version=2,
        by="ann",
    )
    assert fixed.flags == []
    assert kb.history(pie.id)[-1].changes["flags"][0][0]["code"] == "restates_source"
    kept = kb.update(
        pie.id,
        {"learning_summary": "1. Understand the question.", "flags": [{"code": "generic", "detail": "by hand"}]},
        expected_version=3,
        by="ann",
    )
    assert codes(kept.flags) == ["generic"]


def test_flags_round_trip_through_jsonl(tmp_path, monkeypatch):
    kb = flagged_store()
    first = tmp_path / "first.jsonl"
    export_jsonl(kb, first)
    data = first.read_bytes()
    lines = {json.loads(line)["id"]: line for line in data.decode().splitlines()}
    assert json.loads(lines[V1[1].id])["flags"][0]["code"] == "restates_source"
    # keys in model order; an entry without flags has no flags key (older exports stay the same)
    keys = list(json.loads(lines[V1[1].id]))
    assert keys[keys.index("links") : keys.index("links") + 3] == ["links", "flags", "version"]
    assert "flags" not in json.loads(lines["clean"])
    monkeypatch.setenv("NESY_HOME", str(tmp_path / "other"))
    other = KBStore()
    import_jsonl(other, first, by="importer")
    second = tmp_path / "second.jsonl"
    export_jsonl(other, second)
    assert second.read_bytes() == data
    assert other.query(flag="restates_source").total == 4  # the imported flags are filterable


@pytest.mark.parametrize(
    "flags, message",
    [
        ([{"code": "Generic!"}], "field 'flags.0.code': must be a short snake_case name"),
        (
            [{"code": "generic"}, {"code": "generic", "detail": "again"}],
            "field 'flags': flag code 'generic' is given 2 times",
        ),
        ([{"code": "generic", "why": "x"}], "field 'flags.0.why': is not a known field"),
        (["generic"], "field 'flags.0'"),
    ],
)
def test_bad_flags_are_refused_naming_the_field(flags, message):
    line = json.dumps(
        {
            "id": "a",
            "task": "t",
            "learning_summary": "s",
            "supplementary_knowledge": "k",
            "status": "pending",
            "flags": flags,
        }
    )
    with pytest.raises(EntryInvalid) as err:
        entry_from_json(line)
    assert message in str(err.value)


def test_check_store_writes_revisions_by_nesy_quality_and_is_idempotent():
    kb = KBStore()
    for e in V1:
        kb.add(e, by="teacher")  # as shipped before the checks: no flags
    report = quality.check_store(kb, checks=["restates_source", "false_arithmetic", "empty_or_overlong"])
    assert report.checked == 14 and report.changed == 10
    assert report.by_code == {"restates_source": 10, "false_arithmetic": 1}
    commodity = kb.history(V1[9].id)[-1]
    assert commodity.by == "nesy-quality" and set(commodity.changes) == {"flags"}
    again = quality.check_store(kb, checks=["restates_source", "false_arithmetic", "empty_or_overlong"])
    assert again.changed == 0 and kb.stats()["revisions"] == 14 + 10
    with pytest.raises(ValueError, match="unknown check 'vague'"):
        quality.check_store(kb, checks=["vague"])


# ------------------------------------------------------------------------------- the KB page


def run_app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["user"] = "Ada"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_kb_page_filters_by_flag_and_shows_badges():
    flagged_store()
    at = run_app()
    table = at.dataframe[0].value
    assert list(table.loc[table["id"] == V1[1].id, "flags"].iloc[0]) == ["restates_source"]
    at.selectbox(key="kb:flag").select("restates_source").run()
    assert set(at.dataframe[0].value["id"]) == {e.id for e in V1[:4]}
    at.selectbox(key="kb:flag").select("(no flags)").run()
    assert list(at.dataframe[0].value["id"]) == ["clean"]
    at.selectbox(key="kb:flag").select("(any flag)").run()
    assert len(at.dataframe[0].value) == 4
    at.radio(key="kb:view").set_value("review").run()  # the review card: badges + the detail
    badges = [m.value for m in at.markdown if "-badge[" in m.value]  # st.badge is a markdown directive
    assert badges == [":orange-badge[:material/flag: restates_source]"]
    assert any("numbers 750" in w.value for w in at.warning)


# -------------------------------------------------------------------------- the starter KB


def test_the_starter_kb_ships_pending_with_the_flags_the_checks_give():
    lines = STARTER_KB.read_text(encoding="utf-8").splitlines()
    entries = [entry_from_json(line) for line in lines]
    assert 16 <= len(entries) <= 24
    assert all(e.status == "pending" for e in entries), "never pre-accepted: people decide"
    assert all(dumps_entry(e) == line for e, line in zip(entries, lines))  # canonical lines
    for e in entries:
        assert e.source.kind == "error_analysis" and e.source.example_id.startswith("gsm8k-train-")
        assert e.source.teacher_model.startswith("Qwen2.5-Coder-1.5B")
    generic = quality.generic(entries)
    for e in entries:
        expected = quality.check_entry(e) + ([generic[e.id]] if e.id in generic else [])
        assert codes(e.flags) == codes(quality.recheck(e, expected, quality.CHECKS)), e.id
