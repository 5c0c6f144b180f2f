"""Evaluation of student configurations side by side, with and without knowledge.

A configuration (one column of the table) is written
    [NAME=]MODEL[,kb][,k=N][,thought=cot|pot|eot|vote][,pending][,adaptive=X]
MODEL is `base` or an adapter name/folder; `kb` retrieves the top-k KB entries (accepted only,
`pending` adds pending ones); NAME defaults to the spec itself. Examples:
    --config base --config base,kb --config sp=nesycd-run --config se=nesycd-run,kb,k=3

Outputs in $NESY_HOME/evals/<name>/:
- samples.jsonl: one line per (configuration, example): prompt, output, extracted (strict and
  flexible), gold, correct, retrieved entry ids with scores, prompt tokens, latency;
- results.json: per configuration accuracy (strict / flexible) overall and per task, each with
  its 95 % interval (Wilson by default, or a seeded bootstrap: `--interval bootstrap`), mean prompt
  tokens, estimated forward FLOPs per question (2 × parameters × prompt tokens: one forward
  pass over the prompt, the SKIntern measure); `comparisons`: every pair of configurations on the
  questions both answered — both right, b = only the first right, c = only the second right, both
  wrong, the exact McNemar p-value and a verdict ("significant at 5 %" / "not significant", p ≥ 0.05);
  and the flips between each `kb` configuration and the same model without knowledge —
  wrong→right ("fixed") and right→wrong ("broken") — with the entries that were inserted and the
  same p-value and verdict;
- table.md: the comparison table (configurations as columns) and the paired comparisons.
Comparisons use strict accuracy; the p-values are per pair, not corrected for multiple comparisons.
Resumable: samples already in samples.jsonl are skipped, so a stopped run continues.

`name` (the report folder) is a validated name, never a path (kb.workspace.check_name).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested
from distill.progress import read_jsonl
from distill.stats import CONFIDENCE, accuracy_interval, paired_comparison, wilson_interval
from kb.workspace import InvalidName, check_name, create_owned, home, named_path, subdir

INTERVALS = ("wilson", "bootstrap")
INTERVAL_LABELS = {"wilson": "Wilson score", "bootstrap": "percentile bootstrap (seeded)"}


@dataclass
class RunConfig:
    """One configuration evaluated: a model, with or without knowledge, a thought type."""
    name: str
    adapter: str | None = None        # None: the base model
    with_kb: bool = False
    k: int = 1
    thought: str = "cot"
    include_pending: bool = False
    adaptive_threshold: float | None = None

    @property
    def statuses(self) -> tuple[str, ...]:
        return ("accepted", "pending") if self.include_pending else ("accepted",)


def parse_config(spec: str) -> RunConfig:
    """`[NAME=]MODEL[,kb][,k=N][,thought=T][,pending][,adaptive=X]` -> RunConfig (ValueError if bad)."""
    name, _, body = spec.partition("=") if "=" in spec.split(",")[0] else ("", "", spec)
    parts = [p.strip() for p in body.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"empty configuration {spec!r}")
    model, options = parts[0], parts[1:]
    cfg = RunConfig(name=name or spec, adapter=None if model == "base" else model)
    for opt in options:
        key, _, value = opt.partition("=")
        if key == "kb" and not value:
            cfg.with_kb = True
        elif key == "pending" and not value:
            cfg.include_pending = True
        elif key == "k" and value.isdigit() and int(value) > 0:
            cfg.k, cfg.with_kb = int(value), True
        elif key == "thought" and value in ("cot", "pot", "eot", "vote"):
            cfg.thought = value
        elif key == "adaptive":
            try:
                cfg.adaptive_threshold = float(value)
            except ValueError:
                raise ValueError(f"{spec!r}: adaptive needs a number") from None
        else:
            raise ValueError(f"{spec!r}: unknown option {opt!r} (kb, k=N, thought=cot|pot|eot|vote, "
                             f"pending, adaptive=X)")
    return cfg


@dataclass
class EvalConfig:
    configs: list[RunConfig]
    dataset: str = "gsm8k"
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    task: str | None = None
    name: str = "eval"
    base_model: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    interval: str = "wilson"          # how accuracy intervals are computed: wilson | bootstrap


def eval_dir(name: str, option: str = "--name") -> Path:
    """$NESY_HOME/evals/<name> for a validated name (InvalidName otherwise); not created."""
    return named_path("evals", name, option)


def report_file(name: str, filename: str) -> Path:
    """$NESY_HOME/evals/<name>/<filename> of an existing report, refused (InvalidName) if the name is
    not a plain name or the folder or file is a link that leads outside $NESY_HOME."""
    path = eval_dir(name, "report") / filename
    if path.is_symlink() or not path.resolve().is_relative_to(home()):
        raise InvalidName(f"report {name!r}: {filename} is a link or lies outside the workspace")
    return path


def list_reports() -> list[str]:
    """Names of the reports with a results.json, newest first (links and odd names skipped)."""
    found = []
    for folder in subdir("evals").iterdir():
        try:
            path = report_file(folder.name, "results.json")
            if path.is_file():
                found.append((path.stat().st_mtime, folder.name))
        except (InvalidName, OSError):
            continue
    return [name for _, name in sorted(found, reverse=True)]


def load_report(name: str) -> dict:
    """results.json of a report (ValueError if unreadable), with the statistics filled in for a
    report written before they existed: Wilson intervals from accuracy × n, and the paired
    comparisons and flip p-values from samples.jsonl when it is there."""
    try:
        results = json.loads(report_file(name, "results.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"report {name!r}: results.json cannot be read ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("configs"), dict):
        raise ValueError(f"report {name!r}: results.json has no configurations")
    for m in results["configs"].values():
        n = int(m.get("n", 0))
        for key in ("accuracy", "accuracy_flexible"):
            if f"{key}_ci" not in m and key in m:
                m[f"{key}_ci"] = list(wilson_interval(round(m[key] * n), n))
    if "comparisons" not in results or any("p_value" not in f for f in results.get("flips", [])):
        samples = report_file(name, "samples.jsonl")
        by_config: dict[str, dict[str, dict]] = {}
        for r in read_jsonl(samples) if samples.is_file() else []:
            by_config.setdefault(r["config"], {})[r["example_id"]] = r
        if by_config:
            results.setdefault("comparisons", comparisons(list(results["configs"]), by_config))
            for f in results.get("flips", []):
                if "p_value" not in f:
                    pair = compare_pair(by_config.get(f["without"], {}), by_config.get(f["with"], {}))
                    f.update({k: pair[k] for k in ("n", "p_value", "significant", "verdict")})
    results.setdefault("interval", {"method": "wilson", "confidence": CONFIDENCE})
    return results


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate every configuration on the dataset split; returns (and writes) results.json."""
    from distill.data import get_dataset

    out = eval_dir(cfg.name)  # before any work: a bad name stops here, nothing created
    if cfg.interval not in INTERVALS:
        raise ValueError(f"--interval must be one of {', '.join(INTERVALS)}, not {cfg.interval!r}")
    spec = get_dataset(cfg.dataset)
    examples = spec.load(cfg.split, limit=cfg.limit, seed=cfg.seed, task=cfg.task)
    if not out.exists():
        create_owned(out)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    samples_path = out / "samples.jsonl"
    previous = read_jsonl(samples_path)
    if previous or samples_path.exists():  # drop a half-written last line before appending
        samples_path.write_text("".join(json.dumps(r) + "\n" for r in previous), encoding="utf-8")
    done = {(r["config"], r["example_id"]) for r in previous}
    todo = {c.name: [e for e in examples if (c.name, e.id) not in done] for c in cfg.configs}
    total = len(examples) * len(cfg.configs)
    with Progress(total, desc=f"eval {cfg.name}", initial=total - sum(map(len, todo.values())),
                  stage="eval") as bar:
        _generate(cfg, spec, todo, samples_path, bar)
    results = summarise(read_jsonl(samples_path), cfg, [e.id for e in examples])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table(results))
    return results


