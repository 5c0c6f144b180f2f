"""The dataset registry: bundled benchmarks, user-registered JSONL, and teacher rationale sets.

Bundled files live in data/<name>/<split>.jsonl.gz (row format: data/README.md). Each dataset knows
its answer type ("number" | "option" | "text", per task where tasks differ), the task description
used in prompts, and its splits.

Seeded splits. BBH, StrategyQA and user datasets ship as one file, so train/test are made here:
rows are grouped by task, each group is shuffled with `random.Random(f"{seed}:{task}")` and the
first `TEST_FRACTION` (30%, rounded up) becomes `test`, the rest `train`. The split depends only
on the seed and the row ids, so it is the same on every machine and for every caller.

User datasets: `register_dataset(name, path)` validates a JSONL file (question, answer, optional
choices, task), reports every bad line by number, copies it to $NESY_HOME/datasets/user/<name>.jsonl
and records it in $NESY_HOME/datasets/user/registry.json.

ARC labels the options of ~10% of its rows 1-4; they are mapped to A-D at load time.

Rationale sets (written by `nesy teach rationales`): $NESY_HOME/datasets/<name>/records.jsonl; a
name the workspace does not have falls back to the set shipped as data/rationales/<name>.jsonl.gz.
`nesy data export-rationales` / `import-rationales` convert a set to and from TRL's formats
(distill/interop.py).

Every JSONL file here is read by distill.jsonlines (lines end at \n, never at U+2028 / U+0085).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import typer

from distill import jsonlines
from kb.errors import NesyError
from kb.workspace import check_name, subdir

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED_RATIONALES = DATA_DIR / "rationales"  # verified sets made without a teacher (SOURCE.md there)
# Knowledge the tool itself distilled in a real run (bench/real_run_gsm8k.sh), so a new user sees a
# populated app; the app offers it on an empty KB.
STARTER_KB = DATA_DIR / "starter_kb.jsonl"
TEST_FRACTION = 0.3
DEFAULT_SEED = 0
AnswerType = Literal["number", "option", "text"]
ANSWER_TYPES: tuple[str, ...] = get_args(AnswerType)


class DatasetError(NesyError, ValueError):
    """A dataset name, split or user file is wrong; the message says where (line numbers)."""


@dataclass
class Example:
    id: str
    dataset: str
    question: str
    answer: str
    task: str
    choices: list[tuple[str, str]] | None = None
    rationale: str | None = None


@dataclass
class DatasetSpec:
    """One dataset: where its rows come from, its answer type(s) and its task descriptions.

    `answer_type` is the dataset's default; `task_answer_types` overrides it per task (BBH mixes
    option letters, numbers and free text; AGIEval `math` is free text).
    """

    name: str
    answer_type: str
    splits: tuple[str, ...]
    description: str
    read_rows: Callable[[str], list[dict]] = field(repr=False)
    task_descriptions: dict[str, str] = field(default_factory=dict, repr=False)
    task_answer_types: dict[str, str] = field(default_factory=dict, repr=False)
    licence: str = ""

    def task_description(self, task: str | None = None) -> str:
        return self.task_descriptions.get(task or "", self.description)

    def answer_type_for(self, task: str | None) -> str:
        return self.task_answer_types.get(task or "", self.answer_type)

    def tasks(self) -> list[str]:
        return sorted({row.get("task") or self.name for row in self.read_rows(self.splits[0])})

    def load(
        self, split: str, limit: int | None = None, seed: int = DEFAULT_SEED, task: str | None = None
    ) -> list[Example]:
        """The split's examples in file order; `limit` keeps a seeded random sample of that size."""
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r} (splits: {', '.join(self.splits)})")
        rows = self.read_rows(split)
        if task:
            rows = [r for r in rows if (r.get("task") or self.name) == task]
            if not rows:
                raise DatasetError(f"{self.name} has no task {task!r}")
        if limit is not None and limit < len(rows):
            keep = set(random.Random(seed).sample(range(len(rows)), limit))
            rows = [r for i, r in enumerate(rows) if i in keep]
        return [_example(self.name, r) for r in rows]


NUMERIC_LABELS = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}


