"""The free PoT/EoT source: GSM8K's calculator annotations -> programs / equation systems, each
verified in the real sandbox; provenance on every record; sets never mixed; the shipped sets."""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import distill.annotations as annotations
import distill.rationales as rationales
from distill.annotations import (
    ANNOTATION_SOURCE,
    SHIPPED_DIR,
    AnnotationError,
    MixedSources,
    annotation_rationales,
    build,
    convert,
    install_shipped,
    normalise_expr,
)
from distill.answers import answers_match, check
from distill.data import Example, get_dataset, load_rationales, rationale_dir
from distill.sandbox import run_pot, solve_eot
from kb.errors import NesyError


@pytest.fixture(scope="module")
def train() -> dict[str, Example]:
    return {e.id: e for e in get_dataset("gsm8k").load("train")}


# ---------------------------------------------------------------- conversion, real rows

REAL_ROWS = [
    "gsm8k-train-00000",
    "gsm8k-train-00002",
    "gsm8k-train-00003",
    "gsm8k-train-00005",
    "gsm8k-train-00044",
    "gsm8k-train-00053",
]


def test_natalia_in_the_demonstration_style(train):
    ex = train["gsm8k-train-00000"]  # 48/2 = <<48/2=24>>24 clips in May; 48+24 = <<48+24=72>>72
    assert build(ex, "pot") == "clips_may = 48 / 2\nans = 48 + clips_may"
    assert build(ex, "eot") == (
        "% Natalia sold 48/2 clips in May.\nclips_may = 48 / 2\n"
        "% Natalia sold 48+24 clips altogether in April and May.\n"
        "clips_april = 48 + clips_may\nans = clips_april"
    )
    assert run_pot(build(ex, "pot")).value == 72
    assert solve_eot(build(ex, "eot")).value == 72


@pytest.mark.parametrize("thought", ["pot", "eot"])
def test_real_rows_convert_and_verify_in_the_sandbox(train, thought):
    for example_id in REAL_ROWS:
        ex = train[example_id]
        conversion = convert(ex, thought)
        assert conversion.reason is None, (example_id, conversion)
        run = run_pot if thought == "pot" else solve_eot
        result = run(conversion.rationale)  # again, independently of convert()
        assert result.ok and answers_match(str(result.value), ex.answer, "number"), example_id
        lines = conversion.rationale.splitlines()
        if thought == "pot":
            assert lines[-1].startswith("ans = ")
        else:
            assert re.fullmatch(r"ans = [a-z][a-z0-9_]*", lines[-1])
            assert any(line.startswith("% ") for line in lines)


def test_earlier_results_are_referred_to_by_name(train):
    program = build(train["gsm8k-train-00003"], "pot")  # 12*2=24, 12+24=36, 120-36=84, 84/2=42
    assert program == ("pages_today = 12 * 2\npages = 12 + pages_today\npages_left = 120 - pages\nans = pages_left / 2")


def test_plain_text_equations_with_dollars_and_times_signs(train):
    ex = train["gsm8k-train-00053"]  # "... 10 × $4 = $<<...>>", last line "$40 − $4 = $36" (no <<>>)
    assert "<<" not in ex.rationale.splitlines()[-1]
    assert build(ex, "pot").splitlines()[-1] == "ans = cost_ice_cream - cost_frozen_yoghurt"
    conversion = convert(ex, "eot")
    assert conversion.reason is None and conversion.text_equations
    assert "36" not in conversion.rationale.splitlines()[-3]  # the comment never gives the result


def test_normalise_expr_common_forms():
    tokens = normalise_expr("3 x $1,000 − 15% ÷ 2(1+1)")
    assert " ".join(v for _, v in tokens) == "3 * 1000 - ( 15 / 100 ) / 2 * ( 1 + 1 )"
    assert " ".join(v for _, v in normalise_expr("18*.50")) == "18 * 0.5"