def _generate(cfg: EvalConfig, spec, todo: dict, samples_path: Path, bar: Progress) -> None:
    from distill.infer import Student

    students: dict[str | None, Student] = {}
    index = None
    for run in cfg.configs:
        if not todo[run.name]:
            continue
        if run.adapter not in students:
            students.clear()  # one model in memory at a time
            students[run.adapter] = Student(cfg.base_model, adapter=run.adapter)
        student = students[run.adapter]
        if run.with_kb and index is None:
            from distill.infer import _open_index
            index = _open_index()
        examples = todo[run.name]
        for i in range(0, len(examples), cfg.batch_size):
            bar.check_stop()
            batch = examples[i:i + cfg.batch_size]
            rows = [_score(run, spec, ex, res, student.params)
                    for ex, res in zip(batch, _answer(student, run, spec, batch, cfg, index))]
            with open(samples_path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            bar.update(len(batch))


def _answer(student, run: RunConfig, spec, batch, cfg: EvalConfig, index):
    from distill.data import format_question

    # One call per (task description, answer type) so retrieval queries and extraction are right.
    results = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, ex in enumerate(batch):
        groups.setdefault((spec.task_description(ex.task), spec.answer_type_for(ex.task)), []).append(i)
    for (description, answer_type), idx in groups.items():
        answers = student.answer(
            [format_question(batch[i]) for i in idx], kb_index=index if run.with_kb else None, k=run.k,
            statuses=run.statuses, thought=run.thought, max_new_tokens=cfg.max_new_tokens,
            adaptive_threshold=run.adaptive_threshold, answer_type=answer_type,
            task_description=description, batch_size=cfg.batch_size)
        for i, a in zip(idx, answers):
            results[i] = a
    return results


def _score(run: RunConfig, spec, ex, res, params: int) -> dict:
    from distill.answers import answers_match, check

    answer_type = spec.answer_type_for(ex.task)
    if run.thought == "cot":
        strict, correct = check(res.text, ex, "strict", answer_type)
        flexible, correct_flex = check(res.text, ex, "flexible", answer_type)
    else:  # PoT / EoT / vote: the executed / solved / voted answer is the only one
        strict = flexible = res.extracted
        correct = correct_flex = answers_match(res.extracted, ex.answer, answer_type)
    return {"config": run.name, "example_id": ex.id, "dataset": ex.dataset, "task": ex.task,
            "question": ex.question, "prompt": res.prompt, "output": res.text, "extracted": strict,
            "extracted_flexible": flexible, "gold": ex.answer, "correct": bool(correct),
            "correct_flexible": bool(correct_flex), "retrieved": res.retrieved,
            "used_knowledge": res.used_knowledge, "prompt_tokens": res.prompt_tokens,
            "latency_s": res.latency_s, "params": params, "votes": res.votes}


def summarise(rows: list[dict], cfg: EvalConfig, example_ids: list[str] | None = None) -> dict:
    """Accuracy (with intervals), prompt tokens, FLOPs per configuration; paired comparisons; flips."""
    keep = set(example_ids) if example_ids is not None else None
    by_config: dict[str, dict[str, dict]] = {}
    for r in rows:
        if keep is None or r["example_id"] in keep:
            by_config.setdefault(r["config"], {})[r["example_id"]] = r
    configs = {}
    for run in cfg.configs:
        samples = [s for _, s in sorted(by_config.get(run.name, {}).items())]  # stable order
        configs[run.name] = _metrics(run, samples, cfg.interval, cfg.seed)
    return {"dataset": cfg.dataset, "split": cfg.split, "limit": cfg.limit,
            "interval": {"method": cfg.interval, "confidence": CONFIDENCE}, "configs": configs,
            "comparisons": comparisons([r.name for r in cfg.configs], by_config),
            "flips": flips(cfg.configs, by_config)}


def _interval(outcomes: list[bool], method: str, seed: int) -> list[float]:
    return list(accuracy_interval(outcomes, method, CONFIDENCE, seed=seed))


def _metrics(run: RunConfig, samples: list[dict], interval: str = "wilson", seed: int = 0) -> dict:
    n = len(samples)
    per_task: dict[str, list[bool]] = {}
    for s in samples:
        per_task.setdefault(s["task"], []).append(s["correct"])
    strict = [bool(s["correct"]) for s in samples]
    flexible = [bool(s["correct_flexible"]) for s in samples]
    tokens = sum(s["prompt_tokens"] for s in samples)
    params = samples[0]["params"] if samples else 0
    mean_tokens = tokens / n if n else 0.0
    return {"model": run.adapter or "base", "with_kb": run.with_kb, "k": run.k if run.with_kb else 0,
            "thought": run.thought, "n": n,
            "correct": sum(strict), "correct_flexible": sum(flexible),
            "accuracy": sum(strict) / n if n else 0.0,
            "accuracy_ci": _interval(strict, interval, seed),
            "accuracy_flexible": sum(flexible) / n if n else 0.0,
            "accuracy_flexible_ci": _interval(flexible, interval, seed),
            "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
            "per_task_n": {t: len(v) for t, v in sorted(per_task.items())},
            "per_task_ci": {t: _interval(v, interval, seed) for t, v in sorted(per_task.items())},
            "prompt_tokens_mean": mean_tokens, "params": params,
            "flops_per_question": 2 * params * mean_tokens,
            "knowledge_used": sum(bool(s["used_knowledge"]) for s in samples),
            "latency_s_mean": sum(s["latency_s"] for s in samples) / n if n else 0.0}


def compare_pair(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Paired comparison (strict) of two configurations' samples {example_id: row} on shared questions."""
    shared = sorted(a.keys() & b.keys())
    return paired_comparison([bool(a[e]["correct"]) for e in shared],
                             [bool(b[e]["correct"]) for e in shared]).as_dict()


def comparisons(names: list[str], by_config: dict[str, dict[str, dict]]) -> list[dict]:
    """Every pair of configurations (in column order) with flip counts and the exact McNemar p."""
    return [{"first": first, "second": second,
             **compare_pair(by_config.get(first, {}), by_config.get(second, {}))}
            for i, first in enumerate(names) for second in names[i + 1:]]


def flips(runs: list[RunConfig], by_config: dict[str, dict[str, dict]]) -> list[dict]:
    """For each kb configuration vs the same model/thought without kb: which answers flipped, and why."""
    out = []
    for with_kb in (r for r in runs if r.with_kb):
        plain = next((r for r in runs if not r.with_kb and r.adapter == with_kb.adapter
                      and r.thought == with_kb.thought), None)
        if plain is None:
            continue
        a, b = by_config.get(plain.name, {}), by_config.get(with_kb.name, {})
        fixed, broken = [], []
        for ex_id in sorted(a.keys() & b.keys()):
            before, after = a[ex_id]["correct"], b[ex_id]["correct"]
            if before != after:
                (fixed if after else broken).append({
                    "example_id": ex_id, "entries": [e for e, _ in b[ex_id]["retrieved"]],
                    "before": a[ex_id]["extracted"], "after": b[ex_id]["extracted"],
                    "gold": b[ex_id]["gold"]})
        pair = compare_pair(a, b)
        out.append({"without": plain.name, "with": with_kb.name, "fixed": fixed, "broken": broken,
                    "n": pair["n"], "p_value": pair["p_value"], "significant": pair["significant"],
                    "verdict": pair["verdict"]})
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def with_interval(x: float, ci: list[float] | None) -> str:
    """'50.0% [15.0–85.0]' (interval in percent); the bare accuracy if an old report has none."""
    return pct(x) if not ci else f"{pct(x)} [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"


def format_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def flip_line(f: dict) -> str:
    """'plain → kb: 1 fixed, 1 broken (exact McNemar p = 1.000, not significant)'."""
    line = f"{f['without']} → {f['with']}: {len(f['fixed'])} fixed, {len(f['broken'])} broken"
    if "p_value" in f:
        line += f" (exact McNemar p = {format_p(f['p_value'])}, {f['verdict']})"
    return line


def table(results: dict) -> str:
    """Markdown table: one column per configuration."""
    names = list(results["configs"])
    rows = [("model", lambda m: m["model"]), ("knowledge", lambda m: f"top-{m['k']}" if m["with_kb"] else "none"),
            ("thought", lambda m: m["thought"]), ("n", lambda m: m["n"]),
            ("accuracy (strict)", lambda m: with_interval(m["accuracy"], m.get("accuracy_ci"))),
            ("accuracy (flexible)", lambda m: with_interval(m["accuracy_flexible"], m.get("accuracy_flexible_ci"))),
            ("prompt tokens / question", lambda m: f"{m['prompt_tokens_mean']:.1f}"),
            ("forward GFLOPs / question", lambda m: f"{m['flops_per_question'] / 1e9:.2f}")]
    tasks = sorted({t for m in results["configs"].values() for t in m["per_task"]})
    if len(tasks) > 1:
        rows += [(f"task {t}", lambda m, t=t: with_interval(m["per_task"][t], m.get("per_task_ci", {}).get(t))
                  if t in m["per_task"] else "-") for t in tasks]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + label + " | " + " | ".join(str(fn(results["configs"][n])) for n in names) + " |"
              for label, fn in rows]
    method = (results.get("interval") or {}).get("method")
    if method:
        lines.append(f"\nAccuracies with their 95 % {INTERVAL_LABELS.get(method, method)} interval in brackets.")
    pairs = results.get("comparisons") or []
    if pairs:
        lines += ["\nPaired comparisons on the same questions (strict; b = only the first right, "
                  "c = only the second right; exact McNemar test, not corrected for "
                  f"{len(pairs)} comparison{'s' if len(pairs) > 1 else ''}):\n",
                  "| first | second | n | both right | b | c | both wrong | second − first | p | verdict |",
                  "|---" * 10 + "|"]
        lines += [f"| {c['first']} | {c['second']} | {c['n']} | {c['both_right']} | {c['first_only']} | "
                  f"{c['second_only']} | {c['both_wrong']} | {100 * c['difference']:+.1f} pts | "
                  f"{format_p(c['p_value'])} | {c['verdict']} |" for c in pairs]
    for f in results["flips"]:
        lines.append("\n" + flip_line(f))
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, rich_markup_mode=None)