def _example(dataset: str, row: dict) -> Example:
    choices = [(c["label"], c["text"]) for c in row["choices"]] if row.get("choices") else None
    answer = str(row["answer"])
    if choices and all(label in NUMERIC_LABELS for label, _ in choices):
        # ~10% of ARC rows label options 1-4; letters keep one answer format across datasets
        choices = [(NUMERIC_LABELS[label], text) for label, text in choices]
        answer = NUMERIC_LABELS.get(answer, answer)
    return Example(
        id=str(row["id"]),
        dataset=dataset,
        question=row["question"],
        answer=answer,
        task=row.get("task") or dataset,
        choices=choices,
        rationale=row.get("rationale"),
    )


def format_question(example: Example) -> str:
    """The question as a prompt shows it, with an options block when the example has choices.

    BBH questions already contain their `Options:` block, so it is not repeated.
    """
    question = example.question
    if not example.choices or "Options:" in question:
        return question
    options = " ".join(f"({label}) {text}" for label, text in example.choices)
    return f"{question}\nAnswer Choices: {options}"


# ---------------------------------------------------------------- bundled files


@lru_cache(maxsize=64)
def _read_jsonl_gz(path: Path) -> tuple[dict, ...]:
    return tuple(jsonlines.read_jsonl(path))


def _bundled(name: str, split: str) -> list[dict]:
    return list(_read_jsonl_gz(DATA_DIR / name / f"{split}.jsonl.gz"))


GSM8K_DEV = 300  # GSM8K ships train/test only; settings are chosen on these, never on test


def _gsm8k_rows(split: str) -> list[dict]:
    """`dev` is the last GSM8K_DEV training questions (file order); `train` stays the full file so
    shipped rationale sets keep their ids: trainings that tune on dev take questions before it
    (`nesy data subset-rationales --exclude-split dev`)."""
    if split == "dev":
        return _bundled("gsm8k", "train")[-GSM8K_DEV:]
    return _bundled("gsm8k", split)


def seeded_split(
    rows: list[dict], split: str, seed: int = DEFAULT_SEED, test_fraction: float = TEST_FRACTION
) -> list[dict]:
    """Per task: shuffle row ids with Random(f"{seed}:{task}"), first ceil(30%) -> test, rest train."""
    if split == "all":
        return rows
    by_task: dict[str, list[str]] = {}
    for row in rows:
        by_task.setdefault(row.get("task") or "", []).append(str(row["id"]))
    test_ids: set[str] = set()
    for task, ids in by_task.items():
        ids = sorted(ids)
        random.Random(f"{seed}:{task}").shuffle(ids)
        test_ids.update(ids[: math.ceil(len(ids) * test_fraction)])
    want_test = split == "test"
    return [r for r in rows if (str(r["id"]) in test_ids) == want_test]


def _bbh_rows(split: str) -> list[dict]:
    return seeded_split(_bundled("bbh", "test"), split)


def _strategyqa_rows(split: str) -> list[dict]:
    return seeded_split(_bundled("strategyqa", "test"), split)


def _agieval_rows(split: str) -> list[dict]:
    # Reading-comprehension tasks carry a passage; the question is meaningless without it.
    rows = []
    for row in _bundled("agieval", split):
        if row.get("passage"):
            row = {**row, "question": f"{row['passage']}\n{row['question']}"}
        rows.append(row)
    return rows


def _bbh_task_descriptions() -> dict[str, str]:
    rows = _read_jsonl_gz(DATA_DIR / "bbh" / "cot_prompts.jsonl.gz")
    return {r["task"]: r["prompt"].split("\n", 1)[0].removeprefix("Task description: ").strip() for r in rows}


BBH_NUMBER_TASKS = ("multistep_arithmetic_two", "object_counting")
BBH_TEXT_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "dyck_languages",
    "formal_fallacies",
    "navigate",
    "sports_understanding",
    "web_of_lies",
    "word_sorting",
)