def test_restated_annotations_and_exact_floor_division(train):
    # "$575+$460 = $<<1035=1035>>1035": the arithmetic is the text before the restatement
    ex = train["gsm8k-train-07124"]
    assert "<<1035=1035>>" in ex.rationale
    assert build(ex, "pot").splitlines()[-1] == "ans = costs + ten_oranges_cost"
    # "<<560//10=56>>" divides exactly: plain division, so EoT can say it too
    ex = train["gsm8k-train-00394"]
    assert "<<560//10=56>>" in ex.rationale
    assert "//" not in build(ex, "pot") and convert(ex, "eot").reason is None
    floor = Example(
        "t-2",
        "gsm8k",
        "How many full boxes of 4 do 10 eggs fill?",
        "2",
        "gsm8k",
        rationale="They fill 10//4 = <<10//4=2>>2 boxes.",
    )
    assert build(floor, "pot") == "ans = 10 // 4" and convert(floor, "pot").reason is None
    assert convert(floor, "eot").reason == "rounded_step"


def test_rounded_result_pot_rounds_eot_skips():
    ex = Example(
        "t-1",
        "gsm8k",
        "Three friends share $10 equally. What do two of them get?",
        "6.66",
        "gsm8k",
        rationale="Each friend gets 10 / 3 = $3.33.\nTwo of them get 3.33 * 2 = $6.66.",
    )
    program = build(ex, "pot")
    assert program == "friend = round(10 / 3, 2)\nans = friend * 2"
    assert convert(ex, "pot").reason is None
    assert convert(ex, "eot").reason == "rounded_step"


# ---------------------------------------------------------------- rejections


def _with_rationale(ex: Example, rationale: str) -> Example:
    return replace(ex, rationale=rationale)


def test_a_wrong_annotation_is_rejected(train):
    ex = train["gsm8k-train-00000"]
    wrong = _with_rationale(ex, ex.rationale.replace("<<48/2=24>>", "<<48/2=25>>"))
    for thought in ("pot", "eot"):
        conversion = convert(wrong, thought)
        assert conversion.reason == "annotation_wrong" and conversion.rationale is None


def test_consistent_but_wrong_arithmetic_is_rejected(train):
    ex = train["gsm8k-train-00000"]  # divides by 3 instead of 2: every step holds, the answer is 64
    wrong = _with_rationale(
        ex, "Natalia sold 48/3 = <<48/3=16>>16 clips in May.\nNatalia sold 48+16 = <<48+16=64>>64 clips altogether."
    )
    assert convert(wrong, "pot").reason == "gold_not_computed"
    assert convert(_with_rationale(ex, "No arithmetic here."), "eot").reason == "no_steps"


def test_nothing_is_kept_that_the_sandbox_did_not_confirm(train, monkeypatch):
    ex = train["gsm8k-train-00000"]
    monkeypatch.setattr(rationales, "run_pot", lambda code, timeout: run_pot(code + "\nans = ans + 1"))
    conversion = convert(ex, "pot")
    assert conversion.reason == "wrong_answer" and conversion.extracted == "73"
    monkeypatch.setattr(rationales, "solve_eot", lambda text, timeout: solve_eot("ans = "))
    assert convert(ex, "eot").reason == "sandbox_error"


# ---------------------------------------------------------------- records, provenance, no mixing


