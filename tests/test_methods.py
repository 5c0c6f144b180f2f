"""Each method's contract: the exact training prompt of an example is what inference builds for that
question, character for character; the options of `nesy train METHOD` are the method's config.

Tiny random Llama + the real SmolLM2 tokenizer (tests/student_fixtures.py), one optimiser step per
stage: the weights do not matter here, the texts do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai_stub import QuietHandler, chat_completion, reply, serve
from student_fixtures import tiny_model  # noqa: F401

from distill import prompts
from distill.data import RationaleRecord, format_question, get_dataset
from distill.infer import Student
from distill.methods import METHODS, train
from distill.methods.options import fields, from_options, to_argv
from distill.train import ConfigError

REPO = Path(__file__).resolve().parent.parent


def arc_records(path: Path, n: int = 6, thoughts=("cot",)) -> Path:
    """ARC-Easy rationale records: questions WITH answer options, the case the old prompts lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in get_dataset("arc_easy").load("train")[:n]:
            for thought in thoughts:
                rationale = {
                    "cot": f"Think about it. Therefore, the answer is {ex.answer}.",
                    "pot": f"```python\nans = '{ex.answer}'\n```",
                    "eot": "% nothing to solve\nx = 1\nans = x",
                }[thought]
                f.write(
                    RationaleRecord(
                        f"{ex.id}-{thought}",
                        ex.id,
                        ex.dataset,
                        ex.task,
                        ex.question,
                        ex.answer,
                        thought,
                        rationale,
                        ex.answer,
                        ex.choices,
                    ).to_json()
                    + "\n"
                )
    return path


def tiny(model: str, data: Path, method: str, **kw):
    return METHODS[method].config(
        **{
            "data": str(data),
            "base_model": model,
            "output": method,
            "lora_r": 4,
            "lora_alpha": 8,
            "max_steps": 1,
            "batch_size": 4,
            **kw,
        }
    )


def training_prompts(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "prompt_samples.jsonl").read_text().splitlines()]


def assert_same_text(root: Path, stage: str, record_of: dict, **answer_kw) -> None:
    """The first training prompt of `stage`, rebuilt by inference from the bare example."""
    row = training_prompts(root / "stages" / stage)[0]
    record = record_of[row["example_id"]]
    example = record.example()
    student = Student(adapter=str(root))  # the card names the tiny base model, method and template
    answer = student.answer(
        [format_question(example)],
        max_new_tokens=1,
        task_description=get_dataset(example.dataset).task_description(example.task),
        **answer_kw,
    )[0]
    assert answer.prompt == row["user"]
    assert student.render(answer.prompt) == row["prompt"]
    return row


def records_by_example(path: Path, thought: str = "cot") -> dict:
    from distill.train import load_records

    return {r.example_id: r for r in load_records(str(path)) if r.thought == thought}


# --- prompt contracts ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["auto", "plain"])
def test_std_cot_prompt_contract_with_answer_options(tiny_model, tmp_path, template):
    data = arc_records(tmp_path / "arc" / "records.jsonl")
    root = train(tiny(tiny_model, data, "std-cot", template=template, output=f"std-{template}"))
    row = assert_same_text(root, "main", records_by_example(data))
    assert "Answer Choices: (A) " in row["user"]  # the options reach the training prompt
    assert row["user"].startswith(prompts.task_line(get_dataset("arc_easy").task_description()))
    assert json.loads((root / "card.json").read_text())["template"] == ("plain" if template == "plain" else "chat")
    if template == "plain":
        assert row["prompt"] == row["user"]  # the reference's raw text, no chat markup