def _builtin_specs() -> dict[str, DatasetSpec]:
    mc = "Answer the following multiple-choice question. Choose the correct option letter."
    bbh_types = {t: "number" for t in BBH_NUMBER_TASKS} | {t: "text" for t in BBH_TEXT_TASKS}
    specs = [
        DatasetSpec(
            "gsm8k",
            "number",
            ("train", "dev", "test"),
            "Solve the following grade-school math word problem.",
            _gsm8k_rows,
            licence="MIT",
        ),
        DatasetSpec(
            "bbh",
            "option",
            ("train", "test", "all"),
            "Answer the following BIG-Bench Hard question.",
            _bbh_rows,
            task_descriptions=_bbh_task_descriptions(),
            task_answer_types=bbh_types,
            licence="MIT (canary: keep out of training corpora)",
        ),
        DatasetSpec(
            "arc_easy",
            "option",
            ("train", "dev", "test"),
            "Answer the following grade-school science question. Choose the correct option letter.",
            lambda s: _bundled("arc_easy", s),
            licence="CC BY-SA 4.0",
        ),
        DatasetSpec(
            "arc_challenge",
            "option",
            ("train", "dev", "test"),
            "Answer the following grade-school science question. Choose the correct option letter.",
            lambda s: _bundled("arc_challenge", s),
            licence="CC BY-SA 4.0",
        ),
        DatasetSpec(
            "agieval",
            "option",
            ("test",),
            mc,
            _agieval_rows,
            task_descriptions={"math": "Solve the following competition math problem."},
            task_answer_types={"math": "text"},
            licence="MIT / Apache-2.0; logiqa-en CC BY-NC-SA 4.0",
        ),
        DatasetSpec(
            "commonsenseqa",
            "option",
            ("train", "dev"),
            "Answer the following commonsense question. Choose the correct option letter.",
            lambda s: _bundled("commonsenseqa", s),
            licence="MIT",
        ),
        DatasetSpec(
            "strategyqa",
            "text",
            ("train", "test", "all"),
            "Answer the following yes/no question that needs implicit multi-step reasoning. Answer Yes or No.",
            _strategyqa_rows,
            licence="Apache-2.0 (BIG-bench canary)",
        ),
    ]
    return {s.name: s for s in specs}


_BUILTIN: dict[str, DatasetSpec] = {}


def _builtins() -> dict[str, DatasetSpec]:
    if not _BUILTIN:
        _BUILTIN.update(_builtin_specs())
    return _BUILTIN


# ---------------------------------------------------------------- user datasets

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def user_dir() -> Path:
    return subdir("datasets", "user")


def _user_registry() -> dict[str, dict]:
    path = user_dir() / "registry.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def validate_user_rows(text: str) -> list[dict]:
    """Parse a user JSONL; raise DatasetError listing every bad line ("line 3: ...")."""
    rows, problems = [], []
    for number, line in enumerate(jsonlines.split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not valid JSON ({e.msg})")
            continue
        problem = _row_problem(row)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        rows.append(
            {
                "id": str(row.get("id", f"row-{number}")),
                "question": row["question"],
                "answer": str(row["answer"]),
                "task": row.get("task"),
                "choices": _normalise_choices(row.get("choices")),
            }
        )
    if not rows and not problems:
        problems.append("line 1: the file has no rows")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        problems.append("duplicate 'id' values")
    if problems:
        raise DatasetError("; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    return rows


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "each line must be a JSON object"
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return "'question' must be a non-empty string"
    if not isinstance(row.get("answer"), (str, int, float)) or str(row["answer"]).strip() == "":
        return "'answer' must be a non-empty string or number"
    if "task" in row and not isinstance(row["task"], str):
        return "'task' must be a string"
    choices = row.get("choices")
    if choices is not None:
        ok = (
            isinstance(choices, list)
            and choices
            and all(
                (isinstance(c, dict) and isinstance(c.get("label"), str) and isinstance(c.get("text"), str))
                or (isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c))
                for c in choices
            )
        )
        if not ok:
            return '\'choices\' must be a list of {"label", "text"} objects or [label, text] pairs'
        labels = [c["label"] if isinstance(c, dict) else c[0] for c in choices]
        if str(row["answer"]).strip("() ") not in labels:
            return f"'answer' {row['answer']!r} is not one of the choice labels {labels}"
    return None


def _normalise_choices(choices) -> list[dict] | None:
    if not choices:
        return None
    return [c if isinstance(c, dict) else {"label": c[0], "text": c[1]} for c in choices]


def _infer_answer_type(rows: list[dict]) -> str:
    if all(r["choices"] for r in rows):
        return "option"
    if all(re.fullmatch(r"-?[\d,]*\.?\d+", r["answer"].strip()) for r in rows):
        return "number"
    return "text"


def register_dataset(
    name: str, path: str | Path, answer_type: str | None = None, description: str | None = None
) -> DatasetSpec:
    """Validate a user JSONL, copy it into the workspace and remember it under `name`."""
    if not NAME_RE.match(name) or name in _builtins():
        raise DatasetError(f"invalid or reserved dataset name {name!r} (use a-z, 0-9, _ and -)")
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    rows = validate_user_rows(path.read_text(encoding="utf-8"))
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise DatasetError(f"answer type must be one of {ANSWER_TYPES}")
    target = user_dir() / f"{name}.jsonl"
    shutil.copyfile(path, target)
    registry = _user_registry()
    registry[name] = {
        "answer_type": answer_type or _infer_answer_type(rows),
        "rows": len(rows),
        "description": description or f"Answer the following {name} question.",
        "source": str(path.resolve()),
    }
    (user_dir() / "registry.json").write_text(json.dumps(registry, indent=2), encoding="utf-8")
    return get_dataset(name)


def _user_spec(name: str, meta: dict) -> DatasetSpec:
    def read_rows(split: str) -> list[dict]:
        text = (user_dir() / f"{name}.jsonl").read_text(encoding="utf-8")
        rows = validate_user_rows(text)
        return seeded_split(rows, split)

    return DatasetSpec(
        name, meta["answer_type"], ("all", "train", "test"), meta["description"], read_rows, licence="user"
    )


# ---------------------------------------------------------------- registry


def list_datasets() -> list[str]:
    return sorted(_builtins()) + sorted(_user_registry())


def get_dataset(name: str) -> DatasetSpec:
    if name in _builtins():
        return _builtins()[name]
    registry = _user_registry()
    if name in registry:
        return _user_spec(name, registry[name])
    raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(list_datasets())})")


