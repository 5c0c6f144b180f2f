"""Files other tools read: lm-evaluation-harness results and samples, TRL training datasets.

**lm-evaluation-harness.** Beside its own report, an evaluation writes what the harness's
`EvaluationTracker` writes (lm_eval/loggers/evaluation_tracker.py, lm_eval/result_schema.py),
one folder per configuration, as the harness does per model:

    evals/<report>/harness/<configuration>/results_<date>.json
    evals/<report>/harness/<configuration>/samples_<task>_<date>.jsonl

results: `results` {task: {name, alias, sample_len, "exact_match,<filter>",
"exact_match_stderr,<filter>"}}, `groups` + `group_subtasks` when a dataset has several tasks (a
group's metrics are over all its questions; its stderr is that mean's, where the harness pools the
tasks' variances), `configs` (task configs: split, prompt builder, generation kwargs, filters),
`versions`, `n-shot`, `higher_is_better`, `n-samples`, `config` (model args, with `backend=` when a
server generated; the adapter's sha256, batch size, limit, seed, gen_kwargs, plus this tool's
configuration and the backend under `nesy`), `git_hash`, `date`, the tool's version,
`chat_template` + `chat_template_sha`, `task_hashes`. In the harness a *filter* is the
answer-extraction step after generation (its GSM8K task has "strict-match" and "flexible-extract"),
so ours are named by our extractors: `exact_match,strict` and `exact_match,flexible` for CoT; PoT,
EoT and vote answers are executed / solved / voted, with no text filter: `exact_match,none`.
The stderr is the harness's for a mean: sample standard deviation / sqrt(n), "N/A" below 2.
Samples: one line per (document, filter) with `doc_id`, `doc`, `target`, `arguments`
({"gen_args_0": {"arg_0": the prompt as the model saw it, "arg_1": gen kwargs}}), `resps`,
`filtered_resps`, `filter`, `metrics`, `doc_hash`, `prompt_hash`, `target_hash`, `exact_match`,
and what the harness has no key for (retrieved entries, prompt tokens, latency) under `nesy`.

**TRL.** A verified rationale set as the training samples of a method (`distill.methods`), in
TRL's dataset formats (https://huggingface.co/docs/trl/dataset_formats), loadable with
`datasets.load_dataset("json", data_files=...)`:
- `messages` (conversational language modelling): [{"role": "user", "content": prompt},
  {"role": "assistant", "content": rationale}] — TRL applies the tokenizer's chat template, which
  is our `--template chat` text;
- `prompt-completion` (standard): {"prompt", "completion"} — prompt + completion is our
  `--template plain` text (TRL appends the EOS, as we do).
The prompt is the method's own training text (its `samples()`), so the data trains the same way in
TRL, LLaMA-Factory (sharegpt with role/content tags) or here. Every row carries `metadata` (the
record without its rationale, and the method), which is what `import_trl` rebuilds records from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata as package_metadata
from pathlib import Path

from distill import jsonlines
from distill.data import NAME_RE, DatasetError, RationaleRecord, get_dataset, rationale_dir, record_from_row
from kb.errors import NesyError

REPO = Path(__file__).resolve().parent.parent
HARNESS_DIR = "harness"
TASK_VERSION = 1.0  # bump when what a task's metric means changes
METRIC = "exact_match"
NO_FILTER = "none"


class InteropError(NesyError, ValueError):
    """A file or option of an export / import that cannot work; the message says where."""


# ------------------------------------------------------------------------------------ hashes, env


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_version() -> str:
    try:
        return package_metadata.version("nesy-studio")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def package_version(name: str) -> str | None:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return None


def git_hash() -> str | None:
    """The checkout's short commit, as the harness records its own (None outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def model_info(student) -> dict:
    """What identifies the model a configuration ran: base, adapter with its hashes, template,
    chat template and its hash (a `distill.infer.Student`; kept in the report's models.json)."""
    from distill.infer import adapter_dir

    tok, model = student.tokenizer, getattr(student, "model", None)  # no model: a server generates
    info = {
        "base_model": tok.name_or_path,
        "adapter": student.adapter,
        "method": student.method.name,
        "backend": getattr(student, "backend_name", "transformers"),
        "template": student.template,
        "chat_template": tok.chat_template if student.template == "chat" else None,
        "params": student.params,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else None,
        "device": student.device if model is not None else None,  # a server's device is its own
        "tokenizer_pad_token": [tok.pad_token, str(tok.pad_token_id)],
        "tokenizer_eos_token": [tok.eos_token, str(tok.eos_token_id)],
        "tokenizer_bos_token": [tok.bos_token, str(tok.bos_token_id)],
    }
    info["chat_template_sha"] = sha256_text(info["chat_template"]) if info["chat_template"] else None
    if student.adapter:
        folder = adapter_dir(student.adapter)
        weights = next(
            (p for p in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if p.is_file()), None
        )
        info["adapter_sha256"] = sha256_file(weights) if weights else None
        info["adapter_config_sha256"] = sha256_file(folder / "adapter_config.json")
    return info


