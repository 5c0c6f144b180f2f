"""Evaluation of student configurations side by side, with and without knowledge.

A configuration (one column of the table) is written
    [NAME=]MODEL[,kb][,k=N][,thought=cot|pot|eot|vote][,pending][,adaptive=X]
MODEL is `base` or an adapter name/folder; `kb` retrieves the top-k KB entries (accepted only,
`pending` adds pending ones); NAME defaults to the spec itself. Examples:
    --config base --config base,kb --config sp=nesycd-run --config se=nesycd-run,kb,k=3

Outputs in $NESY_HOME/evals/<name>/:
- samples.jsonl: one line per (configuration, example): prompt, output, extracted (strict and
  flexible), gold, correct, retrieved entry ids with scores, prompt tokens, latency;
- results.json: per configuration accuracy (strict / flexible) overall and per task, mean prompt
  tokens, estimated forward FLOPs per question (2 × parameters × prompt tokens: one forward
  pass over the prompt, the SKIntern measure), and the flips between each `kb` configuration and
  the same model without knowledge — wrong→right ("fixed") and right→wrong ("broken") — with the
  entries that were inserted;
- table.md: the comparison table (configurations as columns).
Resumable: samples already in samples.jsonl are skipped, so a stopped run continues.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested
from distill.progress import read_jsonl
from kb.workspace import subdir


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


def eval_dir(name: str) -> Path:
    return subdir("evals", name)


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate every configuration on the dataset split; returns (and writes) results.json."""
    from distill.data import get_dataset

    spec = get_dataset(cfg.dataset)
    examples = spec.load(cfg.split, limit=cfg.limit, seed=cfg.seed, task=cfg.task)
    out = eval_dir(cfg.name)
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
    """Accuracy, prompt tokens, FLOPs per configuration and the with/without-knowledge flips."""
    keep = set(example_ids) if example_ids is not None else None
    by_config: dict[str, dict[str, dict]] = {}
    for r in rows:
        if keep is None or r["example_id"] in keep:
            by_config.setdefault(r["config"], {})[r["example_id"]] = r
    configs = {}
    for run in cfg.configs:
        samples = list(by_config.get(run.name, {}).values())
        configs[run.name] = _metrics(run, samples)
    return {"dataset": cfg.dataset, "split": cfg.split, "limit": cfg.limit, "configs": configs,
            "flips": flips(cfg.configs, by_config)}


def _metrics(run: RunConfig, samples: list[dict]) -> dict:
    n = len(samples)
    per_task: dict[str, list[bool]] = {}
    for s in samples:
        per_task.setdefault(s["task"], []).append(s["correct"])
    tokens = sum(s["prompt_tokens"] for s in samples)
    params = samples[0]["params"] if samples else 0
    mean_tokens = tokens / n if n else 0.0
    return {"model": run.adapter or "base", "with_kb": run.with_kb, "k": run.k if run.with_kb else 0,
            "thought": run.thought, "n": n,
            "accuracy": sum(s["correct"] for s in samples) / n if n else 0.0,
            "accuracy_flexible": sum(s["correct_flexible"] for s in samples) / n if n else 0.0,
            "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
            "prompt_tokens_mean": mean_tokens, "params": params,
            "flops_per_question": 2 * params * mean_tokens,
            "knowledge_used": sum(bool(s["used_knowledge"]) for s in samples),
            "latency_s_mean": sum(s["latency_s"] for s in samples) / n if n else 0.0}


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
        out.append({"without": plain.name, "with": with_kb.name, "fixed": fixed, "broken": broken})
    return out


def table(results: dict) -> str:
    """Markdown table: one column per configuration."""
    names = list(results["configs"])
    rows = [("model", lambda m: m["model"]), ("knowledge", lambda m: f"top-{m['k']}" if m["with_kb"] else "none"),
            ("thought", lambda m: m["thought"]), ("n", lambda m: m["n"]),
            ("accuracy (strict)", lambda m: f"{100 * m['accuracy']:.1f}%"),
            ("accuracy (flexible)", lambda m: f"{100 * m['accuracy_flexible']:.1f}%"),
            ("prompt tokens / question", lambda m: f"{m['prompt_tokens_mean']:.1f}"),
            ("forward GFLOPs / question", lambda m: f"{m['flops_per_question'] / 1e9:.2f}")]
    tasks = sorted({t for m in results["configs"].values() for t in m["per_task"]})
    if len(tasks) > 1:
        rows += [(f"task {t}", lambda m, t=t: f"{100 * m['per_task'][t]:.1f}%" if t in m["per_task"] else "-")
                 for t in tasks]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + label + " | " + " | ".join(str(fn(results["configs"][n])) for n in names) + " |"
              for label, fn in rows]
    for f in results["flips"]:
        lines.append(f"\n{f['without']} → {f['with']}: {len(f['fixed'])} fixed, {len(f['broken'])} broken")
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
    name: str = typer.Option(None, help="report name -> $NESY_HOME/evals/<name> (default dataset-split)"),
    base_model: str = typer.Option(None, help="HF id or local path of the base model"),
    max_new_tokens: int = typer.Option(256),
    batch_size: int = typer.Option(8),
) -> None:
    """Evaluate student configurations side by side (resumable; reruns skip finished samples)."""
    try:
        runs = [parse_config(c) for c in (config or ["base"])]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    if len({r.name for r in runs}) != len(runs):
        raise typer.BadParameter("configuration names must be distinct (use NAME=...)", param_hint="--config")
    cfg = EvalConfig(configs=runs, dataset=dataset, split=split, limit=limit, seed=seed, task=task,
                     name=name or f"{dataset}-{split}", base_model=base_model,
                     max_new_tokens=max_new_tokens, batch_size=batch_size)
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
