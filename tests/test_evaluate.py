"""Evaluation: configuration syntax, hand-checked numbers, intervals, paired tests and flips, a
resumable real run, the CLI (report names are names, never paths) and the Evaluation page."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from student_fixtures import tiny_model  # noqa: F401
from typer.testing import CliRunner

from distill.evaluate import EvalConfig, RunConfig, parse_config, run_eval, summarise, table

REPO = Path(__file__).resolve().parent.parent
MAIN = str(REPO / "app" / "main.py")


def test_parse_config_syntax():
    assert parse_config("base") == RunConfig(name="base")
    se = parse_config("se=nesycd-run,kb,k=3")
    assert (se.name, se.adapter, se.with_kb, se.k) == ("se", "nesycd-run", True, 3)
    etd = parse_config("etd-run,thought=vote,pending,adaptive=0.4")
    assert (etd.name, etd.thought, etd.statuses, etd.adaptive_threshold, etd.with_kb) == (
        "etd-run,thought=vote,pending,adaptive=0.4",
        "vote",
        ("accepted", "pending"),
        0.4,
        False,
    )
    for bad in ("", "base,kb=2", "base,k=0", "base,thought=tot", "base,adaptive=high", "base,gpu"):
        with pytest.raises(ValueError):
            parse_config(bad)


def row(config, ex, correct, tokens, task="t1", retrieved=()):
    return {
        "config": config,
        "example_id": ex,
        "task": task,
        "correct": correct,
        "correct_flexible": True,
        "prompt_tokens": tokens,
        "params": 1000,
        "retrieved": [[e, 0.9] for e in retrieved],
        "used_knowledge": bool(retrieved),
        "latency_s": 0.5,
        "extracted": str(correct),
        "gold": "True",
    }


def test_summary_numbers_and_flips_by_hand():
    runs = [RunConfig("plain"), RunConfig("kb", with_kb=True, k=1)]
    rows = [
        row("plain", "a", True, 10),
        row("plain", "b", False, 20),
        row("plain", "c", False, 30, "t2"),
        row("plain", "d", True, 40, "t2"),
        row("kb", "a", True, 50, retrieved=["k1"]),
        row("kb", "b", True, 60, retrieved=["k2"]),
        row("kb", "c", False, 70, "t2", ["k3"]),
        row("kb", "d", False, 80, "t2", ["k4", "k5"]),
    ]
    res = summarise(rows, EvalConfig(configs=runs))
    plain, kb = res["configs"]["plain"], res["configs"]["kb"]
    assert plain["accuracy"] == 0.5 and kb["accuracy"] == 0.5 and plain["accuracy_flexible"] == 1.0
    assert plain["per_task"] == {"t1": 0.5, "t2": 0.5} and kb["per_task"] == {"t1": 1.0, "t2": 0.0}
    # Wilson 95 %: 2 of 4 -> [0.1500, 0.8500]; 1 of 2 -> [0.0945, 0.9055]; 2 of 2 -> [0.3424, 1]
    assert plain["correct"] == 2 and plain["accuracy_ci"] == pytest.approx([0.150039, 0.849961], abs=1e-6)
    assert plain["accuracy_flexible_ci"] == pytest.approx([0.510109, 1.0], abs=1e-6)
    assert plain["per_task_n"] == {"t1": 2, "t2": 2}
    assert plain["per_task_ci"]["t1"] == pytest.approx([0.094531, 0.905469], abs=1e-6)
    assert kb["per_task_ci"]["t1"] == pytest.approx([0.342380, 1.0], abs=1e-6)
    assert kb["per_task_ci"]["t2"] == pytest.approx([0.0, 0.657620], abs=1e-6)
    assert res["interval"] == {"method": "wilson", "confidence": 0.95}
    assert plain["prompt_tokens_mean"] == 25 and kb["prompt_tokens_mean"] == 65
    assert plain["flops_per_question"] == 2 * 1000 * 25 and kb["flops_per_question"] == 2 * 1000 * 65
    assert kb["knowledge_used"] == 4 and plain["knowledge_used"] == 0
    [flip] = res["flips"]
    assert (flip["without"], flip["with"]) == ("plain", "kb")
    assert [(f["example_id"], f["entries"]) for f in flip["fixed"]] == [("b", ["k2"])]
    assert [(f["example_id"], f["entries"]) for f in flip["broken"]] == [("d", ["k4", "k5"])]
    assert (flip["n"], flip["p_value"], flip["significant"], flip["verdict"]) == (4, 1.0, False, "not significant")
    [pair] = res["comparisons"]
    assert (
        pair["first"],
        pair["second"],
        pair["n"],
        pair["both_right"],
        pair["first_only"],
        pair["second_only"],
        pair["both_wrong"],
    ) == ("plain", "kb", 4, 1, 1, 1, 1)
    assert pair["p_value"] == 1.0 and pair["verdict"] == "not significant"
    text = table(res)
    assert "| accuracy (strict) | 50.0% [15.0–85.0] | 50.0% [15.0–85.0] |" in text
    assert "| task t2 | 50.0% [9.5–90.5] | 0.0% [0.0–65.8] |" in text
    assert "95 % Wilson score interval" in text
    assert "| plain | kb | 4 | 1 | 1 | 1 | 1 | +0.0 pts | 1.000 | not significant |" in text
    assert "plain → kb: 1 fixed, 1 broken (exact McNemar p = 1.000, not significant)" in text


def test_a_retrained_adapter_is_compared_with_its_own_plain_column():
    # the same adapter name evaluated twice (trained again), plus a kb column listed before its plain one
    names = ["se", "se-kb", "se-again", "se-kb-again", "se-kb-curated"]
    runs = [RunConfig(n, adapter="m", with_kb="kb" in n) for n in names]
    runs += [RunConfig("other-kb", adapter="o", with_kb=True), RunConfig("other", adapter="o")]
    rows = [row(r.name, "a", True, 10) for r in runs]
    pairs = [(f["without"], f["with"]) for f in summarise(rows, EvalConfig(configs=runs))["flips"]]
    assert pairs == [
        ("se", "se-kb"),
        ("se-again", "se-kb-again"),
        ("se-again", "se-kb-curated"),
        ("other", "other-kb"),
    ]


def outcomes(config, pattern):
    """Rows of one configuration from a string like 'RRW' (R = right), one example per letter."""
    return [row(config, f"q{i:02d}", ch == "R", 10) for i, ch in enumerate(pattern)]


def test_every_pair_is_compared_with_exact_mcnemar():
    # 12 shared questions. base: 2 right; sft: the same 2 + 7 more (c = 7, b = 0 -> p = 2/128);
    # sft,kb: sft with one fixed and one broken (b = 1, c = 1 -> p = 1).
    base, sft, sftkb = "RRWWWWWWWWWW", "RRRRRRRRRWWW", "RRRRRRRRWRWW"
    runs = [RunConfig("base"), RunConfig("sft", adapter="a"), RunConfig("sft,kb", adapter="a", with_kb=True)]
    rows = outcomes("base", base) + outcomes("sft", sft) + outcomes("sft,kb", sftkb)
    res = summarise(rows, EvalConfig(configs=runs))
    pairs = {(c["first"], c["second"]): c for c in res["comparisons"]}
    assert list(pairs) == [("base", "sft"), ("base", "sft,kb"), ("sft", "sft,kb")]
    one = pairs["base", "sft"]
    assert (one["both_right"], one["first_only"], one["second_only"], one["both_wrong"]) == (2, 0, 7, 3)
    assert one["p_value"] == pytest.approx(2 / 128) and one["verdict"] == "significant at 5 %"
    assert one["significant"] is True and one["difference"] == pytest.approx(7 / 12)
    two = pairs["base", "sft,kb"]
    assert (two["first_only"], two["second_only"]) == (0, 7) and two["significant"]
    three = pairs["sft", "sft,kb"]
    assert (three["both_right"], three["first_only"], three["second_only"], three["both_wrong"]) == (8, 1, 1, 2)
    assert three["p_value"] == 1.0 and three["verdict"] == "not significant"
    [flip] = res["flips"]  # sft vs sft,kb: the knowledge pair carries the same test
    assert (flip["without"], flip["with"], flip["p_value"], flip["verdict"]) == (
        "sft",
        "sft,kb",
        1.0,
        "not significant",
    )
    text = table(res)
    assert "| base | sft | 12 | 2 | 0 | 7 | 3 | +58.3 pts | 0.016 | significant at 5 % |" in text
    assert "| sft | sft,kb | 12 | 8 | 1 | 1 | 2 | +0.0 pts | 1.000 | not significant |" in text
    assert "not corrected for 3 comparisons" in text


def test_comparisons_use_only_shared_questions():
    # a stopped run: 'kb' answered only 3 of the 5 questions 'plain' answered
    runs = [RunConfig("plain"), RunConfig("kb", with_kb=True)]
    rows = outcomes("plain", "WWWRR") + outcomes("kb", "RRR")
    res = summarise(rows, EvalConfig(configs=runs))
    [pair] = res["comparisons"]
    assert (pair["n"], pair["both_right"], pair["first_only"], pair["second_only"]) == (3, 0, 0, 3)
    assert pair["p_value"] == pytest.approx(0.25) and res["flips"][0]["n"] == 3


def test_bootstrap_intervals_are_stored_and_reproducible():
    runs = [RunConfig("plain")]
    rows = outcomes("plain", "RRRWWWWWWW" * 3)
    cfg = EvalConfig(configs=runs, interval="bootstrap", seed=3)
    a, b = summarise(rows, cfg), summarise(list(reversed(rows)), cfg)  # row order does not matter
    assert a["configs"]["plain"]["accuracy_ci"] == b["configs"]["plain"]["accuracy_ci"]
    assert a["interval"]["method"] == "bootstrap"
    low, high = a["configs"]["plain"]["accuracy_ci"]
    assert (
        low < 0.3 < high and [low, high] != summarise(rows, EvalConfig(configs=runs))["configs"]["plain"]["accuracy_ci"]
    )
    assert "percentile bootstrap" in table(a)


@pytest.fixture
def knowledge():
    from kb.schema import Entry
    from kb.store import KBStore

    KBStore().add(
        Entry(
            id="rates",
            task="gsm8k",
            status="accepted",
            learning_summary="Multiply a rate by the time to get an amount.",
            supplementary_knowledge="Earnings = hourly rate x hours worked.",
        ),
        by="test",
    )


def test_run_eval_side_by_side_and_resumable(tiny_model, knowledge, workspace):
    from distill.answers import check
    from distill.data import get_dataset

    cfg = EvalConfig(
        configs=[parse_config("base"), parse_config("base,kb")],
        dataset="gsm8k",
        split="test",
        limit=3,
        name="t",
        base_model=tiny_model,
        max_new_tokens=6,
    )
    results = run_eval(cfg)
    samples_path = workspace / "evals" / "t" / "samples.jsonl"
    rows = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert len(rows) == 6 and {r["config"] for r in rows} == {"base", "base,kb"}
    examples = {e.id: e for e in get_dataset("gsm8k").load("test", limit=3, seed=0)}
    for r in rows:
        assert r["gold"] == examples[r["example_id"]].answer
        assert (r["extracted"], r["correct"]) == check(r["output"], examples[r["example_id"]], "strict", "number")
        assert [e for e, _ in r["retrieved"]] == (["rates"] if r["config"] == "base,kb" else [])
    base, kb = results["configs"]["base"], results["configs"]["base,kb"]
    assert base["n"] == kb["n"] == 3 and kb["prompt_tokens_mean"] > base["prompt_tokens_mean"]
    assert base["accuracy"] == sum(r["correct"] for r in rows if r["config"] == "base") / 3
    assert len(base["accuracy_ci"]) == 2 and base["accuracy_ci"][0] <= base["accuracy"] <= base["accuracy_ci"][1]
    [pair] = results["comparisons"]
    assert pair["n"] == 3 and pair["both_right"] + pair["first_only"] + pair["second_only"] + pair["both_wrong"] == 3
    assert (workspace / "evals" / "t" / ".nesy-owned").is_file()  # the tool created this folder
    assert json.loads((workspace / "evals" / "t" / "results.json").read_text()) == results
    assert (workspace / "evals" / "t" / "table.md").read_text() == table(results)
    # A killed run left a half-written file: the rerun only does what is missing.
    lines = samples_path.read_text().splitlines()
    samples_path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    again = run_eval(cfg)
    rows2 = [json.loads(row) for row in samples_path.read_text().splitlines()]  # every line valid again
    assert sorted((r["config"], r["example_id"]) for r in rows2) == sorted((r["config"], r["example_id"]) for r in rows)
    assert again["configs"]["base"]["accuracy"] == results["configs"]["base"]["accuracy"]


def test_a_vote_is_counted_from_its_three_thought_rows_instead_of_generated_again(tiny_model, workspace, monkeypatch):
    from distill.infer import Student

    def eval_of(name, *specs):
        configs = [parse_config(s) for s in specs]
        cfg = EvalConfig(configs=configs, dataset="gsm8k", split="test", limit=3, name=name, base_model=tiny_model)
        cfg.max_new_tokens = 6
        return run_eval(cfg)

    def rows_of(name, config):
        rows = map(json.loads, (workspace / "evals" / name / "samples.jsonl").open())
        return [r for r in rows if r["config"] == config]

    generated = eval_of("alone", "vote=base,thought=vote")  # no single-thought rows: generated
    singles = ("cot=base,thought=cot", "pot=base,thought=pot", "eot=base,thought=eot")
    eval_of("counted", *singles)
    samples = workspace / "evals" / "counted" / "samples.jsonl"
    single_rows = [json.loads(line) for line in samples.open()]
    monkeypatch.setattr(Student, "_vote", lambda *a, **k: pytest.fail("the vote was generated again"))
    counted = eval_of("counted", *singles, "vote=base,thought=vote")
    same = ("example_id", "output", "extracted", "votes", "prompt_tokens", "correct", "prompt")
    assert [{k: r[k] for k in same} for r in rows_of("counted", "vote")] == [
        {k: r[k] for k in same} for r in rows_of("alone", "vote")
    ]
    assert counted["configs"]["vote"]["n"] == 3
    assert counted["configs"]["vote"]["accuracy"] == generated["configs"]["vote"]["accuracy"]

    # Known answers in the three rows: PoT and EoT agree on the gold, CoT says 5 -> the vote is right
    for r in single_rows:
        r["output"] = "The answer is 5." if r["config"] == "cot" else r["gold"]
        r["extracted"] = "5" if r["config"] == "cot" else r["gold"]
    samples.write_text("".join(json.dumps(r) + "\n" for r in single_rows))  # the vote rows are gone
    eval_of("counted", *singles, "vote=base,thought=vote")
    for r in rows_of("counted", "vote"):
        assert r["votes"] == {"cot": "5", "pot": r["gold"], "eot": r["gold"]}
        assert r["extracted"] == r["output"] == r["gold"] and r["correct"]


def test_cli_eval(tiny_model):
    from distill.cli import app

    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "eval",
            "--dataset",
            "gsm8k",
            "--split",
            "test",
            "--limit",
            "2",
            "--config",
            "base",
            "--base-model",
            tiny_model,
            "--max-new-tokens",
            "4",
            "--name",
            "cli",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "| accuracy (strict) |" in out.output and "report:" in out.output
    assert "95 % Wilson score interval" in out.output
    bad = runner.invoke(app, ["eval", "--config", "base,gpu"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("how", ["absolute", "traversal", "slash"])
def test_cli_eval_name_is_a_name_not_a_path(tmp_path, workspace, how):
    from distill.cli import app

    outside = tmp_path / "outside"
    value = {"absolute": str(outside / "report"), "traversal": "../../outside/report", "slash": "a/b"}[how]
    out = CliRunner().invoke(
        app,
        [
            "eval",
            "--dataset",
            "gsm8k",
            "--split",
            "test",
            "--limit",
            "1",
            "--base-model",
            str(tmp_path / "no-model"),
            "--name",
            value,
        ],
    )
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --name takes a name"), out.stderr
    assert not outside.exists() and not (workspace / "evals").exists()  # nothing created anywhere
    assert not (workspace / "a").exists()


def test_cli_eval_rejects_an_unknown_interval(workspace):
    from distill.cli import app

    out = CliRunner().invoke(app, ["eval", "--interval", "jackknife", "--name", "x"])
    assert out.exit_code == 2 and out.stderr.strip().startswith("error: --interval")
    assert len(out.stderr.strip().splitlines()) == 1 and not (workspace / "evals").exists()


# ------------------------------------------------------------------------- the Evaluation page


def write_report(folder: Path, results: dict, rows: list[dict] | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    if rows is not None:
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def open_page() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_shows_intervals_pairs_and_error_bars(workspace):
    runs = [RunConfig("base"), RunConfig("sft", adapter="a"), RunConfig("sft,kb", adapter="a", with_kb=True)]
    rows = outcomes("base", "RRWWWWWWWWWW") + outcomes("sft", "RRRRRRRRRWWW") + outcomes("sft,kb", "RRRRRRRRWRWW")
    write_report(workspace / "evals" / "r", summarise(rows, EvalConfig(configs=runs)))
    at = open_page()
    configs = at.dataframe[0].value
    assert list(configs["configuration"]) == ["base", "sft", "sft,kb"]
    assert list(configs["95% interval"]) == ["4.7–44.8%", "46.8–91.1%", "46.8–91.1%"]
    pairs = at.dataframe[1].value
    assert list(
        zip(
            pairs["first"],
            pairs["second"],
            pairs["only first right (b)"],
            pairs["only second right (c)"],
            pairs["exact McNemar p"],
            pairs["verdict"],
        )
    ) == [
        ("base", "sft", 0, 7, "0.016", "significant at 5 %"),
        ("base", "sft,kb", 0, 7, "0.016", "significant at 5 %"),
        ("sft", "sft,kb", 1, 1, "1.000", "not significant"),
    ]
    assert "Paired comparisons" in [h.value for h in at.subheader]
    assert any("exact McNemar p = 1.000, **not significant**" in c.value for c in at.caption)
    bars, errors = json.loads(at.get("vega_lite_chart")[0].proto.spec)["layer"]  # bars + error bars
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["y"]["field"] == "accuracy"
    assert errors["mark"]["type"] == "rule"
    assert (errors["encoding"]["y"]["field"], errors["encoding"]["y2"]["field"]) == ("low", "high")


def test_page_fills_in_statistics_for_an_old_report(workspace):
    """docs/real-run/results.json predates the statistics: intervals and tests come from its samples."""
    from distill.evaluate import load_report

    shutil.copytree(REPO / "docs" / "real-run", workspace / "evals" / "real-run")
    old = json.loads((workspace / "evals" / "real-run" / "results.json").read_text())
    assert "comparisons" not in old and "accuracy_ci" not in old["configs"]["base"]
    filled = load_report("real-run")
    assert filled["configs"]["base"]["accuracy_ci"] == pytest.approx([0.0, 0.0713476], abs=1e-6)  # 0 of 50
    pair = next(c for c in filled["comparisons"] if (c["first"], c["second"]) == ("nesycd", "nesycd+kb"))
    assert (pair["n"], pair["second_only"], pair["first_only"]) == (50, 1, 2)  # 1 fixed, 2 broken
    assert pair["verdict"] == "not significant"
    at = open_page()
    assert "0.0–7.1%" in list(at.dataframe[0].value["95% interval"])


def test_page_cannot_be_steered_outside_the_workspace(tmp_path, workspace):
    secret = tmp_path / "elsewhere"
    write_report(
        secret,
        {"dataset": "SECRET", "split": "x", "limit": 1, "configs": {}},
        [{"config": "SECRET", "example_id": "1"}],
    )
    (workspace / "evals").mkdir(parents=True)
    (workspace / "evals" / "linked").symlink_to(secret, target_is_directory=True)  # a folder link
    inside = workspace / "evals" / "filelink"
    inside.mkdir()
    (inside / "results.json").symlink_to(secret / "results.json")  # a file link
    at = open_page()
    assert "No evaluation reports yet" in "".join(i.value for i in at.info)
    from distill.evaluate import load_report

    with pytest.raises(ValueError):
        load_report("linked")
    with pytest.raises(ValueError):
        load_report("../../elsewhere")


# ------------------------------------------------------------- lm-evaluation-harness files, rescoring


def harness_files(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results, {samples file name: lines}) of one configuration's harness folder (one run)."""
    [results_path] = folder.glob("results_*.json")
    date = results_path.name.removeprefix("results_").removesuffix(".json")
    samples = {
        p.name: [json.loads(line) for line in p.read_text(encoding="utf-8").split("\n") if line]
        for p in folder.glob(f"samples_*_{date}.jsonl")
    }
    return json.loads(results_path.read_text(encoding="utf-8")), samples


def sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def tiny_adapter(tiny_model, workspace) -> str:
    """A LoRA adapter on the tiny model in $NESY_HOME/adapters/lora (random B: it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(workspace / "adapters" / "lora")
    return "lora"


def test_run_eval_writes_lm_eval_harness_files(tiny_model, tiny_adapter, workspace):
    """EvaluationTracker's layout: results_<date>.json + samples_<task>_<date>.jsonl per model
    (here: per configuration), its keys, stderr = sample stdev / sqrt(n), hashes of what ran."""
    import datasets
    from transformers import AutoTokenizer

    cfg = EvalConfig(
        configs=[parse_config("base"), parse_config(f"sft={tiny_adapter}")],
        dataset="gsm8k",
        split="test",
        limit=3,
        name="h",
        base_model=tiny_model,
        max_new_tokens=5,
        seed=1,
    )
    run_eval(cfg)
    report = workspace / "evals" / "h"
    rows = {(r["config"], r["example_id"]): r for r in map(json.loads, (report / "samples.jsonl").open())}
    results, samples = harness_files(report / "harness" / "sft")
    assert set(results) >= {
        "results",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "git_hash",
        "date",
        "task_hashes",
        "chat_template",
        "chat_template_sha",
    }
    task = results["results"]["gsm8k"]
    outcomes = [float(rows["sft", e]["correct"]) for e in sorted(e for c, e in rows if c == "sft")]
    assert task["exact_match,strict"] == pytest.approx(sum(outcomes) / 3)
    mean = sum(outcomes) / 3
    stderr = (sum((x - mean) ** 2 for x in outcomes) / 2) ** 0.5 / 3**0.5  # the harness's mean_stderr
    assert task["exact_match_stderr,strict"] == pytest.approx(stderr)
    assert {"exact_match,flexible", "exact_match_stderr,flexible"} <= set(task) and task["sample_len"] == 3
    assert results["n-samples"]["gsm8k"] == {"original": 1319, "effective": 3}
    assert results["versions"]["gsm8k"] == 1.0 and results["n-shot"]["gsm8k"] == 0
    config = results["config"]
    assert config["gen_kwargs"]["max_new_tokens"] == 5 and config["gen_kwargs"]["do_sample"] is False
    assert config["limit"] == 3 and config["random_seed"] == 1 and config["model_args"].endswith("peft=lora")
    weights = workspace / "adapters" / "lora" / "adapter_model.safetensors"
    import hashlib

    assert config["model_sha"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config["nesy"]["adapter_sha256"] == config["model_sha"]
    template = AutoTokenizer.from_pretrained(tiny_model).chat_template
    assert results["chat_template"] == template and results["chat_template_sha"] == sha256(template)
    assert results["nesy_version"] == "0.1.0" and results["git_hash"]
    # samples: one line per (question, filter), the prompt as the model saw it
    [(name, lines)] = samples.items()
    assert name.startswith("samples_gsm8k_") and len(lines) == 6
    assert [x["filter"] for x in lines] == ["strict"] * 3 + ["flexible"] * 3
    first = lines[0]
    assert set(first) >= {
        "doc_id",
        "doc",
        "target",
        "arguments",
        "resps",
        "filtered_resps",
        "filter",
        "metrics",
        "doc_hash",
        "prompt_hash",
        "target_hash",
        "exact_match",
    }
    row = rows["sft", first["doc"]["id"]]
    prompt = first["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<|im_start|>") and row["prompt"] in prompt and first["prompt_hash"] == sha256(prompt)
    assert first["resps"] == [[row["output"]]] and first["target"] == row["gold"]
    assert first["doc_id"] == int(row["example_id"].rsplit("-", 1)[1])  # its place in the test split
    assert first["exact_match"] == float(row["correct"])
    assert results["task_hashes"]["gsm8k"] == sha256(
        "".join(x["doc_hash"] + x["prompt_hash"] + x["target_hash"] for x in lines)
    )
    base, _ = harness_files(report / "harness" / "base")
    assert base["config"]["model_sha"] is None and base["config"]["model_args"] == f"pretrained={tiny_model}"
    # the harness's own loader reads these with datasets
    loaded = datasets.load_dataset(
        "json", data_files=str(report / "harness" / "sft" / name), split="train", cache_dir=str(workspace / "hf-cache")
    )
    assert loaded.num_rows == 6 and loaded[0]["filter"] == "strict"


def saved_report(
    workspace: Path, name: str, outputs: list[tuple[str, str]], dataset="gsm8k", task="gsm8k", thought="cot"
) -> Path:
    """A report as `nesy eval` leaves it, from (output, gold) pairs scored as the run scores them."""
    from distill.answers import check
    from distill.data import Example

    folder = workspace / "evals" / name
    folder.mkdir(parents=True)
    rows = []
    for i, (output, gold) in enumerate(outputs):
        ex = Example(f"q{i}", dataset, f"question {i}", gold, task)
        strict, ok = check(output, ex, "strict", "number")
        flexible, ok_flex = check(output, ex, "flexible", "number")
        rows.append(
            {
                "config": "base",
                "example_id": ex.id,
                "dataset": dataset,
                "task": task,
                "question": ex.question,
                "prompt": f"Question: {ex.question}",
                "output": output,
                "extracted": strict,
                "extracted_flexible": flexible,
                "gold": gold,
                "correct": ok,
                "correct_flexible": ok_flex,
                "retrieved": [],
                "used_knowledge": False,
                "prompt_tokens": 9,
                "latency_s": 0.1,
                "params": 1,
                "votes": None,
            }
        )
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(
        json.dumps(
            asdict(
                EvalConfig(
                    configs=[RunConfig("base", thought=thought)],
                    dataset=dataset,
                    split="test",
                    limit=len(rows),
                    name=name,
                )
            )
        )
    )
    return folder


OUTPUTS = [
    ("12 apples, then 3. Therefore, the answer is 15.", "15"),  # right by every extractor
    ("The answer is 4 cakes, so 8 in all.", "8"),  # strict 4 (wrong), last number 8
    ("We get 10. Then 20", "20"),  # no answer phrase: strict None
    ("The answer is 7.", "9"),
]  # wrong by every extractor


def test_rescore_changes_the_extractor_without_generating(workspace, monkeypatch):
    import distill.infer

    monkeypatch.setattr(distill.infer.Student, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    from distill.evaluate import rescore_report

    saved_report(workspace, "r", OUTPUTS)
    strict = rescore_report("r", "strict")
    assert strict["configs"]["base"] == {
        "n": 4,
        "saved": 0.25,
        "accuracy": 0.25,
        "changed": 0,
        "flipped": 0,
        "thought": "cot",
        "stderr": pytest.approx(0.25),
    }
    last = rescore_report("r", "last-number")["configs"]["base"]
    assert (last["accuracy"], last["changed"], last["flipped"]) == (0.75, 2, 2)
    # stderr of [1, 1, 1, 0]: stdev 0.5 / sqrt(4)
    assert last["stderr"] == pytest.approx(0.25)
    folder = workspace / "evals" / "r" / "harness" / "base"
    runs = sorted(folder.glob("results_*.json"))
    assert len(runs) == 2  # one per re-scoring, beside the report
    results = json.loads(runs[-1].read_text())
    assert results["results"]["gsm8k"]["exact_match,last-number"] == 0.75
    assert results["results"]["gsm8k"]["exact_match_stderr,last-number"] == pytest.approx(0.25)
    assert results["config"]["nesy"]["rescored_with"] == "last-number"
    date = runs[-1].name.removeprefix("results_").removesuffix(".json")
    lines = [json.loads(line) for line in (folder / f"samples_gsm8k_{date}.jsonl").read_text().split("\n") if line]
    assert [(x["filtered_resps"], x["exact_match"]) for x in lines] == [
        (["15"], 1.0),
        (["8"], 1.0),
        (["20"], 1.0),
        (["7"], 0.0),
    ]


def test_rescore_keeps_executed_answers_and_refuses_last_number_for_options(workspace):
    from distill.evaluate import RescoreError, rescore_report

    saved_report(workspace, "pot", OUTPUTS, thought="pot")
    res = rescore_report("pot", "last-number")["configs"]["base"]
    assert (res["accuracy"], res["changed"], res["thought"]) == (0.25, 0, "pot")  # the saved verdicts
    saved_report(workspace, "arc", [("The answer is (B) 12", "B")], dataset="arc_easy", task="arc_easy")
    with pytest.raises(RescoreError, match="last-number reads numbers.*arc_easy/arc_easy \\(option\\)"):
        rescore_report("arc", "last-number")
    assert rescore_report("arc", "strict")["configs"]["base"]["accuracy"] == 1.0


def test_cli_rescore_by_name_and_by_path(tmp_path, workspace, capsys):
    from distill.cli import app, run

    runner = CliRunner()
    saved_report(workspace, "r", OUTPUTS)
    out = runner.invoke(app, ["eval", "--rescore", "r", "--extractor", "last-number"])
    assert out.exit_code == 0, out.output
    assert "| base | 4 | 25.0% | 75.0% | 25.0 pts | 2 | 2 |" in out.output and "harness results:" in out.output
    copy = tmp_path / "elsewhere"
    shutil.copytree(workspace / "evals" / "r", copy, ignore=shutil.ignore_patterns("harness"))
    out = runner.invoke(app, ["eval", "--rescore", str(copy), "--extractor", "flexible"])
    assert out.exit_code == 0 and "not saved" in out.output and not (copy / "harness").exists()
    out = runner.invoke(app, ["eval", "--rescore", str(copy), "--extractor", "flexible", "--name", "kept"])
    assert out.exit_code == 0 and list((workspace / "evals" / "kept" / "harness" / "base").glob("results_*"))
    for argv, message in [
        (["--rescore", "r..x"], "error: report takes a name"),
        (["--rescore", "r", "--extractor", "regex"], "error: --extractor must be one of"),
        (["--extractor", "strict"], "error: --extractor goes with --rescore"),
        (["--rescore", "r", "--config", "base"], "error: --rescore scores"),
        (["--rescore", "r", "--name", "a/b"], "error: --name takes a name"),
        (["--rescore", "missing"], "error: report 'missing' has no saved outputs"),
    ]:
        with pytest.raises(SystemExit) as done:
            run(["eval", *argv])
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and err.startswith(message) and len(err.splitlines()) == 1, (argv, err)


def test_rescore_of_the_shipped_real_run_reproduces_its_strict_scores(workspace):
    from distill.evaluate import rescore_report

    result = rescore_report(str(REPO / "docs" / "real-run"), "strict")
    saved = json.loads((REPO / "docs" / "real-run" / "results.json").read_text())["configs"]
    for name, m in result["configs"].items():
        assert (m["n"], m["accuracy"], m["changed"]) == (saved[name]["n"], saved[name]["accuracy"], 0)
    assert result["files"] == [] and not (workspace / "evals").exists()


def test_a_dataset_of_several_tasks_is_a_harness_group(workspace):
    """BBH-like: one result per task and the dataset as a group over all its questions."""
    from distill import interop

    tasks = ["navigate", "navigate", "date_understanding", "date_understanding", "date_understanding"]
    rows = [
        {
            "config": "c",
            "example_id": f"e{i}",
            "dataset": "bbh",
            "task": t,
            "question": "q",
            "prompt": "p",
            "output": "o",
            "gold": "(A)",
            "extracted": "A" if i % 2 else "B",
            "correct": bool(i % 2),
            "extracted_flexible": "A",
            "correct_flexible": True,
        }
        for i, t in enumerate(tasks)
    ]
    run = interop.HarnessRun("r", "bbh", "test", None, 0, 8, 2, 0.0, {"name": "c"})
    results, samples = interop.harness_files(run, [interop.Scored(r, interop.stored_filters(r)) for r in rows])
    assert set(samples) == {"bbh_navigate", "bbh_date_understanding"}
    assert results["results"]["bbh_navigate"]["exact_match,strict"] == 0.5
    assert results["results"]["bbh_date_understanding"]["exact_match,strict"] == pytest.approx(1 / 3)
    assert results["groups"]["bbh"]["exact_match,strict"] == results["results"]["bbh"]["exact_match,strict"] == 0.4
    assert results["groups"]["bbh"]["sample_len"] == 5
    assert results["group_subtasks"] == {"bbh": ["bbh_date_understanding", "bbh_navigate"]}


# ------------------------------------------- the adapter's card decides; empty retrieval is loud


def test_parse_config_leaves_unset_options_to_the_card_and_takes_retriever_and_min_score():
    plain = parse_config("base,kb")
    assert (plain.k, plain.thought, plain.retriever, plain.min_score) == (None, None, None, None)
    cfg = parse_config("se=run,kb,retriever=bm25,min_score=0.45,k=2")
    assert (cfg.retriever, cfg.min_score, cfg.k, cfg.with_kb) == ("bm25", 0.45, 2, True)
    for bad in ("base,retriever=tfidf", "base,min_score=high", "base,min_score"):
        with pytest.raises(ValueError):
            parse_config(bad)


def test_entry_impact_credits_every_entry_of_a_flip_and_a_rerun_replaces_it(workspace):
    from distill.evaluate import entry_impact, record_impact
    from kb.store import KBStore

    runs = [RunConfig("plain"), RunConfig("kb", with_kb=True, k=2)]
    rows = [
        row("plain", "a", False, 10),
        row("plain", "b", True, 10),
        row("plain", "c", True, 10),
        row("kb", "a", True, 10, retrieved=["k1"]),
        row("kb", "b", False, 10, retrieved=["k1", "k2"]),
        row("kb", "c", True, 10, retrieved=["k2"]),
    ]
    impact = entry_impact(rows, summarise(rows, EvalConfig(configs=runs)))
    assert impact["k1"] == {"retrieved": 2, "fixed": 1, "broken": 1, "fixed_shared": 0, "broken_shared": 1}
    assert impact["k2"] == {"retrieved": 2, "fixed": 0, "broken": 1, "fixed_shared": 0, "broken_shared": 1}
    record_impact("eval:r", impact)
    record_impact("compare:q", {"k1": {"retrieved": 1, "fixed": 1}})
    record_impact("eval:r", {"k2": {"retrieved": 5, "broken": 2}})  # the same report again: replaced
    totals = KBStore().impact()
    assert totals["k1"] == {
        "retrieved": 1,
        "fixed": 1,
        "broken": 0,
        "fixed_shared": 0,
        "broken_shared": 0,
        "reports": 1,
    }
    assert totals["k2"]["broken"] == 2 and totals["k2"]["retrieved"] == 5
    assert KBStore().impact(["k2"]).keys() == {"k2"}


def test_eval_follows_the_adapters_card_and_says_when_retrieval_found_nothing(tiny_model, tiny_adapter, workspace):
    from distill.cli import app
    from kb.schema import Entry, Source
    from kb.store import KBStore

    card = {
        "method": "std-cot",
        "template": "chat",
        "base_model": tiny_model,
        "inference": {
            "thought": "cot",
            "k": 2,
            "retriever": "bm25",
            "min_score": None,
            "source_kinds": ["error_analysis"],
            "adaptive_threshold": None,
            "max_new_tokens": 7,
        },
    }
    (workspace / "adapters" / tiny_adapter / "card.json").write_text(json.dumps(card))
    from distill.data import get_dataset

    kb = KBStore()
    questions = [e.question for e in get_dataset("gsm8k").load("test", limit=2, seed=0)]
    for i, words in enumerate(questions * 2):  # each question's words: BM25 finds two entries for it
        kb.add(
            Entry(
                id=f"k{i}",
                task="gsm8k",
                status="accepted",
                learning_summary=f"Summary about {words}.",
                supplementary_knowledge=f"Knowledge about {words}.",
                source=Source(kind="error_analysis", dataset="gsm8k"),
            ),
            by="test",
        )
    out = CliRunner().invoke(
        app,
        [
            "eval",
            "--dataset",
            "gsm8k",
            "--split",
            "test",
            "--limit",
            "2",
            "--config",
            f"card={tiny_adapter},kb",
            "--config",
            f"floor={tiny_adapter},kb,min_score=1000",
            "--name",
            "card",
        ],
    )
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (workspace / "evals" / "card" / "samples.jsonl").read_text().splitlines()]
    card_rows = [r for r in rows if r["config"] == "card"]
    assert {(r["k"], r["retriever"], r["max_new_tokens"], r["thought"]) for r in card_rows} == {(2, "bm25", 7, "cot")}
    assert all(len(r["retrieved"]) == 2 for r in card_rows)  # BM25 over the card's kinds, top 2
    results = json.loads((workspace / "evals" / "card" / "results.json").read_text())
    assert results["configs"]["card"]["retrieval_empty"] == 0 and results["configs"]["card"]["k"] == 2
    assert results["configs"]["floor"]["retrieval_empty"] == 2 and results["configs"]["floor"]["min_score"] == 1000
    assert "warning: floor: retrieval found no knowledge for 2 of 2 questions" in out.stderr
    assert "warning: card:" not in out.stderr
    assert "| no knowledge retrieved | 0 | 2 |" in out.output
    impact = KBStore().impact()
    assert sum(m["retrieved"] for m in impact.values()) == sum(len(r["retrieved"]) for r in rows)
    at = open_page()
    shown = "\n".join(w.value for w in at.warning).replace("\\", "")
    assert "floor: retrieval found no knowledge for 2 of 2 questions" in shown