# ---------------------------------------------------------------- rationale sets


@dataclass
class RationaleRecord:
    """One verified teacher rationale (a line of datasets/<name>/records.jsonl)."""

    id: str
    example_id: str
    dataset: str
    task: str
    question: str
    answer: str
    thought: str  # "cot" | "pot" | "eot"
    rationale: str
    extracted: str | None = None
    choices: list[tuple[str, str]] | None = None
    verified: bool = True
    teacher_model: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    def example(self) -> Example:
        return Example(
            self.example_id, self.dataset, self.question, self.answer, self.task, self.choices, self.rationale
        )


def rationale_dir(name: str) -> Path:
    if not NAME_RE.match(name) or name == "user":
        raise DatasetError(f"invalid rationale set name {name!r} (use a-z, 0-9, _ and -)")
    return subdir("datasets", name)


RATIONALE_SUFFIXES = (".jsonl", ".jsonl.gz")


def rationale_file(name: str) -> Path:
    """The file a rationale-set argument means (DatasetError when there is none):
    - a path (it holds a "/" or ends in .jsonl / .jsonl.gz): that file, or a folder's records.jsonl;
    - a set name: $NESY_HOME/datasets/<name>/records.jsonl, else the shipped
      data/rationales/<name>.jsonl.gz, else a folder <name>/ in the current directory."""
    if "/" in name or name.endswith(RATIONALE_SUFFIXES):
        path = Path(name)
        path = path / "records.jsonl" if path.is_dir() else path
        if not path.is_file():
            raise DatasetError(f"no rationale file {name} (expected a records.jsonl or a .jsonl.gz)")
        return path
    looked = []
    if NAME_RE.match(name) and name != "user":
        own = subdir("datasets") / name / "records.jsonl"  # not rationale_dir: it would create the folder
        shipped = SHIPPED_RATIONALES / f"{name}.jsonl.gz"
        for path in (own, shipped):
            if path.is_file():
                return path
        looked = [str(own), f"the shipped {shipped.relative_to(DATA_DIR.parent)}"]
    if (Path(name) / "records.jsonl").is_file():
        return Path(name) / "records.jsonl"
    if not looked:
        raise DatasetError(f"invalid rationale set name {name!r} (use a-z, 0-9, _ and -)")
    raise DatasetError(
        f"no rationale set {name!r} (looked for {' and '.join(looked)}; shipped sets: "
        f"{', '.join(shipped_rationale_sets()) or 'none'})"
    )