# ---------------------------------------------------------------------- lm-evaluation-harness


def mean_stderr(values: list[float]) -> float | str:
    """The harness's stderr of a mean (metrics.mean_stderr): sample stdev / sqrt(n); "N/A" if n < 2."""
    if len(values) < 2:
        return "N/A"
    return statistics.stdev(values) / math.sqrt(len(values))


def date_id() -> str:
    """The harness's file timestamp: ISO time with ':' replaced (results_2025-01-31T10-00-00.123456)."""
    return datetime.now().isoformat().replace(":", "-")


def safe_file_part(name: str) -> str:
    """A configuration or task name as one path component (the harness's model-name sanitising,
    plus anything else that is not a plain file-name character)."""
    part = re.sub(r"[^\w.,=+-]+", "__", name).lstrip(".")
    return part or "_"


@dataclass
class Scored:
    """One evaluated question of one configuration: its samples.jsonl row and, per filter, the
    (extracted answer, correct) the filter gives."""

    row: dict
    filters: dict[str, tuple[str | None, bool]]


def stored_filters(row: dict, thought: str = "cot") -> dict[str, tuple[str | None, bool]]:
    """The filters an evaluation run scored a row with: strict + flexible for CoT text; "none" for
    executed / solved / voted answers (`thought`: the configuration's, for rows that lack one)."""
    if (row.get("thought") or thought) == "cot":
        return {
            "strict": (row["extracted"], bool(row["correct"])),
            "flexible": (row.get("extracted_flexible"), bool(row.get("correct_flexible"))),
        }
    return {NO_FILTER: (row["extracted"], bool(row["correct"]))}


@dataclass
class HarnessRun:
    """What one results file describes besides its samples."""

    report: str
    dataset: str
    split: str
    limit: int | None
    seed: int
    max_new_tokens: int
    batch_size: int
    start: float  # time.time() when the run (or re-scoring) began
    configuration: dict  # RunConfig as a dict
    model: dict = field(default_factory=dict)  # model_info(), {} when unknown (an older report)
    doc_ids: dict[str, int] = field(default_factory=dict)  # example id -> index in its task's split
    originals: dict[str, int] = field(default_factory=dict)  # task -> questions in the split
    rescored_with: str | None = None


def task_name(dataset: str, task: str) -> str:
    return dataset if task in ("", dataset) else f"{dataset}_{task}"


