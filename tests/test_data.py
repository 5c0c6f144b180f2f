"""Dataset registry: bundled splits, seeded BBH/StrategyQA splits, user JSONL registration, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from distill import data
from distill.cli import app
from distill.data import DatasetError, Example, format_question, get_dataset, register_dataset


def test_bundled_datasets_load_with_answer_types():
    gsm = get_dataset("gsm8k")
    assert gsm.answer_type == "number" and set(gsm.splits) == {"train", "dev", "test"}
    test = gsm.load("test")
    assert len(test) == 1319 and test[0].answer == "18" and test[0].rationale
    arc = get_dataset("arc_challenge").load("dev", limit=5)
    assert len(arc) == 5 and all(e.choices and e.answer in dict(e.choices) for e in arc)
    assert get_dataset("agieval").answer_type_for("math") == "text"
    assert get_dataset("agieval").answer_type_for("lsat-ar") == "option"
    with pytest.raises(DatasetError, match="no split"):
        gsm.load("validation")
    with pytest.raises(DatasetError, match="unknown dataset"):
        get_dataset("nope")


def test_bbh_split_is_seeded_per_task_disjoint_and_complete():
    bbh = get_dataset("bbh")
    train, test = bbh.load("train"), bbh.load("test")
    assert len(train) + len(test) == 6511
    assert not {e.id for e in train} & {e.id for e in test}
    assert len(bbh.tasks()) == 27
    # every task lands on both sides, ~30% in test
    for task in bbh.tasks():
        n_test = sum(e.task == task for e in test)
        n_all = sum(e.task == task for e in train) + n_test
        assert 0.25 < n_test / n_all < 0.35, task
    # same seed -> same split (another call, fresh cache), different seed -> different split
    rows = data._bundled("bbh", "test")
    assert data.seeded_split(rows, "test", seed=0) == data.seeded_split(list(rows), "test", seed=0)
    assert data.seeded_split(rows, "test", seed=1) != data.seeded_split(rows, "test", seed=0)
    assert bbh.answer_type_for("object_counting") == "number"
    assert bbh.answer_type_for("web_of_lies") == "text"
    assert bbh.answer_type_for("date_understanding") == "option"
    assert bbh.task_description("navigate").startswith("Given a series of navigation")


def test_strategyqa_split_and_limit_sampling_is_deterministic():
    sqa = get_dataset("strategyqa")
    assert len(sqa.load("train")) + len(sqa.load("test")) == 2290
    a, b = sqa.load("train", limit=10, seed=3), sqa.load("train", limit=10, seed=3)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in sqa.load("train", limit=10, seed=4)]
    assert {e.answer for e in sqa.load("test")} == {"Yes", "No"}


def test_format_question_adds_options_once():
    ex = get_dataset("commonsenseqa").load("dev", limit=1)[0]
    text = format_question(ex)
    assert text.startswith(ex.question) and "Answer Choices: (A) " in text and "(E) " in text
    bbh = get_dataset("bbh").load("test", task="date_understanding", limit=1)[0]
    assert format_question(bbh).count("Options:") == 1 and "Answer Choices" not in format_question(bbh)
    plain = Example("1", "gsm8k", "How many?", "3", "gsm8k")
    assert format_question(plain) == "How many?"


def test_register_user_dataset_roundtrip(tmp_path, workspace):
    src = tmp_path / "mine.jsonl"
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "task": "add"} for i in range(10)]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = register_dataset("mine", src)
    assert spec.answer_type == "number"
    assert (workspace / "datasets" / "user" / "mine.jsonl").exists()
    again = get_dataset("mine")  # remembered through the workspace registry
    assert len(again.load("all")) == 10 and again.load("all")[0].task == "add"
    assert len(again.load("train")) + len(again.load("test")) == 10
    assert "mine" in data.list_datasets()


def test_register_bad_file_reports_line_numbers(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"question": "ok?", "answer": "1"}\n'
        "not json\n"
        '{"question": "", "answer": "2"}\n'
        '{"question": "q", "answer": "Z", "choices": [{"label": "A", "text": "a"}]}\n'
    )
    with pytest.raises(DatasetError) as err:
        register_dataset("bad", src)
    message = str(err.value)
    assert "line 2: not valid JSON" in message
    assert "line 3: 'question'" in message
    assert "line 4: 'answer' 'Z' is not one of the choice labels" in message
    assert "line 1" not in message
    assert "bad" not in data.list_datasets()


def test_data_cli_list_show_register(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["data", "list"])
    assert out.exit_code == 0 and "gsm8k" in out.output and "bbh" in out.output
    out = runner.invoke(app, ["data", "show", "gsm8k", "--split", "test", "--limit", "1"])
    assert out.exit_code == 0 and "answer:" in out.output
    bad = tmp_path / "b.jsonl"
    bad.write_text("[1,2]\n")
    out = runner.invoke(app, ["data", "register", "b", str(bad)])
    assert out.exit_code == 2 and "line 1: each line must be a JSON object" in out.output
    out = runner.invoke(app, ["data", "show", "nope"])
    assert out.exit_code == 2 and "unknown dataset" in out.output


def test_rationale_set_roundtrip(workspace):
    record = data.RationaleRecord(
        id="r1",
        example_id="gsm8k-train-00000",
        dataset="gsm8k",
        task="gsm8k",
        question="q",
        answer="72",
        thought="eot",
        rationale="ans = x",
        extracted="72",
        teacher_model="m",
    )
    (data.rationale_dir("set1") / "records.jsonl").write_text(record.to_json() + "\n")
    assert data.load_rationales("set1") == [record]
    assert data.list_rationale_sets() == ["set1"]
    with pytest.raises(DatasetError):
        data.load_rationales("missing")


def test_arc_numeric_labels_become_letters():
    raw = [r for r in data._bundled("arc_easy", "train") if r["choices"][0]["label"] == "1"]
    assert raw, "the bundled ARC file has rows labelled 1-4"
    by_id = {e.id: e for e in get_dataset("arc_easy").load("train")}
    for row in raw[:20]:
        ex = by_id[row["id"]]
        assert [label for label, _ in ex.choices] == list("ABCDE"[: len(row["choices"])])
        assert dict(ex.choices)[ex.answer] == row["choices"][int(row["answer"]) - 1]["text"]


# ------------------------------------------------------------- rationale sets: one JSONL reader

LINE_BREAKERS = "\u2028\u2029\x85"  # str.splitlines() breaks at these; JSON strings may hold them raw


def test_full_gold_cot_set_written_by_teach_loads(workspace):
    """`nesy teach rationales --teacher gold` on all of GSM8K train writes gsm8k-train-02381's U+2028
    raw (RationaleRecord.to_json keeps non-ASCII); the reader once split that line in two."""
    from distill import rationales

    summary = rationales.gold_rationales(get_dataset("gsm8k").load("train"), "gold")
    assert "\u2028" in summary.out.read_text(encoding="utf-8")  # raw, as the writer leaves it
    records = data.load_rationales("gold")
    assert len(records) == summary.kept == 7473
    clive = next(r for r in records if r.example_id == "gsm8k-train-02381")
    assert "balls.  \u2028The box" in clive.question
    assert records == data.load_rationales("gsm8k-gold-cot")  # the same set as the shipped one


def test_every_line_breaker_survives_the_readers(tmp_path, workspace):
    from distill.progress import read_jsonl

    text = f"a{LINE_BREAKERS}b"
    record = data.RationaleRecord(
        id="r1",
        example_id="e1",
        dataset="gsm8k",
        task="gsm8k",
        question=text,
        answer="1",
        thought="cot",
        rationale=text,
    )
    (data.rationale_dir("odd") / "records.jsonl").write_text(record.to_json() + "\n", encoding="utf-8")
    assert data.load_rationales("odd") == [record]
    # eval samples / job metrics (a half-written last line is still skipped)
    appended = tmp_path / "samples.jsonl"
    appended.write_text(json.dumps({"q": text}, ensure_ascii=False) + "\n" + '{"q": "half', encoding="utf-8")
    assert read_jsonl(appended) == [{"q": text}]
    # a user dataset
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"question": text, "answer": "2"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert register_dataset("mine", src).load("all")[0].question == text


def test_shipped_sets_load_by_name_path_or_gz(workspace, caplog):
    """data/rationales/*.jsonl.gz: by bare name when the workspace has no such set (saying so), by
    path; a workspace set of the same name wins."""
    with caplog.at_level("WARNING", logger="distill.data"):
        gold = data.load_rationales("gsm8k-gold-cot")
    assert len(gold) == 7473 and {r.teacher_model for r in gold} == {"gold"}
    assert "using the shipped data/rationales/gsm8k-gold-cot.jsonl.gz" in caplog.text
    assert not (workspace / "datasets" / "gsm8k-gold-cot").exists()  # looking created nothing
    pot = data.load_rationales(str(data.SHIPPED_RATIONALES / "gsm8k-annot-pot.jsonl.gz"))
    assert len(pot) == 7156 and {r.thought for r in pot} == {"pot"}
    assert data.shipped_rationale_sets() == ["gsm8k-annot-eot", "gsm8k-annot-pot", "gsm8k-gold-cot"]
    own = data.rationale_dir("gsm8k-gold-cot") / "records.jsonl"
    own.write_text(gold[0].to_json() + "\n", encoding="utf-8")
    caplog.clear()
    assert data.load_rationales("gsm8k-gold-cot") == gold[:1] and "shipped" not in caplog.text
    with pytest.raises(DatasetError, match="shipped sets: gsm8k-annot-eot"):
        data.load_rationales("no-such-set")
    out = CliRunner().invoke(app, ["data", "list"])
    assert "gsm8k-annot-pot" in out.output and "(shipped)" in out.output


def test_bad_record_line_is_named(workspace):
    path = data.rationale_dir("bad") / "records.jsonl"
    path.write_text('{"id": "r1"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 1: missing field\(s\) example_id, dataset"):
        data.load_rationales("bad")
    path.write_text("\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        data.load_rationales("bad")


def test_gsm8k_dev_is_held_out_and_subsets_train_every_method_on_the_same_questions(workspace):
    from distill.data import get_dataset, load_rationales, subset_rationales
    from distill.train import load_records

    dev = {ex.id for ex in get_dataset("gsm8k").load("dev")}
    assert len(dev) == 300 and dev <= {ex.id for ex in get_dataset("gsm8k").load("train")}
    n = subset_rationales(
        "gsm8k-annot-eot", "q-eot", limit=40, same_questions_as=["gsm8k-annot-pot"], exclude=["gsm8k:dev"]
    )
    subset_rationales("gsm8k-gold-cot", "q-cot", same_questions_as=["q-eot"])
    subset_rationales("gsm8k-annot-pot", "q-pot", same_questions_as=["q-eot"])
    ids = {t: [r.example_id for r in load_rationales(f"q-{t}")] for t in ("cot", "pot", "eot")}
    assert n == 40 and ids["cot"] == ids["pot"] == ids["eot"] and not set(ids["cot"]) & dev
    joined = load_records("q-cot+q-pot+q-eot")  # explicit mixing; provenance stays per record
    assert len(joined) == 120 and {r.teacher_model for r in joined} == {"gold", "gsm8k-annotations"}
    tail = subset_rationales("gsm8k-gold-cot", "tail", exclude=["gsm8k:dev"])
    assert tail == 7473 - 300


def test_subset_takes_a_name_not_a_path(workspace):
    result = CliRunner().invoke(app, ["data", "subset-rationales", "gsm8k-gold-cot", "--out", "../x"])
    assert result.exit_code != 0 and not (workspace.parent / "x").exists()


def test_a_resumed_append_only_file_loses_only_the_half_written_line(tmp_path):
    from distill.jsonlines import read_jsonl, resume_jsonl

    path = tmp_path / "samples.jsonl"
    assert resume_jsonl(path) == [] and not path.exists()  # nothing to resume: nothing created
    path.write_text('{"id": 1}\n{"id": 2, "text": "a\u2028b"}\n{"id": 3, "te', encoding="utf-8")  # killed writer
    assert resume_jsonl(path) == [{"id": 1}, {"id": 2, "text": "a\u2028b"}]
    with open(path, "a", encoding="utf-8") as f:  # the continuing run appends its next record
        f.write('{"id": 3}\n')
    assert [row["id"] for row in read_jsonl(path)] == [1, 2, 3]
