"""Evaluation of student configurations side by side, with and without knowledge.

A configuration (one column of the table) is written
    [NAME=]MODEL[,kb][,k=N][,thought=cot|pot|eot|vote][,retriever=dense|bm25|hybrid][,min_score=X]
    [,pending][,adaptive=X]
MODEL is `base` or an adapter name/folder; `kb` retrieves the top-k KB entries (accepted only,
`pending` adds pending ones); NAME defaults to the spec itself. What a configuration does not say
comes from the adapter's card (distill/infer.py): the thought type it was trained on, its k (else
3), retriever, entry kinds, minimum score and new tokens. Examples:
    --config base --config base,kb --config sp=nesycd-run --config se=nesycd-run,kb,k=3

`--backend` (as on `nesy answer`; distill/student_server.py) says where every configuration generates:
`transformers` (this process, batched; the default), `llama.cpp[:f32|f16|packaged]` (the embedded
llama.cpp server with the adapter exported as a GGUF LoRA on the base GGUF) or the base URL of an
OpenAI-compatible server serving the adapter under its own name (vLLM `--enable-lora`). Prompts,
retrieval and scoring stay in this process whichever backend generates.

Outputs in $NESY_HOME/evals/<name>/:
- samples.jsonl: one line per (configuration, example): prompt, output, extracted (strict and
  flexible), gold, correct, retrieved entry ids with scores, prompt tokens, latency, the backend
  that generated it;
- results.json: per configuration accuracy (strict / flexible) overall and per task, each with
  its 95 % interval (Wilson by default, or a seeded bootstrap: `--interval bootstrap`), mean prompt
  tokens, estimated forward FLOPs per question (2 × parameters × prompt tokens: one forward
  pass over the prompt, the SKIntern measure); `comparisons`: every pair of configurations on the
  questions both answered — both right, b = only the first right, c = only the second right, both
  wrong, the exact McNemar p-value and a verdict ("significant at 5 %" / "not significant", p ≥ 0.05);
  and the flips between each `kb` configuration and the same model without knowledge —
  wrong→right ("fixed") and right→wrong ("broken") — with the entries that were inserted and the
  same p-value and verdict; `retrieval_empty` per configuration: questions a `kb` configuration
  retrieved nothing for (answered without knowledge; printed and shown as a warning);
- the KB's impact table (kb/store.py): per entry, times retrieved, answers fixed and broken in
  this report (a flip with several entries credits each, marked shared); a rerun replaces them;
- table.md: the comparison table (configurations as columns) and the paired comparisons;
- models.json: per configuration what ran (base model, adapter and its sha256, backend, template,
  chat template and its sha256, parameters); config.json: the run's options, the backend included;
- harness/<configuration>/results_<date>.json + samples_<task>_<date>.jsonl: the same run in
  lm-evaluation-harness's layout (distill/interop.py), with the generation settings, the chat
  template's hash, the adapter's hash and the tool's version.
Comparisons use strict accuracy; the p-values are per pair, not corrected for multiple comparisons.
Resumable: samples already in samples.jsonl are skipped, so a stopped run continues.

Re-scoring (`nesy eval --rescore REPORT --extractor strict|flexible|last-number`): the saved
outputs of a report scored again with another answer extractor, no generation; written as
harness files (filter = the extractor) beside the report's, or under `--name`.

`name` (the report folder) is a validated name, never a path (kb.workspace.check_name).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from distill import interop
from distill.jsonlines import resume_jsonl
from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested, read_jsonl
from distill.stats import CONFIDENCE, accuracy_interval, paired_comparison, wilson_interval
from distill.student_server import BACKEND_HELP
from kb.errors import NesyError
from kb.workspace import InvalidName, check_name, create_owned, home, named_path, subdir

INTERVALS = ("wilson", "bootstrap")
RETRIEVERS = ("dense", "bm25", "hybrid")  # distill.infer.RETRIEVERS, without importing torch here
INTERVAL_LABELS = {"wilson": "Wilson score", "bootstrap": "percentile bootstrap (seeded)"}
EXTRACTORS = ("strict", "flexible", "last-number")


class RescoreError(NesyError, ValueError):
    """A report that cannot be re-scored, or an extractor that does not apply to its answers."""


@dataclass
class RunConfig:
    """One configuration evaluated: a model, with or without knowledge, a thought type."""

    name: str
    adapter: str | None = None  # None: the base model
    with_kb: bool = False
    k: int | None = None  # None: the adapter's card (else 3)
    thought: str | None = None  # None: the thought type the adapter was trained on
    include_pending: bool = False
    adaptive_threshold: float | None = None
    retriever: str | None = None  # dense | bm25 | hybrid; None: the card's
    min_score: float | None = None  # drop hits scoring below; None: the card's

    @property
    def statuses(self) -> tuple[str, ...]:
        return ("accepted", "pending") if self.include_pending else ("accepted",)


def parse_config(spec: str) -> RunConfig:
    """`[NAME=]MODEL[,kb][,k=N][,thought=T][,retriever=R][,min_score=X][,pending][,adaptive=X]`
    -> RunConfig (ValueError if bad)."""
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
        elif key == "retriever" and value in RETRIEVERS:
            cfg.retriever = value
        elif key in ("adaptive", "min_score"):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{spec!r}: {key} needs a number") from None
            if key == "adaptive":
                cfg.adaptive_threshold = number
            else:
                cfg.min_score = number
        else:
            raise ValueError(
                f"{spec!r}: unknown option {opt!r} (kb, k=N, thought=cot|pot|eot|vote, "
                f"retriever={'|'.join(RETRIEVERS)}, min_score=X, pending, adaptive=X)"
            )
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
    max_new_tokens: int | None = None  # None: each adapter's card (else 256)
    batch_size: int = 8
    interval: str = "wilson"  # how accuracy intervals are computed: wilson | bootstrap
    backend: str = "transformers"  # where the student generates (distill.student_server.check_backend)


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
    from distill.student_server import check_backend

    out = eval_dir(cfg.name)  # before any work: a bad name stops here, nothing created
    start = time.time()
    if cfg.interval not in INTERVALS:
        raise ValueError(f"--interval must be one of {', '.join(INTERVALS)}, not {cfg.interval!r}")
    cfg.backend = check_backend(cfg.backend)  # likewise a bad --backend; `llama.cpp` is `llama.cpp:f32`
    spec = get_dataset(cfg.dataset)
    examples = spec.load(cfg.split, limit=cfg.limit, seed=cfg.seed, task=cfg.task)
    if not out.exists():
        create_owned(out)
    samples_path = out / "samples.jsonl"
    previous = resume_jsonl(samples_path)  # a half-written last line goes before we append
    _same_backend(out, cfg, previous)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    done = {(r["config"], r["example_id"]) for r in previous}
    todo = {c.name: [e for e in examples if (c.name, e.id) not in done] for c in cfg.configs}
    total = len(examples) * len(cfg.configs)
    with Progress(total, desc=f"eval {cfg.name}", initial=total - sum(map(len, todo.values())), stage="eval") as bar:
        _generate(cfg, spec, todo, samples_path, bar)
    rows = read_jsonl(samples_path)
    results = summarise(rows, cfg, [e.id for e in examples])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    keep = {e.id for e in examples}
    record_impact(f"eval:{cfg.name}", entry_impact([r for r in rows if r["example_id"] in keep], results))
    (out / "table.md").write_text(table(results))
    write_harness(out / interop.HARNESS_DIR, cfg, [r for r in rows if r["example_id"] in keep], read_models(out), start)
    return results


def _same_backend(out: Path, cfg: EvalConfig, previous: list[dict]) -> None:
    """A resumed report keeps its backend: rows of two backends under one configuration would be
    scored as one model."""
    saved = out / "config.json"
    if not previous or not saved.is_file():
        return
    try:
        spec = json.loads(saved.read_text(encoding="utf-8")).get("backend", "transformers")
    except (OSError, json.JSONDecodeError):
        return
    if spec != cfg.backend:
        raise ValueError(
            f"report {cfg.name!r} was generated with --backend {spec}: continue it with that "
            f"backend, or give this run another --name"
        )


def read_models(out: Path) -> dict[str, dict]:
    """models.json of a report: configuration name -> interop.model_info ({} when absent)."""
    path = out / "models.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def split_index(dataset: str, split: str, task: str | None) -> tuple[dict[str, int], dict[str, int]]:
    """(example id -> position in its task within the split, harness task name -> questions in
    the split): the harness's doc_id and n-samples "original"; ({}, {}) if the data is gone."""
    from distill.data import DatasetError, get_dataset

    try:
        examples = get_dataset(dataset).load(split, task=task)
    except DatasetError:
        return {}, {}
    doc_ids, originals = {}, {}
    for ex in examples:
        name = interop.task_name(ex.dataset, ex.task)
        doc_ids[ex.id] = originals.get(name, 0)
        originals[name] = originals.get(name, 0) + 1
    return doc_ids, originals