def harness_files(run: HarnessRun, scored: list[Scored]) -> tuple[dict, dict[str, list[dict]]]:
    """(results dict, {task: sample lines}) for one configuration, in the harness's layout."""
    gen_kwargs = {"max_new_tokens": run.max_new_tokens, "do_sample": False, "until": []}
    by_task: dict[str, list[Scored]] = {}
    for s in sorted(scored, key=lambda s: (run.doc_ids.get(s.row["example_id"], math.inf), s.row["example_id"])):
        by_task.setdefault(task_name(s.row["dataset"], s.row["task"]), []).append(s)
    results, configs, samples, hashes = {}, {}, {}, {}
    for task, items in sorted(by_task.items()):
        filters = list(dict.fromkeys(f for s in items for f in s.filters))
        results[task] = {"name": task, "alias": task, "sample_len": len(items)}
        for f in filters:
            values = [float(s.filters[f][1]) for s in items if f in s.filters]
            results[task][f"{METRIC},{f}"] = sum(values) / len(values)
            results[task][f"{METRIC}_stderr,{f}"] = mean_stderr(values)
        samples[task] = [
            _sample_line(s, f, i, gen_kwargs, run) for f in filters for i, s in enumerate(items) if f in s.filters
        ]
        hashes[task] = sha256_text("".join(x["doc_hash"] + x["prompt_hash"] + x["target_hash"] for x in samples[task]))
        configs[task] = _task_config(task, items[0].row, filters, gen_kwargs, run)
    out = {"results": results}
    datasets = {s.row["dataset"] for s in scored}
    if len(results) > 1:  # a dataset of several tasks: the harness's group entry over all of them
        out["groups"] = {}
        for dataset in sorted(datasets):
            items = [s for s in scored if s.row["dataset"] == dataset]
            group = {"name": dataset, "alias": dataset, "sample_len": len(items)}
            for f in dict.fromkeys(f for s in items for f in s.filters):
                values = [float(s.filters[f][1]) for s in items if f in s.filters]
                group[f"{METRIC},{f}"] = sum(values) / len(values)
                group[f"{METRIC}_stderr,{f}"] = mean_stderr(values)
            out["groups"][dataset] = group
            results[dataset] = group  # the harness lists a group among the results too
        out["group_subtasks"] = {
            d: sorted(t for t in by_task if t == d or t.startswith(d + "_")) for d in sorted(datasets)
        }
    else:
        out["group_subtasks"] = {task: [] for task in by_task}
    model = run.model
    adapter = run.configuration.get("adapter")
    out.update(
        {
            "configs": configs,
            "versions": {t: TASK_VERSION for t in by_task},
            "n-shot": {t: 0 for t in by_task},
            "higher_is_better": {t: {METRIC: True} for t in by_task},
            "n-samples": {
                t: {"original": run.originals.get(t, len(items)), "effective": len(items)}
                for t, items in by_task.items()
            },
            "config": {
                "model": "nesy",
                "model_args": ",".join(
                    f"{k}={v}"
                    for k, v in (
                        ("pretrained", model.get("base_model")),
                        ("peft", adapter),
                        ("backend", model.get("backend") if model.get("backend") != "transformers" else None),
                    )
                    if v
                ),
                "model_num_parameters": model.get("params"),
                "model_dtype": model.get("dtype"),
                "model_sha": model.get("adapter_sha256"),
                "batch_size": run.batch_size,
                "batch_sizes": [],
                "device": model.get("device"),
                "use_cache": None,
                "limit": run.limit,
                "bootstrap_iters": 0,
                "gen_kwargs": gen_kwargs,
                "random_seed": run.seed,
                "numpy_seed": None,
                "torch_seed": None,
                "fewshot_seed": None,
                "nesy": {
                    "report": run.report,
                    "configuration": run.configuration,
                    "method": model.get("method"),
                    "backend": model.get("backend"),
                    "template": model.get("template"),
                    "adapter_sha256": model.get("adapter_sha256"),
                    "adapter_config_sha256": model.get("adapter_config_sha256"),
                    "rescored_with": run.rescored_with,
                },
            },
            "git_hash": git_hash(),
            "date": run.start,
            "nesy_version": tool_version(),
            "transformers_version": package_version("transformers"),
            "torch_version": package_version("torch"),
            "tokenizer_pad_token": model.get("tokenizer_pad_token"),
            "tokenizer_eos_token": model.get("tokenizer_eos_token"),
            "tokenizer_bos_token": model.get("tokenizer_bos_token"),
            "model_source": "nesy",
            "model_name": run.configuration["name"],
            "model_name_sanitized": safe_file_part(run.configuration["name"]),
            "system_instruction": None,
            "system_instruction_sha": None,
            "fewshot_as_multiturn": False,
            "chat_template": model.get("chat_template"),
            "chat_template_sha": model.get("chat_template_sha"),
            "task_hashes": hashes,
            "total_evaluation_time_seconds": str(round(sum(s.row.get("latency_s") or 0 for s in scored), 3)),
        }
    )
    return out, samples