def test_records_say_where_they_came_from(train):
    examples = [train[i] for i in REAL_ROWS] + [
        _with_rationale(train["gsm8k-train-00001"], "Weng earns 12/60 = $<<12/60=0.3>>0.3 per minute.")
    ]
    summary = annotation_rationales(examples, "pot", "annot-pot")
    assert (summary.kept, summary.skipped) == (len(REAL_ROWS), {"annotation_wrong": 1})
    records = load_rationales("annot-pot")
    assert [r.example_id for r in records] == REAL_ROWS
    for record in records:
        assert record.teacher_model == ANNOTATION_SOURCE == "gsm8k-annotations"
        assert record.thought == "pot" and record.verified and record.id.endswith("-pot-annot")
    raw = [json.loads(line) for line in (rationale_dir("annot-pot") / "raw.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in raw] == [None] * len(REAL_ROWS) + ["annotation_wrong"]
    assert not (rationale_dir("annot-pot") / "records.jsonl.partial").exists()


def test_a_question_with_a_line_separator_still_loads(train):
    ex = train["gsm8k-train-02381"]
    assert "\u2028" in ex.question
    annotation_rationales([ex], "eot", "odd-eot")
    [record] = load_rationales("odd-eot")
    assert record.question == ex.question


def test_pot_and_eot_never_share_a_set(train):
    examples = [train["gsm8k-train-00000"]]
    annotation_rationales(examples, "pot", "mixed")
    with pytest.raises(MixedSources, match="pot records"):
        annotation_rationales(examples, "eot", "mixed")
    assert {r.thought for r in load_rationales("mixed")} == {"pot"}  # untouched
    annotation_rationales(examples, "pot", "mixed")  # a re-run of the same is fine
    assert issubclass(MixedSources, NesyError)


def test_annotation_records_never_go_into_a_teacher_or_gold_set(train):
    from distill.rationales import gold_rationales

    gold_rationales([train["gsm8k-train-00000"]], "gold-cot")
    with pytest.raises(MixedSources, match="'gold'"):
        annotation_rationales([train["gsm8k-train-00000"]], "pot", "gold-cot")
    assert [r.teacher_model for r in load_rationales("gold-cot")] == ["gold"]


def test_only_pot_and_eot_from_gsm8k(train):
    with pytest.raises(AnnotationError, match="--teacher gold"):
        annotation_rationales([train["gsm8k-train-00000"]], "cot", "x-cot")
    other = replace(train["gsm8k-train-00000"], dataset="svamp")
    with pytest.raises(AnnotationError, match="GSM8K"):
        annotation_rationales([other], "pot", "x-pot")


def test_cli_writes_one_set_per_thought():
    result = CliRunner().invoke(annotations.cli, ["rationales", "--limit", "12", "--out", "small"])
    assert result.exit_code == 0, result.output
    assert {r.thought for r in load_rationales("small-pot")} == {"pot"}
    assert {r.thought for r in load_rationales("small-eot")} == {"eot"}
    bad = CliRunner().invoke(annotations.cli, ["rationales", "--thoughts", "pot,cot"])
    assert bad.exit_code == 2 and "--teacher gold" in bad.output


# ---------------------------------------------------------------- the shipped sets

SHIPPED = {
    "gsm8k-annot-pot": ("pot", ANNOTATION_SOURCE),
    "gsm8k-annot-eot": ("eot", ANNOTATION_SOURCE),
    "gsm8k-gold-cot": ("cot", "gold"),
}


def _load_shipped(name: str, tmp_path: Path):
    target = tmp_path / name / "records.jsonl"
    target.parent.mkdir()
    with gzip.open(SHIPPED_DIR / f"{name}.jsonl.gz", "rb") as f:
        target.write_bytes(f.read())
    return load_rationales(str(target))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sets_load_and_are_verified(name, train, tmp_path):
    thought, source = SHIPPED[name]
    path = SHIPPED_DIR / f"{name}.jsonl.gz"
    assert path.stat().st_size < 5_000_000
    records = _load_shipped(name, tmp_path)
    assert len(records) > 6500
    assert len({r.example_id for r in records}) == len(records)
    documented = (SHIPPED_DIR / "SOURCE.md").read_text()
    assert f"`{name}.jsonl.gz`" in documented and f"| {len(records):,} |" in documented
    for record in records:
        assert (record.thought, record.teacher_model, record.verified) == (thought, source, True)
        assert record.answer == train[record.example_id].answer  # the dataset's gold, not a copy
    for record in random.Random(f"shipped:{name}").sample(records, 50):
        gold = train[record.example_id]
        if thought == "cot":
            assert check(record.rationale, gold, answer_type="number")[1], record.id
            continue
        result = (run_pot if thought == "pot" else solve_eot)(record.rationale)
        assert result.ok and answers_match(str(result.value), gold.answer, "number"), record.id


def test_a_shipped_set_installs_as_a_rationale_set():
    path = install_shipped("gsm8k-annot-eot")
    assert path == rationale_dir("gsm8k-annot-eot") / "records.jsonl"
    assert {r.thought for r in load_rationales("gsm8k-annot-eot")} == {"eot"}
    install_shipped("gsm8k-annot-eot")  # the same bytes again: fine
    with pytest.raises(MixedSources):
        install_shipped("gsm8k-annot-pot", "gsm8k-annot-eot")  # never over another set
    with pytest.raises(AnnotationError, match="shipped"):
        install_shipped("../gsm8k")
