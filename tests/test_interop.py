"""Rationale sets in TRL's dataset formats: the exported prompt is the method's training text
character for character (checked against what a real training run wrote), the files load with
`datasets.load_dataset("json")`, and import checks every line (shape, metadata, prompt, ids,
verification) before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from student_fixtures import real_tokenizer, tiny_model  # noqa: F401
from typer.testing import CliRunner

from distill import data
from distill.interop import ImportRejected, InteropError, export_trl, import_trl
from distill.methods import METHODS, train

REPO = Path(__file__).resolve().parent.parent


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def mixed_records(path: Path) -> Path:
    """GSM8K gold CoT + ARC-Easy (answer options, another task description) + PoT/EoT records."""
    gold = data.load_rationales("gsm8k-gold-cot")[:3]
    pot = data.load_rationales("gsm8k-annot-pot")[:2]
    eot = data.load_rationales("gsm8k-annot-eot")[:2]
    arc = [
        data.RationaleRecord(
            f"{ex.id}-cot",
            ex.id,
            ex.dataset,
            ex.task,
            ex.question,
            ex.answer,
            "cot",
            f"Think it through. Therefore, the answer is {ex.answer}.",
            ex.answer,
            ex.choices,
        )
        for ex in data.get_dataset("arc_easy").load("train")[:3]
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.to_json() + "\n" for r in gold + arc + pot + eot), encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["std-cot", "etd"])
def test_export_is_the_training_text_of_a_real_run(tiny_model, tmp_path, method):
    """Both formats against the prompt_samples.jsonl a training run of the method wrote."""
    records = mixed_records(tmp_path / "set" / "records.jsonl")
    root = train(
        METHODS[method].config(
            data=str(records),
            base_model=tiny_model,
            output=f"t-{method}",
            lora_r=2,
            lora_alpha=4,
            max_steps=1,
            batch_size=2,
        )
    )
    trained = read(root / "stages" / "main" / "prompt_samples.jsonl")
    loaded = data.load_rationales(str(records))
    messages = read_export(loaded, tmp_path / "m.jsonl", method, "messages")
    plain = read_export(loaded, tmp_path / "p.jsonl", method, "prompt-completion")
    expected_n = 6 if method == "std-cot" else 10  # std-cot: the CoT records; etd: all three thoughts
    assert len(messages) == len(plain) == expected_n and len(trained) == expected_n
    tok = real_tokenizer()  # the tiny model's tokenizer: SmolLM2's, with its chat template
    for row, m, p in zip(trained, messages, plain):
        user, assistant = m["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"] == p["prompt"] == row["user"]  # the exact user text
        assert assistant["content"] == p["completion"] == row["response"]
        # TRL renders a conversational row with the tokenizer's chat template: our chat prompt
        assert tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True) == row["prompt"]
        assert m["metadata"]["example_id"] == row["example_id"] and m["metadata"]["method"] == method
    assert any("Answer Choices: (A) " in m["messages"][0]["content"] for m in messages)
    if method == "etd":
        assert {m["metadata"]["thought"] for m in messages} == {"cot", "pot", "eot"}


def read_export(records, path: Path, method: str, fmt: str) -> list[dict]:
    export_trl(records, path, method=method, fmt=fmt)
    return read(path)


def test_full_gold_set_loads_with_datasets_and_imports_back(tmp_path, workspace):
    import datasets

    gold = data.load_rationales("gsm8k-gold-cot")
    for fmt, columns in (
        ("messages", ["messages", "metadata"]),
        ("prompt-completion", ["prompt", "completion", "metadata"]),
    ):
        path = tmp_path / f"{fmt}.jsonl"
        assert export_trl(gold, path, fmt=fmt) == 7473
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == 7473 and ds.column_names == columns
        clive = ds[2381]  # its question holds U+2028, which once split the line in two
        text = clive["messages"][0]["content"] if fmt == "messages" else clive["prompt"]
        assert "balls.  \u2028The box" in text and clive["metadata"]["example_id"] == "gsm8k-train-02381"
        assert import_trl(path, f"back-{fmt}") == 7473
        assert data.load_rationales(f"back-{fmt}") == gold  # the same records, extracted answers included


def test_import_names_every_bad_line_and_field_and_writes_nothing(tmp_path, workspace):
    good = tmp_path / "good.jsonl"
    export_trl(data.load_rationales("gsm8k-gold-cot")[:8], good)
    rows = read(good)
    rows[1]["messages"][0]["content"] = rows[1]["messages"][0]["content"].replace("Question:", "Q:")
    del rows[2]["metadata"]["answer"]
    rows[3]["messages"][1]["content"] = "So it is 5. Therefore, the answer is 5."  # the gold is not 5
    rows[4]["messages"][1]["role"] = "user"
    rows[5]["metadata"]["id"] = rows[0]["metadata"]["id"]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[6] = "{not json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ImportRejected) as rejected:
        import_trl(bad, "imported")
    found = [(p.line, p.field) for p in rejected.value.problems]
    assert found == [
        (2, "messages[0].content"),
        (3, "metadata.answer"),
        (4, "messages[1].content"),
        (5, "messages[1].role"),
        (6, "metadata.id"),
        (7, None),
    ]
    assert "is not std-cot's training prompt" in rejected.value.problems[0].message
    assert "does not verify: it gives '5'" in rejected.value.problems[2].message
    assert "repeats line 1" in rejected.value.problems[4].message
    assert str(rejected.value).startswith(f"{bad} line 2, field 'messages[0].content'")
    assert not (workspace / "datasets" / "imported" / "records.jsonl").exists()  # all or nothing
    # without verification the wrong rationale passes; the other problems remain
    with pytest.raises(ImportRejected) as again:
        import_trl(bad, "imported", verify=False)
    assert [p.line for p in again.value.problems] == [2, 3, 5, 6, 7]


def test_data_cli_export_import_and_one_line_errors(tmp_path, workspace, capsys):
    from distill.cli import app, run

    runner = CliRunner()
    out = tmp_path / "pc.jsonl"
    done = runner.invoke(
        app,
        ["data", "export-rationales", "gsm8k-annot-eot", str(out), "--format", "prompt-completion", "--method", "eotd"],
    )
    assert done.exit_code == 0 and "exported 7156 eotd samples" in done.output
    first = read(out)[0]
    assert first["prompt"].endswith("System of linear equations: (Do not simplify)\n")  # ETD's EoT trigger
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in read(out)[:5]), encoding="utf-8")
    done = runner.invoke(app, ["data", "import-rationales", str(small), "--out", "eot5"])
    assert done.exit_code == 0, done.output
    assert [r.id for r in data.load_rationales("eot5")] == [r["metadata"]["id"] for r in read(small)]
    for argv, message in [
        (
            ["export-rationales", "gsm8k-gold-cot", str(out), "--method", "nesycd"],
            "error: --method 'nesycd' cannot be exported from a rationale set alone",
        ),
        (["export-rationales", "gsm8k-gold-cot", str(out), "--format", "alpaca"], "error: --format must be"),
        (["export-rationales", "no-such-set", str(out)], "error: no rationale set 'no-such-set'"),
        (["import-rationales", str(small), "--out", "eot5"], "error: rationale set 'eot5' already exists"),
        (["import-rationales", str(small), "--out", "../x"], "error: --out takes a rationale set name"),
        (["import-rationales", str(tmp_path / "none.jsonl"), "--out", "x"], "error: no such file"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            run(["data", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and err[-1].startswith(message), (argv, err)
    assert not (workspace / "datasets" / "x").exists()


def test_export_refuses_a_method_whose_prompt_needs_the_kb():
    with pytest.raises(InteropError, match="skintern's stages put knowledge"):
        export_trl(data.load_rationales("gsm8k-gold-cot")[:2], Path("/nonexistent/out.jsonl"), method="skintern")