def load_rationales(name: str) -> list[RationaleRecord]:
    """A rationale set by name or path (see `rationale_file`); says so when the shipped copy is used."""
    path = rationale_file(name)
    if path.parent == SHIPPED_RATIONALES and "/" not in name:
        log.warning(
            "rationale set %r is not in the workspace; using the shipped %s", name, path.relative_to(DATA_DIR.parent)
        )
    return read_rationale_file(path)


def read_rationale_file(path: Path) -> list[RationaleRecord]:
    """Every record of a records.jsonl (or .jsonl.gz); DatasetError names the first bad line."""
    records = []
    try:
        for number, row in jsonlines.iter_jsonl(path):
            try:
                records.append(record_from_row(row))
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{path}: line {number}: {e}") from None
    except jsonlines.JSONLError as e:
        raise DatasetError(str(e)) from None
    return records


REQUIRED_RECORD_FIELDS = tuple(name for name, f in RationaleRecord.__dataclass_fields__.items() if f.default is MISSING)


def record_from_row(row) -> RationaleRecord:
    """A RationaleRecord from one parsed line (ValueError naming the missing fields)."""
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    missing = [k for k in REQUIRED_RECORD_FIELDS if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    row = {k: row[k] for k in RationaleRecord.__dataclass_fields__ if k in row}
    if row.get("choices"):
        row["choices"] = [tuple(c) for c in row["choices"]]
    return RationaleRecord(**row)


def list_rationale_sets() -> list[str]:
    """The rationale sets in the workspace."""
    root = subdir("datasets")
    return sorted(p.parent.name for p in root.glob("*/records.jsonl"))


def shipped_rationale_sets() -> list[str]:
    """The sets shipped in data/rationales/, usable by name when the workspace has none so named."""
    return sorted(p.name.removesuffix(".jsonl.gz") for p in SHIPPED_RATIONALES.glob("*.jsonl.gz"))


# ---------------------------------------------------------------- CLI: nesy data ...

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="List datasets, show examples, register your own JSONL; export / import rationale sets in TRL's formats.",
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@cli.command("list")
def list_cmd() -> None:
    """Every dataset with its answer type and splits, then the rationale sets."""
    for name in list_datasets():
        spec = get_dataset(name)
        typer.echo(f"{name:15} {spec.answer_type:7} splits={','.join(spec.splits):18} {spec.licence}")
    own = list_rationale_sets()
    for name in own:
        typer.echo(f"{name:15} rationales  {rationale_dir(name) / 'records.jsonl'}")
    for name in shipped_rationale_sets():
        if name not in own:
            typer.echo(f"{name:15} rationales  {SHIPPED_RATIONALES / (name + '.jsonl.gz')} (shipped)")


@cli.command("show")
def show_cmd(
    name: str,
    split: str = typer.Option(None, help="default: the first split"),
    limit: int = typer.Option(3, help="how many examples"),
    task: str = typer.Option(None, help="only this task"),
) -> None:
    """Print a few examples of a dataset split as the prompts see them."""
    try:
        spec = get_dataset(name)
        examples = spec.load(split or spec.splits[0], limit=limit, task=task)
    except DatasetError as e:
        _fail(str(e))
    for ex in examples:
        typer.echo(f"--- {ex.id} [{ex.task}, {spec.answer_type_for(ex.task)}]")
        typer.echo(format_question(ex))
        typer.echo(f"answer: {ex.answer}")


@cli.command("register")
def register_cmd(
    name: str,
    path: Path,
    answer_type: str = typer.Option(None, help="number|option|text (default: inferred)"),
    description: str = typer.Option(None, help="task description used in prompts"),
) -> None:
    """Register a JSONL file (question, answer, optional choices, task) as a dataset."""
    try:
        spec = register_dataset(name, path, answer_type, description)
    except DatasetError as e:
        _fail(str(e))
    rows = len(spec.load("all"))
    typer.echo(f"registered {name}: {rows} rows, answer type {spec.answer_type}")


def subset_rationales(
    source: str,
    out: str,
    *,
    limit: int | None = None,
    same_questions_as: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> int:
    """Write a new set with the records of `source` whose question is in every `same_questions_as`
    set and in no excluded split (`dataset:split`), the first `limit` questions in `source` order.
    Experiments use it to train every method on the same questions; records keep their provenance."""
    records = load_rationales(source)
    keep = {r.example_id for r in records}
    for other in same_questions_as:
        keep &= {r.example_id for r in load_rationales(other)}
    for ref in exclude:
        dataset, _, split = ref.partition(":")
        keep -= {ex.id for ex in get_dataset(dataset).load(split)}
    chosen = [i for i in dict.fromkeys(r.example_id for r in records) if i in keep]  # source order
    chosen_set = set(chosen[:limit] if limit else chosen)
    subset = [r for r in records if r.example_id in chosen_set]
    if not subset:
        raise DatasetError(f"subset of {source!r} is empty")
    target = rationale_dir(out) / "records.jsonl"
    partial = target.with_name("records.jsonl.partial")
    partial.write_text("".join(r.to_json() + "\n" for r in subset), encoding="utf-8")
    os.replace(partial, target)
    return len(subset)


@cli.command("subset-rationales")
def subset_rationales_cmd(
    source: str = typer.Argument(..., help="rationale set name (or a records.jsonl / .jsonl.gz path)"),
    out: str = typer.Option(..., "--out", help="the new set's name (a name, not a path)"),
    limit: int = typer.Option(None, help="keep the first N questions (in the source's order)"),
    same_questions_as: str = typer.Option("", help="comma list of sets: keep only questions every one has"),
    exclude_split: str = typer.Option(
        "", help="comma list of dataset:split whose questions are dropped, e.g. gsm8k:dev,gsm8k:test"
    ),
) -> None:
    """A subset of a rationale set: the same questions as other sets, none from a held-out split."""
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    count = subset_rationales(
        source,
        check_name(out, "--out"),
        limit=limit,
        same_questions_as=split(same_questions_as),
        exclude=split(exclude_split),
    )
    typer.echo(f"kept {count} records -> {rationale_dir(out) / 'records.jsonl'}")


@cli.command("export-rationales")
def export_rationales_cmd(
    name: str = typer.Argument(..., help="rationale set name (or a records.jsonl / .jsonl.gz path)"),
    out: Path = typer.Argument(..., help="the JSONL file to write (replaced if it exists)"),
    fmt: str = typer.Option(
        "messages",
        "--format",
        help="messages (TRL conversational: the chat template applies) | "
        "prompt-completion (TRL standard: prompt + completion = --template plain)",
    ),
    method: str = typer.Option("std-cot", help="whose training prompt: std-cot | etd | eotd"),
) -> None:
    """Write a verified rationale set as the training data of a method in TRL's dataset format,
    loadable with datasets.load_dataset("json", data_files=OUT)."""
    from distill.interop import export_trl
    from distill.train import load_records

    count = export_trl(load_records(name), out, method=method, fmt=fmt)  # errors: NesyError, one line
    typer.echo(f"exported {count} {method} samples ({fmt}) -> {out}")


@cli.command("import-rationales")
def import_rationales_cmd(
    path: Path = typer.Argument(..., help="a JSONL file in the export's schema (messages or prompt-completion)"),
    out: str = typer.Option(..., "--out", help="the new rationale set's name (a name, not a path)"),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="check every rationale against its gold answer again (CoT extraction, "
        "PoT/EoT in the sandbox: ~40 ms per EoT record)",
    ),
) -> None:
    """Import a TRL-format rationale file as a rationale set: every line is checked first (shape,
    metadata, the method's exact prompt, ids, verification); any problem imports nothing."""
    from distill.interop import import_trl
    from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested

    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    total = sum(1 for _ in jsonlines.iter_lines(path))

    def step(bar: Progress) -> None:
        bar.update(1)
        bar.check_stop()

    try:
        with Progress(total if verify else 0, desc=f"verify {path.name}", unit="rec", stage="import") as bar:
            count = import_trl(path, out, verify=verify, progress=lambda: step(bar))
    except StopRequested:
        typer.echo("stopped; nothing was imported", err=True)
        raise typer.Exit(STOPPED_EXIT_CODE) from None
    typer.echo(f"imported {count} records -> {rationale_dir(out) / 'records.jsonl'}")