def write_harness(
    folder: Path,
    cfg: EvalConfig,
    rows: list[dict],
    models: dict[str, dict],
    start: float,
    scored: dict[str, list] | None = None,
    extractor: str | None = None,
) -> list[Path]:
    """One lm-evaluation-harness results file (+ samples per task) per configuration."""
    doc_ids, originals = split_index(cfg.dataset, cfg.split, cfg.task)
    date, paths = interop.date_id(), []
    for run in cfg.configs:
        if scored is not None:
            items = scored.get(run.name, [])
        else:
            items = [
                interop.Scored(r, interop.stored_filters(r, run.thought or "cot"))
                for r in rows
                if r["config"] == run.name
            ]
        if not items:
            continue
        ran = next((s.row.get("max_new_tokens") for s in items if s.row.get("max_new_tokens")), None)
        harness_run = interop.HarnessRun(
            report=cfg.name,
            dataset=cfg.dataset,
            split=cfg.split,
            limit=cfg.limit,
            seed=cfg.seed,
            max_new_tokens=ran or cfg.max_new_tokens or 256,
            batch_size=cfg.batch_size,
            start=start,
            configuration=asdict(run),
            model=models.get(run.name, {}),
            doc_ids=doc_ids,
            originals=originals,
            rescored_with=extractor,
        )
        paths.append(interop.write_harness(folder, harness_run, items, date))
    return paths


