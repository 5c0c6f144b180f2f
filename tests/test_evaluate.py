"""Evaluation: configuration syntax, hand-checked numbers and flips, a resumable real run, CLI."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from distill.evaluate import EvalConfig, RunConfig, parse_config, run_eval, summarise, table
from student_fixtures import tiny_model  # noqa: F401


def test_parse_config_syntax():
    assert parse_config("base") == RunConfig(name="base")
    se = parse_config("se=nesycd-run,kb,k=3")
    assert (se.name, se.adapter, se.with_kb, se.k) == ("se", "nesycd-run", True, 3)
    etd = parse_config("etd-run,thought=vote,pending,adaptive=0.4")
    assert (etd.name, etd.thought, etd.statuses, etd.adaptive_threshold, etd.with_kb) == (
        "etd-run,thought=vote,pending,adaptive=0.4", "vote", ("accepted", "pending"), 0.4, False)
    for bad in ("", "base,kb=2", "base,k=0", "base,thought=tot", "base,adaptive=high", "base,gpu"):
        with pytest.raises(ValueError):
            parse_config(bad)


def row(config, ex, correct, tokens, task="t1", retrieved=()):
    return {"config": config, "example_id": ex, "task": task, "correct": correct, "correct_flexible": True,
            "prompt_tokens": tokens, "params": 1000, "retrieved": [[e, 0.9] for e in retrieved],
            "used_knowledge": bool(retrieved), "latency_s": 0.5, "extracted": str(correct), "gold": "True"}


def test_summary_numbers_and_flips_by_hand():
    runs = [RunConfig("plain"), RunConfig("kb", with_kb=True, k=1)]
    rows = [row("plain", "a", True, 10), row("plain", "b", False, 20), row("plain", "c", False, 30, "t2"),
            row("plain", "d", True, 40, "t2"),
            row("kb", "a", True, 50, retrieved=["k1"]), row("kb", "b", True, 60, retrieved=["k2"]),
            row("kb", "c", False, 70, "t2", ["k3"]), row("kb", "d", False, 80, "t2", ["k4", "k5"])]
    res = summarise(rows, EvalConfig(configs=runs))
    plain, kb = res["configs"]["plain"], res["configs"]["kb"]
    assert plain["accuracy"] == 0.5 and kb["accuracy"] == 0.5 and plain["accuracy_flexible"] == 1.0
    assert plain["per_task"] == {"t1": 0.5, "t2": 0.5} and kb["per_task"] == {"t1": 1.0, "t2": 0.0}
    assert plain["prompt_tokens_mean"] == 25 and kb["prompt_tokens_mean"] == 65
    assert plain["flops_per_question"] == 2 * 1000 * 25 and kb["flops_per_question"] == 2 * 1000 * 65
    assert kb["knowledge_used"] == 4 and plain["knowledge_used"] == 0
    [flip] = res["flips"]
    assert (flip["without"], flip["with"]) == ("plain", "kb")
    assert [(f["example_id"], f["entries"]) for f in flip["fixed"]] == [("b", ["k2"])]
    assert [(f["example_id"], f["entries"]) for f in flip["broken"]] == [("d", ["k4", "k5"])]
    text = table(res)
    assert "| accuracy (strict) | 50.0% | 50.0% |" in text and "1 fixed, 1 broken" in text
    assert "| task t2 | 50.0% | 0.0% |" in text


@pytest.fixture
def knowledge():
    from kb.schema import Entry
    from kb.store import KBStore

    KBStore().add(Entry(id="rates", task="gsm8k", status="accepted",
                        learning_summary="Multiply a rate by the time to get an amount.",
                        supplementary_knowledge="Earnings = hourly rate x hours worked."), by="test")


def test_run_eval_side_by_side_and_resumable(tiny_model, knowledge, workspace):
    from distill.answers import check
    from distill.data import get_dataset

    cfg = EvalConfig(configs=[parse_config("base"), parse_config("base,kb")], dataset="gsm8k", split="test",
                     limit=3, name="t", base_model=tiny_model, max_new_tokens=6)
    results = run_eval(cfg)
    samples_path = workspace / "evals" / "t" / "samples.jsonl"
    rows = [json.loads(l) for l in samples_path.read_text().splitlines()]
    assert len(rows) == 6 and {r["config"] for r in rows} == {"base", "base,kb"}
    examples = {e.id: e for e in get_dataset("gsm8k").load("test", limit=3, seed=0)}
    for r in rows:
        assert r["gold"] == examples[r["example_id"]].answer
        assert (r["extracted"], r["correct"]) == check(r["output"], examples[r["example_id"]], "strict", "number")
        assert [e for e, _ in r["retrieved"]] == (["rates"] if r["config"] == "base,kb" else [])
    base, kb = results["configs"]["base"], results["configs"]["base,kb"]
    assert base["n"] == kb["n"] == 3 and kb["prompt_tokens_mean"] > base["prompt_tokens_mean"]
    assert base["accuracy"] == sum(r["correct"] for r in rows if r["config"] == "base") / 3
    assert json.loads((workspace / "evals" / "t" / "results.json").read_text()) == results
    assert (workspace / "evals" / "t" / "table.md").read_text() == table(results)
    # A killed run left a half-written file: the rerun only does what is missing.
    lines = samples_path.read_text().splitlines()
    samples_path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    again = run_eval(cfg)
    rows2 = [json.loads(l) for l in samples_path.read_text().splitlines()]  # every line valid again
    assert sorted((r["config"], r["example_id"]) for r in rows2) == sorted((r["config"], r["example_id"]) for r in rows)
    assert again["configs"]["base"]["accuracy"] == results["configs"]["base"]["accuracy"]


def test_cli_eval(tiny_model):
    from distill.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["eval", "--dataset", "gsm8k", "--split", "test", "--limit", "2", "--config",
                              "base", "--base-model", tiny_model, "--max-new-tokens", "4", "--name", "cli"])
    assert out.exit_code == 0, out.output
    assert "| accuracy (strict) |" in out.output and "report:" in out.output
    bad = runner.invoke(app, ["eval", "--config", "base,gpu"])
    assert bad.exit_code == 2