def _task_config(task: str, row: dict, filters: list[str], gen_kwargs: dict, run: HarnessRun) -> dict:
    cfg = run.configuration
    try:
        description = get_dataset(row["dataset"]).task_description(row["task"])
    except DatasetError:
        description = None
    return {
        "task": task,
        "tag": [row["dataset"]],
        "dataset_path": f"nesy:{row['dataset']}",
        "dataset_name": row["task"],
        "test_split": run.split,
        "output_type": "generate_until",
        "doc_to_text": f"distill.methods.get({run.model['method']!r}).build_prompt"
        if run.model.get("method")
        else "the adapter's method's build_prompt (not recorded in this report)",
        "doc_to_target": "answer",
        "description": description,
        "num_fewshot": 0,
        "repeats": 1,
        "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True}],
        "filter_list": [
            {
                "name": f,
                "filter": [{"function": "distill.evaluate.extract_with", "extractor": f}] if f != NO_FILTER else [],
            }
            for f in filters
        ],
        "generation_kwargs": gen_kwargs,
        "metadata": {
            "version": TASK_VERSION,
            "thought": cfg.get("thought"),
            "knowledge": {k: cfg.get(k) for k in ("with_kb", "k", "include_pending", "adaptive_threshold")},
        },
    }


def _sample_line(s: Scored, filter_name: str, position: int, gen_kwargs: dict, run: HarnessRun) -> dict:
    row = s.row
    doc = {
        "id": row["example_id"],
        "dataset": row["dataset"],
        "task": row["task"],
        "question": row["question"],
        "answer": row["gold"],
        "choices": row.get("choices"),
    }
    prompt = row.get("rendered") or row["prompt"]  # rendered: the chat-templated text (newer reports)
    extracted, correct = s.filters[filter_name]
    return {
        "doc_id": run.doc_ids.get(row["example_id"], position),
        "doc": doc,
        "target": str(row["gold"]),
        "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": gen_kwargs}},
        "resps": [[row["output"]]],
        "filtered_resps": [extracted if extracted is not None else "[invalid]"],
        "filter": filter_name,
        "metrics": [METRIC],
        "doc_hash": sha256_text(json.dumps(doc, indent=2, ensure_ascii=False)),
        "prompt_hash": sha256_text(prompt),
        "target_hash": sha256_text(str(row["gold"])),
        METRIC: float(correct),
        "nesy": {
            "config": row["config"],
            "example_id": row["example_id"],
            "retrieved": row.get("retrieved"),
            "used_knowledge": row.get("used_knowledge"),
            "prompt_tokens": row.get("prompt_tokens"),
            "latency_s": row.get("latency_s"),
            "votes": row.get("votes"),
        },
    }