def _generate(cfg: EvalConfig, spec, todo: dict, samples_path: Path, bar: Progress) -> None:
    students: dict = {}  # adapter -> distill.infer.Student, one at a time
    try:
        _generate_with(cfg, spec, todo, samples_path, bar, students)
    finally:  # a llama.cpp server ends with the evaluation, not when its Student is collected
        for student in students.values():
            student.close()


def _generate_with(cfg: EvalConfig, spec, todo: dict, samples_path: Path, bar: Progress, students: dict) -> None:
    from distill.infer import Student

    index = None
    models_path = samples_path.parent / "models.json"
    models = read_models(samples_path.parent)
    for run in cfg.configs:
        if not todo[run.name]:
            continue
        if run.adapter not in students:
            for previous in students.values():  # one model (or server) at a time
                previous.close()
            students.clear()
            students[run.adapter] = Student(cfg.base_model, adapter=run.adapter, backend=cfg.backend)
        student = students[run.adapter]
        models[run.name] = interop.model_info(student)
        models_path.write_text(json.dumps(models, indent=2, ensure_ascii=False), encoding="utf-8")
        if run.with_kb and index is None:
            from distill.infer import _open_index

            index = _open_index()
        settings = resolved(run, student, cfg)
        examples = _votes_from_rows(run, cfg, spec, todo[run.name], samples_path, student, settings, bar)
        for i in range(0, len(examples), cfg.batch_size):
            bar.check_stop()
            batch = examples[i : i + cfg.batch_size]
            rows = [
                _score(run, spec, ex, res, student, settings)
                for ex, res in zip(batch, _answer(student, run, spec, batch, cfg, index))
            ]
            with open(samples_path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            bar.update(len(batch))


def vote_siblings(run: RunConfig, configs: list[RunConfig]) -> dict[str, str]:
    """thought -> the configuration answering with that one thought type under the same adapter
    and retrieval as `run`, a vote ({} unless all three are evaluated)."""
    same = ("adapter", "with_kb", "k", "include_pending", "adaptive_threshold", "retriever", "min_score")
    found = {
        c.thought: c.name
        for c in configs
        if c.thought in ("cot", "pot", "eot") and all(getattr(c, f) == getattr(run, f) for f in same)
    }
    return found if run.thought == "vote" and len(found) == 3 else {}


def _votes_from_rows(run: RunConfig, cfg: EvalConfig, spec, examples, samples_path: Path, student, settings, bar):
    """A vote's rows for the questions its three single-thought configurations already answered
    in this report, counted from their outputs (the same greedy generations a vote would make
    again, at a third of the cost); returns the questions still to generate."""
    from distill.infer import AnswerResult, extract, voted

    siblings = vote_siblings(run, cfg.configs)
    if not siblings:
        return examples
    stored = {(r["config"], r["example_id"]): r for r in read_jsonl(samples_path)}
    rows, rest = [], []
    for ex in examples:
        found = {t: stored.get((name, ex.id)) for t, name in siblings.items()}
        if not all(found.values()):
            rest.append(ex)
            continue
        answer_type = spec.answer_type_for(ex.task)
        answers = {
            t: AnswerResult(
                text=r["output"],
                # a CoT row stores the scored extraction: the vote counts the answering one
                extracted=extract(r["output"], "cot", answer_type) if t == "cot" else r["extracted"],
                retrieved=[tuple(hit) for hit in r["retrieved"]],
                retrieval_empty=r["retrieval_empty"],
                prompt_tokens=r["prompt_tokens"],
                latency_s=r["latency_s"],
                used_knowledge=r["used_knowledge"],
                prompt=r["prompt"],
                thought=t,
            )
            for t, r in found.items()
        }
        rows.append(_score(run, spec, ex, voted(answers), student, settings))
    with open(samples_path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    bar.update(len(rows))
    return rest


def _answer(student, run: RunConfig, spec, batch, cfg: EvalConfig, index):
    from distill.data import format_question

    # One call per (task description, answer type) so retrieval queries and extraction are right.
    results = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, ex in enumerate(batch):
        groups.setdefault((spec.task_description(ex.task), spec.answer_type_for(ex.task)), []).append(i)
    for (description, answer_type), idx in groups.items():
        answers = student.answer(
            [format_question(batch[i]) for i in idx],
            kb_index=index if run.with_kb else None,
            k=run.k,
            statuses=run.statuses,
            thought=run.thought,
            max_new_tokens=cfg.max_new_tokens,
            adaptive_threshold=run.adaptive_threshold,
            answer_type=answer_type,
            task_description=description,
            batch_size=cfg.batch_size,
            retriever=run.retriever,
            min_score=run.min_score,
        )
        for i, a in zip(idx, answers):
            results[i] = a
    return results


def resolved(run: RunConfig, student, cfg: EvalConfig) -> dict:
    """What the configuration ran with: its own settings, else the adapter card's."""
    thought, retrieval, max_new_tokens = student.settings(
        k=run.k,
        statuses=run.statuses,
        thought=run.thought,
        max_new_tokens=cfg.max_new_tokens,
        adaptive_threshold=run.adaptive_threshold,
        retriever=run.retriever,
        min_score=run.min_score,
    )
    return {
        "thought": thought,
        "k": retrieval.k if run.with_kb else 0,
        "retriever": retrieval.retriever,
        "min_score": retrieval.min_score,
        "max_new_tokens": max_new_tokens,
    }


def _score(run: RunConfig, spec, ex, res, student, settings: dict | None = None) -> dict:
    from distill.answers import answers_match, check

    answer_type = spec.answer_type_for(ex.task)
    if res.thought == "cot":
        strict, correct = check(res.text, ex, "strict", answer_type)
        flexible, correct_flex = check(res.text, ex, "flexible", answer_type)
    else:  # PoT / EoT / vote: the executed / solved / voted answer is the only one
        strict = flexible = res.extracted
        correct = correct_flex = answers_match(res.extracted, ex.answer, answer_type)
    return {
        "config": run.name,
        "example_id": ex.id,
        "dataset": ex.dataset,
        "task": ex.task,
        "question": ex.question,
        "prompt": res.prompt,
        "output": res.text,
        "extracted": strict,
        "extracted_flexible": flexible,
        "gold": ex.answer,
        "correct": bool(correct),
        "correct_flexible": bool(correct_flex),
        "retrieved": res.retrieved,
        "used_knowledge": res.used_knowledge,
        "prompt_tokens": res.prompt_tokens,
        "latency_s": res.latency_s,
        "params": student.params,
        "votes": res.votes,
        "thought": res.thought,
        "backend": student.backend_name,
        "retrieval_empty": bool(res.retrieval_empty),
        **(settings or {}),
        "choices": [list(c) for c in ex.choices] if ex.choices else None,
        "rendered": student.render(res.prompt),
    }  # the prompt as the model saw it (template applied)


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
    return {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "limit": cfg.limit,
        "interval": {"method": cfg.interval, "confidence": CONFIDENCE},
        "configs": configs,
        "comparisons": comparisons([r.name for r in cfg.configs], by_config),
        "flips": flips(cfg.configs, by_config),
    }


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
    first = samples[0] if samples else {}
    return {
        "model": run.adapter or "base",
        "backend": first.get("backend", "transformers"),
        "with_kb": run.with_kb,
        "k": first.get("k", run.k or 0) if run.with_kb else 0,
        "thought": first.get("thought") or run.thought or "cot",
        "n": n,
        "retriever": first.get("retriever", run.retriever) if run.with_kb else None,
        "min_score": first.get("min_score", run.min_score) if run.with_kb else None,
        "retrieval_empty": sum(bool(s.get("retrieval_empty")) for s in samples),
        "correct": sum(strict),
        "correct_flexible": sum(flexible),
        "accuracy": sum(strict) / n if n else 0.0,
        "accuracy_ci": _interval(strict, interval, seed),
        "accuracy_flexible": sum(flexible) / n if n else 0.0,
        "accuracy_flexible_ci": _interval(flexible, interval, seed),
        "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
        "per_task_n": {t: len(v) for t, v in sorted(per_task.items())},
        "per_task_ci": {t: _interval(v, interval, seed) for t, v in sorted(per_task.items())},
        "prompt_tokens_mean": mean_tokens,
        "params": params,
        "flops_per_question": 2 * params * mean_tokens,
        "knowledge_used": sum(bool(s["used_knowledge"]) for s in samples),
        "latency_s_mean": sum(s["latency_s"] for s in samples) / n if n else 0.0,
    }


def compare_pair(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Paired comparison (strict) of two configurations' samples {example_id: row} on shared questions."""
    shared = sorted(a.keys() & b.keys())
    return paired_comparison([bool(a[e]["correct"]) for e in shared], [bool(b[e]["correct"]) for e in shared]).as_dict()


def comparisons(names: list[str], by_config: dict[str, dict[str, dict]]) -> list[dict]:
    """Every pair of configurations (in column order) with flip counts and the exact McNemar p."""
    return [
        {"first": first, "second": second, **compare_pair(by_config.get(first, {}), by_config.get(second, {}))}
        for i, first in enumerate(names)
        for second in names[i + 1 :]
    ]


def plain_partner(runs: list[RunConfig], i: int) -> RunConfig | None:
    """The configuration runs[i] (with kb) is compared against: the same model and thought without kb,
    the nearest one before it in column order, else the first after it. Nearest, because an adapter
    retrained under the same name is evaluated again as a new pair of columns."""

    def same(r: RunConfig) -> bool:
        return not r.with_kb and r.adapter == runs[i].adapter and r.thought == runs[i].thought

    return next((r for r in reversed(runs[:i]) if same(r)), None) or next((r for r in runs[i + 1 :] if same(r)), None)


def flips(runs: list[RunConfig], by_config: dict[str, dict[str, dict]]) -> list[dict]:
    """For each kb configuration vs the same model/thought without kb: which answers flipped, and why."""
    out = []
    for i, with_kb in enumerate(runs):
        plain = plain_partner(runs, i) if with_kb.with_kb else None
        if plain is None:
            continue
        a, b = by_config.get(plain.name, {}), by_config.get(with_kb.name, {})
        fixed, broken = [], []
        for ex_id in sorted(a.keys() & b.keys()):
            before, after = a[ex_id]["correct"], b[ex_id]["correct"]
            if before != after:
                (fixed if after else broken).append(
                    {
                        "example_id": ex_id,
                        "entries": [e for e, _ in b[ex_id]["retrieved"]],
                        "before": a[ex_id]["extracted"],
                        "after": b[ex_id]["extracted"],
                        "gold": b[ex_id]["gold"],
                    }
                )
        pair = compare_pair(a, b)
        out.append(
            {
                "without": plain.name,
                "with": with_kb.name,
                "fixed": fixed,
                "broken": broken,
                "n": pair["n"],
                "p_value": pair["p_value"],
                "significant": pair["significant"],
                "verdict": pair["verdict"],
            }
        )
    return out


def entry_impact(rows: list[dict], results: dict) -> dict[str, dict[str, int]]:
    """Per KB entry in one report: times retrieved, answers it fixed and broke (the flips), and how
    many of those it shared with other entries retrieved for the same question (each is credited)."""
    impact: dict[str, dict[str, int]] = {}

    def of(entry_id: str) -> dict[str, int]:
        return impact.setdefault(entry_id, dict.fromkeys(IMPACT_FIELDS, 0))

    for r in rows:
        for entry_id, _ in r.get("retrieved") or []:
            of(entry_id)["retrieved"] += 1
    for f in results.get("flips", []):
        for kind in ("fixed", "broken"):
            for flip in f[kind]:
                for entry_id in flip["entries"]:
                    of(entry_id)[kind] += 1
                    of(entry_id)[f"{kind}_shared"] += len(flip["entries"]) > 1
    return impact


IMPACT_FIELDS = ("retrieved", "fixed", "broken", "fixed_shared", "broken_shared")


def record_impact(report: str, impact: dict[str, dict[str, int]]) -> None:
    """Replace this report's rows in the KB's impact table (nothing to do without a KB)."""
    from kb.store import KBStore

    if impact or (home() / "kb.sqlite").exists():
        store = KBStore()
        try:
            store.record_impact(report, impact)
        finally:
            store.close()


def empty_retrieval_warnings(results: dict) -> list[str]:
    """One line per `kb` configuration that retrieved nothing for some of its questions."""
    out = []
    for name, m in results["configs"].items():
        if m.get("with_kb") and m.get("retrieval_empty"):
            floor = f", minimum score {m['min_score']}" if m.get("min_score") is not None else ""
            out.append(
                f"warning: {name}: retrieval found no knowledge for {m['retrieval_empty']} of {m['n']} "
                f"questions (answered without it; retriever {m.get('retriever') or 'dense'}{floor}): "
                f"accept entries, add `pending`, or lower min_score"
            )
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
    rows = [
        ("model", lambda m: m["model"]),
        ("backend", lambda m: m.get("backend") or "transformers"),
        ("knowledge", lambda m: f"top-{m['k']}" if m["with_kb"] else "none"),
        ("thought", lambda m: m["thought"]),
        ("n", lambda m: m["n"]),
        ("no knowledge retrieved", lambda m: m.get("retrieval_empty", 0) if m["with_kb"] else "-"),
        ("accuracy (strict)", lambda m: with_interval(m["accuracy"], m.get("accuracy_ci"))),
        ("accuracy (flexible)", lambda m: with_interval(m["accuracy_flexible"], m.get("accuracy_flexible_ci"))),
        ("prompt tokens / question", lambda m: f"{m['prompt_tokens_mean']:.1f}"),
        ("forward GFLOPs / question", lambda m: f"{m['flops_per_question'] / 1e9:.2f}"),
    ]
    tasks = sorted({t for m in results["configs"].values() for t in m["per_task"]})
    if len(tasks) > 1:
        rows += [
            (
                f"task {t}",
                lambda m, t=t: (
                    with_interval(m["per_task"][t], m.get("per_task_ci", {}).get(t)) if t in m["per_task"] else "-"
                ),
            )
            for t in tasks
        ]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [
        "| " + label + " | " + " | ".join(str(fn(results["configs"][n])) for n in names) + " |" for label, fn in rows
    ]
    method = (results.get("interval") or {}).get("method")
    if method:
        lines.append(f"\nAccuracies with their 95 % {INTERVAL_LABELS.get(method, method)} interval in brackets.")
    pairs = results.get("comparisons") or []
    if pairs:
        lines += [
            "\nPaired comparisons on the same questions (strict; b = only the first right, "
            "c = only the second right; exact McNemar test, not corrected for "
            f"{len(pairs)} comparison{'s' if len(pairs) > 1 else ''}):\n",
            "| first | second | n | both right | b | c | both wrong | second − first | p | verdict |",
            "|---" * 10 + "|",
        ]
        lines += [
            f"| {c['first']} | {c['second']} | {c['n']} | {c['both_right']} | {c['first_only']} | "
            f"{c['second_only']} | {c['both_wrong']} | {100 * c['difference']:+.1f} pts | "
            f"{format_p(c['p_value'])} | {c['verdict']} |"
            for c in pairs
        ]
    for f in results["flips"]:
        lines.append("\n" + flip_line(f))
    return "\n".join(lines) + "\n"


# --- re-scoring saved outputs ---------------------------------------------------------------------


@dataclass
class SavedReport:
    """A report's saved outputs, its configuration and what ran (models.json)."""

    samples: Path
    cfg: EvalConfig
    models: dict[str, dict]
    rows: list[dict]
    name: str | None  # the report's name when it was given by name (its folder is under evals/)


def open_report(report: str) -> SavedReport:
    """A report by name ($NESY_HOME/evals/<name>, InvalidName for anything else) or, when it holds
    a "/", a path to a report folder or its samples.jsonl (only read)."""
    if "/" in report:
        path = Path(report)
        samples = path / "samples.jsonl" if path.is_dir() else path
        folder, name, config_path = samples.parent, None, samples.parent / "config.json"
    else:
        samples, name = report_file(report, "samples.jsonl"), report
        folder, config_path = samples.parent, report_file(report, "config.json")
    if not samples.is_file():
        raise RescoreError(f"report {report!r} has no saved outputs ({samples} not found)")
    rows = read_jsonl(samples)
    if not rows:
        raise RescoreError(f"report {report!r}: {samples} holds no outputs")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise RescoreError(f"report {report!r}: config.json cannot be read ({e})") from None
    return SavedReport(samples, _saved_config(saved, rows, name or folder.name), read_models(folder), rows, name)


def _saved_config(saved: dict, rows: list[dict], name: str) -> EvalConfig:
    """The EvalConfig a report ran with (config.json), or what its rows tell when it has none."""
    known = EvalConfig.__dataclass_fields__
    runs = [
        RunConfig(**{k: v for k, v in c.items() if k in RunConfig.__dataclass_fields__})
        for c in saved.get("configs", [])
    ]
    runs += [RunConfig(n) for n in dict.fromkeys(r["config"] for r in rows) if n not in {r.name for r in runs}]
    values = {k: v for k, v in saved.items() if k in known and k != "configs"}
    values.setdefault("dataset", rows[0].get("dataset", ""))
    values.setdefault("split", "")
    return EvalConfig(**{**values, "configs": runs, "name": name})


def extract_with(extractor: str, text: str, example, answer_type: str) -> tuple[str | None, bool]:
    """(extracted, correct) of one output by an extractor (distill.answers): strict / flexible as
    the evaluation scores; last-number = the last number anywhere (number answers only)."""
    from distill.answers import answers_match, check, extract_number

    if extractor in ("strict", "flexible"):
        extracted, correct = check(text, example, extractor, answer_type)
        return extracted, bool(correct)
    extracted = extract_number(text, "flexible")
    return extracted, answers_match(extracted, example.answer, "number")


def rescore_report(report: str, extractor: str, save_as: str | None = None) -> dict:
    """Score a report's saved outputs again with `extractor`; nothing is generated. Written as
    harness files (filter = extractor) under the report's folder, or under evals/<save_as>; a
    report given by path with no save_as is only read. Returns per configuration n, the saved
    strict accuracy, the re-scored accuracy and its stderr, how many answers changed, the files."""
    from distill.data import DatasetError, Example, get_dataset

    if extractor not in EXTRACTORS:
        raise RescoreError(f"--extractor must be one of {', '.join(EXTRACTORS)}, not {extractor!r}")
    target = eval_dir(save_as, "--name") if save_as else None  # a bad name stops before any work
    saved, start = open_report(report), time.time()
    thoughts = {run.name: run.thought for run in saved.cfg.configs}
    lookup: dict[str, Example] = {}

    def example_of(row: dict, answer_type: str) -> Example:
        choices = row.get("choices")
        if choices is None and answer_type == "option":  # an older report: the choices from the dataset
            if not lookup:
                try:
                    lookup.update({e.id: e for e in get_dataset(saved.cfg.dataset).load(saved.cfg.split)})
                except DatasetError:
                    lookup["-"] = None
            choices = getattr(lookup.get(row["example_id"]), "choices", None)
        return Example(
            row["example_id"],
            row["dataset"],
            row["question"],
            str(row["gold"]),
            row["task"],
            [tuple(c) for c in choices] if choices else None,
        )

    types: dict[tuple[str, str], str] = {}
    for row in saved.rows:
        key = (row["dataset"], row["task"])
        if key not in types:
            try:
                types[key] = get_dataset(row["dataset"]).answer_type_for(row["task"])
            except DatasetError as e:
                raise RescoreError(f"report {report!r}: {e}") from None
    if extractor == "last-number":
        other = sorted(f"{d}/{t} ({a})" for (d, t), a in types.items() if a != "number")
        if other:
            raise RescoreError(
                f"--extractor last-number reads numbers; these tasks' answers are not: "
                f"{', '.join(other)} (use strict or flexible)"
            )
    scored: dict[str, list[interop.Scored]] = {}
    summary: dict[str, dict] = {}
    for row in saved.rows:
        thought = row.get("thought") or thoughts.get(row["config"]) or "cot"
        if thought == "cot":
            answer_type = types[(row["dataset"], row["task"])]
            filters = {extractor: extract_with(extractor, row["output"], example_of(row, answer_type), answer_type)}
        else:  # executed / solved / voted: there is no text to extract from again
            filters = interop.stored_filters(row, thought)
        scored.setdefault(row["config"], []).append(interop.Scored(row, filters))
        ((extracted, correct),) = filters.values()
        m = summary.setdefault(
            row["config"], {"n": 0, "saved": 0, "rescored": [], "changed": 0, "flipped": 0, "thought": thought}
        )
        m["n"] += 1
        m["saved"] += bool(row["correct"])
        m["rescored"].append(float(correct))
        m["changed"] += extracted != row["extracted"]  # vs the saved strict answer
        m["flipped"] += bool(correct) != bool(row["correct"])  # right <-> wrong
    for m in summary.values():
        outcomes = m.pop("rescored")
        m.update(saved=m["saved"] / m["n"], accuracy=sum(outcomes) / m["n"], stderr=interop.mean_stderr(outcomes))
    target = target or (eval_dir(saved.name) if saved.name else None)
    files = []
    if target is not None:
        if not target.exists():
            create_owned(target)
        files = write_harness(
            target / interop.HARNESS_DIR, saved.cfg, saved.rows, saved.models, start, scored=scored, extractor=extractor
        )
    return {"report": report, "extractor": extractor, "configs": summary, "files": [str(p) for p in files]}


def rescore_table(result: dict) -> str:
    ex = result["extractor"]
    lines = [
        f"| configuration | n | strict (saved) | {ex} (re-scored) | stderr | answers changed | right/wrong flipped |",
        "|---" * 7 + "|",
    ]
    for name, m in result["configs"].items():
        stderr = m["stderr"] if isinstance(m["stderr"], str) else f"{100 * m['stderr']:.1f} pts"
        note = "" if m["thought"] == "cot" else f" ({m['thought']}: kept as executed)"
        lines.append(
            f"| {name} | {m['n']} | {pct(m['saved'])} | {pct(m['accuracy'])}{note} | {stderr} | "
            f"{m['changed']} | {m['flipped']} |"
        )
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
    config: list[str] = typer.Option(
        None,
        "--config",
        help="[NAME=]MODEL[,kb][,k=N][,thought=T][,retriever=R]"
        "[,min_score=X][,pending][,adaptive=X]; MODEL = base | adapter; unset "
        "options follow the adapter's card. Repeat for columns.",
    ),
    name: str = typer.Option(
        None,
        help="report name (a name, not a path) -> $NESY_HOME/evals/<name> (default "
        "dataset-split; with --rescore: where the re-scored files go, default the report)",
    ),
    base_model: str = typer.Option(None, help="HF id or local path of the base model"),
    max_new_tokens: int = typer.Option(None, help="[default: each adapter's card, else 256]"),
    batch_size: int = typer.Option(8),
    interval: str = typer.Option("wilson", help="95 % accuracy interval: wilson | bootstrap (seeded by --seed)"),
    rescore: str = typer.Option(
        None,
        "--rescore",
        metavar="REPORT",
        help="score the saved outputs of REPORT (a report name, or a path to a report "
        "folder) again with --extractor; nothing is generated",
    ),
    extractor: str = typer.Option(None, help="with --rescore: strict | flexible | last-number"),
    backend: str = typer.Option("transformers", "--backend", help=BACKEND_HELP),
) -> None:
    """Evaluate student configurations side by side (resumable; reruns skip finished samples)."""
    if rescore is not None or extractor is not None:
        if backend != "transformers":
            raise RescoreError("--rescore scores saved outputs; nothing is generated, so --backend does not apply")
        _rescore_cmd(rescore, extractor, config, name)
        return
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
    cfg = EvalConfig(
        configs=runs,
        dataset=dataset,
        split=split,
        limit=limit,
        seed=seed,
        task=task,
        name=report,
        base_model=base_model,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        interval=interval,
        backend=backend,
    )
    try:
        results = run_eval(cfg)
    except StopRequested:
        typer.echo("stopped; run the same command again to continue", err=True)
        raise typer.Exit(STOPPED_EXIT_CODE) from None
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(table(results))
    for line in empty_retrieval_warnings(results):
        typer.echo(line, err=True)
    typer.echo(f"report: {eval_dir(cfg.name)}")


def _rescore_cmd(report: str | None, extractor: str | None, config: list[str] | None, name: str | None) -> None:
    if report is None:
        raise RescoreError("--extractor goes with --rescore REPORT")
    if config:
        raise RescoreError("--rescore scores a report's saved outputs again; --config does not apply")
    result = rescore_report(report, extractor or "strict", save_as=name)
    typer.echo(rescore_table(result))
    for path in result["files"]:
        typer.echo(f"harness results: {path}")
    if not result["files"]:
        typer.echo(
            f"not saved ({report} is a path): add --name NAME to keep the re-scored files in "
            f"$NESY_HOME/evals/NAME/{interop.HARNESS_DIR}"
        )