@cli.command()
def eval_cmd(
    dataset: str = typer.Option("gsm8k", help="dataset name (nesy data list)"),
    split: str = typer.Option("test"),
    limit: int = typer.Option(None, help="a seeded sample of N examples"),
    seed: int = typer.Option(0),
    task: str = typer.Option(None, help="only this task (BBH / AGIEval)"),
    config: list[str] = typer.Option(None, "--config", help="[NAME=]MODEL[,kb][,k=N][,thought=T][,pending]"
                                     "[,adaptive=X]; MODEL = base | adapter. Repeat for columns."),
    name: str = typer.Option(None, help="report name (a name, not a path) -> $NESY_HOME/evals/<name> (default dataset-split)"),
    base_model: str = typer.Option(None, help="HF id or local path of the base model"),
    max_new_tokens: int = typer.Option(256),
    batch_size: int = typer.Option(8),
    interval: str = typer.Option("wilson", help="95 % accuracy interval: wilson | bootstrap (seeded by --seed)"),
) -> None:
    """Evaluate student configurations side by side (resumable; reruns skip finished samples)."""
    report = name or f"{dataset}-{split}"
    try:  # before anything else: the report name is a name, never a path
        check_name(report, "--name" if name else "--name (defaulted from --dataset and --split)")
    except InvalidName as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if interval not in INTERVALS:
        typer.echo(f"error: --interval must be one of {', '.join(INTERVALS)}, not {interval!r}", err=True)
        raise typer.Exit(2)
    try:
        runs = [parse_config(c) for c in (config or ["base"])]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    if len({r.name for r in runs}) != len(runs):
        raise typer.BadParameter("configuration names must be distinct (use NAME=...)", param_hint="--config")
    cfg = EvalConfig(configs=runs, dataset=dataset, split=split, limit=limit, seed=seed, task=task,
                     name=report, base_model=base_model, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, interval=interval)
    try:
        results = run_eval(cfg)
    except StopRequested:
        typer.echo("stopped; run the same command again to continue", err=True)
        raise typer.Exit(STOPPED_EXIT_CODE)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(table(results))
    typer.echo(f"report: {eval_dir(cfg.name)}")