class Teacher(QuietHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply(
            self,
            200,
            chat_completion(
                "Learning Summary: Read every option before choosing; eliminate the impossible ones.\n"
                "Supplementary Knowledge: Fevers come from infections, not from digestion.\nConcepts: fever",
                body["model"],
            ),
        )


def test_nesycd_prompt_contract_with_retrieved_knowledge(tiny_model, tmp_path):
    from distill.infer import _open_index

    data = arc_records(tmp_path / "arc" / "records.jsonl", n=4)
    with serve(Teacher) as url:
        root = train(
            tiny(tiny_model, data, "nesycd", teacher=url, teacher_model="stub", auto_accept=True, max_new_tokens=4)
        )
    card = json.loads((root / "card.json").read_text())
    assert card["inference"]["k"] == 3 and card["inference"]["source_kinds"] == ["error_analysis"]
    errors = [json.loads(line) for line in (root / "errors.jsonl").read_text().splitlines()]
    assert errors and "Answer Choices: (A) " in errors[0]["prompt"]  # S_P saw the options too
    row = assert_same_text(root, "se", records_by_example(data), kb_index=_open_index(), k=1)
    assert prompts.KNOWLEDGE_INSTRUCTION + "\nLearning summary: Read every option" in row["user"]


def test_skintern_prompt_contract_last_stage_is_question_only(tiny_model, tmp_path):
    from kb.schema import Entry, Source
    from kb.store import KBStore

    data = arc_records(tmp_path / "arc" / "records.jsonl", n=4)
    for r in records_by_example(data).values():
        KBStore().upsert(
            Entry(
                id=f"arc-{r.example_id}",
                task=r.task,
                status="accepted",
                learning_summary="Eliminate options that cannot be true.",
                supplementary_knowledge="Living things respond to infection with fever.",
                source=Source(
                    kind="example_knowledge", dataset=r.dataset, example_id=r.example_id, question=r.question
                ),
            ),
            by="test",
        )
    root = train(tiny(tiny_model, data, "skintern", stages=2, demos=1))
    first = training_prompts(root / "stages" / "stage0")[0]["user"]
    assert (
        first.index("Living things respond") < first.index("Answer: Think about it.") < first.rindex("Question: ")
    )  # knowledge, then the demonstration, then the question
    assert_same_text(root, "stage1", records_by_example(data))


@pytest.mark.parametrize("method, thought", [("etd", "pot"), ("eotd", None)])
def test_etd_prompt_contract_and_eotd_answers_with_eot_by_default(tiny_model, tmp_path, method, thought):
    data = arc_records(tmp_path / "arc" / "records.jsonl", n=3, thoughts=("cot", "pot", "eot"))
    root = train(tiny(tiny_model, data, method))
    if thought is None:  # eotd: no --thought given, the card's type is used (old bug: always CoT)
        row = assert_same_text(root, "main", records_by_example(data, "eot"))
        assert Student(adapter=str(root)).answer(["Q?"], max_new_tokens=1)[0].thought == "eot"
    else:
        rows = training_prompts(root / "stages" / "main")
        row = next(r for r in rows if r["user"].endswith(prompts.TRIGGERS[thought] + "\n"))
        example = records_by_example(data, thought)[row["example_id"]].example()
        answer = Student(adapter=str(root)).answer([format_question(example)], thought=thought, max_new_tokens=1)[0]
        assert answer.prompt == row["user"]
    assert "Answer Choices: (A) " in row["user"]


# --- options: one config, the CLI and the presets ---------------------------------------------------


def nesy(*argv: str, home: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, NESY_HOME=str(home)),
        timeout=120,
    )


def test_each_methods_help_lists_its_own_options_and_nothing_else(workspace):
    for name in ("nesycd", "skintern"):
        run = nesy("train", name, "--help", home=workspace)
        assert run.returncode == 0, run.stderr
        flags = {f.flag for f in fields(METHODS[name].config)}
        for flag in flags:
            assert flag in run.stdout, (name, flag)
        others = {f.flag for m in METHODS.values() for f in fields(m.config)} - flags
        assert not [f for f in others if f + " " in run.stdout], (name, others)
    assert "--teacher-model" in nesy("train", "nesycd", "--help", home=workspace).stdout


def test_bad_options_fail_before_anything_runs_with_one_line(workspace):
    run = nesy("train", "nesycd", "--data", "some-set", "--output", "x", "--teacher", "http://h:1/v1", home=workspace)
    assert (
        run.returncode == 2
        and run.stderr.strip() == "error: a URL teacher needs a model name: add --teacher-model NAME"
    )
    assert not (workspace / "adapters" / "x").exists()
    run = nesy("train", "skintern", "--data", "s", "--output", "x", "--schedule", "reference", home=workspace)
    assert run.returncode == 2 and "--stages 7 or more" in run.stderr
    run = nesy("train", "std-cot", "--data", "no-such-set", "--output", "x", home=workspace)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: no rationale set 'no-such-set'")


def test_paper_preset_sets_the_papers_schedule_and_explicit_options_win():
    paper = from_options(METHODS["nesycd"].config, {"data": "d", "output": "o", "preset": "paper"})
    assert (paper.epochs, paper.batch_size * paper.grad_accum, paper.max_length, paper.max_new_tokens) == (
        10,
        32,
        2048,
        1024,
    )
    assert json.dumps(paper.inference()) and paper.inference()["max_new_tokens"] == 1024
    mine = from_options(METHODS["nesycd"].config, {"data": "d", "output": "o", "preset": "paper", "epochs": 3})
    assert mine.epochs == 3
    assert to_argv("nesycd", mine) == [
        "train",
        "nesycd",
        "--data",
        "d",
        "--output",
        "o",
        "--preset",
        "paper",
        "--epochs",
        "3",
    ]
    cpu = from_options(METHODS["nesycd"].config, {"data": "d", "output": "o"})
    assert (cpu.epochs, cpu.max_length, cpu.max_new_tokens) == (3, None, 256)
    with pytest.raises(ConfigError, match="takes a comma list of cot, pot, eot; not tot"):
        from_options(METHODS["etd"].config, {"data": "d", "output": "o", "thoughts": "cot,tot"})