def write_harness(folder: Path, run: HarnessRun, scored: list[Scored], date: str | None = None) -> Path:
    """results_<date>.json + samples_<task>_<date>.jsonl of one configuration under
    folder/<configuration>/; returns the results file."""
    date = date or date_id()
    target = folder / safe_file_part(run.configuration["name"])
    target.mkdir(parents=True, exist_ok=True)
    results, samples = harness_files(run, scored)
    for task, lines in samples.items():
        with open(target / f"samples_{safe_file_part(task)}_{date}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    path = target / f"results_{date}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- TRL

TRL_FORMATS = ("messages", "prompt-completion")
EXPORTABLE = ("std-cot", "etd", "eotd")  # methods whose training samples are a function of the set alone


def training_pairs(records: list[RationaleRecord], method: str) -> list[tuple[RationaleRecord, object]]:
    """(record, Sample) for every record `method` trains on, the Sample from the method's own
    `samples()`: the exact user text and response its training uses."""
    from distill.methods import etd, std_cot

    if method == "std-cot":
        thoughts, samples = ("cot",), std_cot.samples(records)
    elif method in ("etd", "eotd"):
        thoughts = etd.THOUGHTS if method == "etd" else tuple(etd.EoTDConfig.thoughts)
        samples = etd.samples(records, thoughts)
    else:
        raise InteropError(
            f"--method {method!r} cannot be exported from a rationale set alone: "
            + (
                "nesycd's S_E and skintern's stages put knowledge from the KB and a training run into "
                "the prompt; export std-cot (nesycd's S_P) instead"
                if method in ("nesycd", "skintern")
                else f"choose one of {', '.join(EXPORTABLE)}"
            )
        )
    kept = [r for r in records if (r.thought or "cot") in thoughts]
    if len(kept) != len(samples) or any(r.example_id != s.example_id for r, s in zip(kept, samples)):
        raise InteropError(f"{method}'s samples no longer follow its records one to one; export needs updating")
    return list(zip(kept, samples))


def trl_row(record: RationaleRecord, sample, method: str, fmt: str) -> dict:
    meta = {k: v for k, v in record.__dict__.items() if k != "rationale"}
    meta["choices"] = [list(c) for c in record.choices] if record.choices else None
    meta["method"] = method
    if fmt == "messages":
        return {
            "messages": [{"role": "user", "content": sample.user}, {"role": "assistant", "content": sample.response}],
            "metadata": meta,
        }
    return {"prompt": sample.user, "completion": sample.response, "metadata": meta}


def export_trl(records: list[RationaleRecord], out: Path, *, method: str = "std-cot", fmt: str = "messages") -> int:
    """Write the records `method` trains on as TRL `fmt` JSONL at `out` (replaced atomically)."""
    if fmt not in TRL_FORMATS:
        raise InteropError(f"--format must be one of {', '.join(TRL_FORMATS)}, not {fmt!r}")
    pairs = training_pairs(records, method)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            for record, sample in pairs:
                f.write(json.dumps(trl_row(record, sample, method, fmt), ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(pairs)


@dataclass
class Problem:
    line: int
    field: str | None
    message: str

    def describe(self, source: str) -> str:
        where = f"{source} line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


class ImportRejected(InteropError):
    """The file had problems; nothing was written. .problems lists every one."""

    def __init__(self, source: str, problems: list[Problem]):
        self.problems = problems
        more = (
            f" (and {len(problems) - 1} more problems; nothing was imported)"
            if len(problems) > 1
            else " (nothing was imported)"
        )
        super().__init__(problems[0].describe(source) + more)


META_STRINGS = ("id", "example_id", "dataset", "task", "question", "answer", "thought", "method")


@dataclass
class Turns:
    """The prompt and completion of a row, with the field each came from (for problem messages)."""

    prompt: str
    completion: str
    prompt_field: str
    completion_field: str


def _turns(row: dict) -> tuple[Turns | None, list[Problem]]:
    """The two turns of a messages / prompt-completion row (Problem lines are filled in later)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or len(msgs) != 2:
            return None, [Problem(0, "messages", "must be a list of 2 messages: user, then assistant")]
        problems = []
        for i, (msg, role) in enumerate(zip(msgs, ("user", "assistant"))):
            if not isinstance(msg, dict) or msg.get("role") != role:
                problems.append(Problem(0, f"messages[{i}].role", f"must be {role!r}"))
            elif not isinstance(msg.get("content"), str):
                problems.append(Problem(0, f"messages[{i}].content", "must be a string"))
        if problems:
            return None, problems
        return Turns(msgs[0]["content"], msgs[1]["content"], "messages[0].content", "messages[1].content"), []
    if "prompt" in row or "completion" in row:
        texts, problems = [], []
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            value = row.get(key)
            if (
                isinstance(value, list)
                and len(value) == 1
                and isinstance(value[0], dict)
                and value[0].get("role") == role
            ):  # TRL's conversational prompt-completion
                value = value[0].get("content")
            if not isinstance(value, str):
                problems.append(Problem(0, key, f"must be a string (or one {role} message)"))
            texts.append(value)
        return (None, problems) if problems else (Turns(*texts, "prompt", "completion"), [])
    return None, [Problem(0, None, "the row has neither 'messages' nor 'prompt' and 'completion'")]


def _metadata_problems(meta) -> list[Problem]:
    if not isinstance(meta, dict):
        return [Problem(0, "metadata", "must be an object with the record's fields (as export writes)")]
    problems = [
        Problem(0, f"metadata.{k}", "must be a non-empty string")
        for k in META_STRINGS
        if not isinstance(meta.get(k), str) or not meta[k].strip()
    ]
    if isinstance(meta.get("thought"), str) and meta["thought"] not in ("cot", "pot", "eot"):
        problems.append(Problem(0, "metadata.thought", "must be cot, pot or eot"))
    choices = meta.get("choices")
    if choices is not None and not (
        isinstance(choices, list)
        and all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in choices)
    ):
        problems.append(Problem(0, "metadata.choices", "must be null or a list of [label, text] pairs"))
    return problems


def import_trl(path: Path, out: str, *, verify: bool = True, progress=None) -> int:
    """Rebuild a rationale set `out` from a TRL file written by `export_trl` (or in its schema).

    Every line is checked before anything is written: the shape of the row, the metadata, that
    the prompt is exactly the method's training prompt for that record, unique ids, and (verify)
    that the rationale still gives the gold answer by the rule of its thought type (CoT text
    extraction, PoT run / EoT solve in the sandbox). Any problem: ImportRejected, nothing written.
    """
    from distill.methods import get
    from distill.rationales import verify as verify_rationale
    from distill.train import question_of, task_description_of

    if not NAME_RE.match(out) or out == "user":
        raise InteropError(f"--out takes a rationale set name (a-z, 0-9, _ and -), not {out!r}")
    target = rationale_dir(out) / "records.jsonl"
    if target.exists() and target.stat().st_size:
        raise InteropError(f"rationale set {out!r} already exists ({target}); choose another --out")
    source = str(path)
    records, problems, seen = [], [], {}
    try:
        lines = list(jsonlines.iter_lines(path))
    except (OSError, UnicodeDecodeError) as e:
        raise InteropError(f"{source}: cannot be read ({e})") from None
    if not lines:
        raise ImportRejected(source, [Problem(1, None, "the file has no rows")])
    for number, line in lines:
        found = _check_row(line, seen)
        problems += [Problem(number, p.field, p.message) for p in found[1]]
        if found[0] is not None:
            seen[found[0][0].id] = number
            records.append((number, *found[0]))
    checked = []
    for number, record, turns, method in records:
        prompt = turns.prompt
        try:
            expected = get(method).build_prompt(
                question_of(record), task_description=task_description_of(record), thought=record.thought
            )
        except NesyError as e:
            problems.append(Problem(number, "metadata.method", str(e)))
            continue
        if prompt != expected:
            at = next((i for i, (a, b) in enumerate(zip(prompt, expected)) if a != b), min(len(prompt), len(expected)))
            problems.append(
                Problem(
                    number,
                    turns.prompt_field,
                    f"is not {method}'s training prompt for this record "
                    f"(first difference at character {at}: {prompt[at : at + 30]!r} "
                    f"instead of {expected[at : at + 30]!r})",
                )
            )
            continue
        checked.append((number, record, turns))
    if verify:
        for number, record, turns in checked:
            answer_type = get_dataset(record.dataset).answer_type_for(record.task)
            verdict = verify_rationale(record.rationale, record.example(), record.thought, answer_type)
            if progress:
                progress()
            if not verdict.correct:
                problems.append(
                    Problem(
                        number,
                        turns.completion_field,
                        f"the {record.thought} rationale does not verify: "
                        f"it gives {verdict.extracted!r}, the gold answer is {record.answer!r}"
                        + (f" ({verdict.detail})" if verdict.detail else ""),
                    )
                )
            else:
                record.extracted = verdict.extracted
    if problems:
        raise ImportRejected(source, sorted(problems, key=lambda p: p.line))
    partial = target.with_name("records.jsonl.partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(record.to_json() + "\n" for _, record, _ in checked)
    os.replace(partial, target)  # all or nothing: the set appears complete or not at all
    return len(checked)


def _check_row(line: str, seen: dict[str, int]):
    """((record, turns, method) or None, problems) for one line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, [Problem(0, None, f"not valid JSON ({e.msg})")]
    if not isinstance(row, dict):
        return None, [Problem(0, None, "each line must be a JSON object")]
    turns, problems = _turns(row)
    meta = row.get("metadata")
    problems += _metadata_problems(meta)
    if problems:
        return None, problems
    if meta["id"] in seen:
        return None, [Problem(0, "metadata.id", f"{meta['id']!r} repeats line {seen[meta['id']]}")]
    if not turns.completion.strip():
        return None, [Problem(0, turns.completion_field, "the rationale is empty")]
    try:
        record = record_from_row(
            {**{k: v for k, v in meta.items() if k != "method"}, "rationale": turns.completion, "verified": True}
        )
    except (TypeError, ValueError) as e:
        return None, [Problem(0, "metadata", str(e))]
    try:
        get_dataset(record.dataset)
    except DatasetError as e:
        return None, [Problem(0, "metadata.dataset", str(e))]
    return (record, turns, meta["method"]), []
