"""`nesy teach`: the teacher jobs' command line — rationales, knowledge, and the local server.

The work is done elsewhere; this module turns options into calls and results into one line:
- `nesy teach rationales` -> distill/rationales.py (verified CoT / PoT / EoT rationale sets;
  `--teacher gold` and `--teacher annotations` make them without a teacher);
- `nesy teach knowledge` -> distill/knowledge.py (NesyCD error analyses, SKIntern per-example
  knowledge, as pending KB entries);
- `nesy teach server` -> distill/llama_server.py (show or stop the shared local llama.cpp teacher);
- `--batch NAME` on rationales / knowledge, `nesy teach batch status|import NAME` ->
  distill/batch.py (the OpenAI Batch API: the requests not in the cache are submitted as one
  batch instead of being sent, its answers imported into the cache, the command run again).

The teacher is chosen by `--teacher` (`local` or an OpenAI-compatible base URL) and `--model`
(distill.teacher.make_client). Every finished call is cached, so a stopped job (SIGTERM/SIGINT:
within a few seconds at any moment, exit 3) run again repeats none. Progress (done/total, rate,
ETA, tokens) goes to tqdm and the job's metrics.jsonl. `--out` is a name (never a path) under
$NESY_HOME, checked before anything is created or started; the run folders are not deleted by a
re-run, only their raw.jsonl / records.jsonl are rewritten. Bad input is one line `error: …`,
exit 2.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from distill.batch import BatchCollector, batch_dir, import_batch, status, status_line, submit
from distill.data import get_dataset, rationale_dir
from distill.knowledge import (
    ERROR_KIND,
    EXAMPLE_KIND,
    KNOWLEDGE_ATTEMPTS,
    KNOWLEDGE_MAX_TOKENS,
    KNOWLEDGE_TEMPERATURE,
    distil_knowledge,
    example_cases,
    knowledge_dir,
    read_error_cases,
    refuse_test_questions,
    set_examples,
)
from distill.llama_server import ServerOptions, server_state, stop_local_teacher
from distill.progress import STOPPED_EXIT_CODE, StopRequested, install_stop_handler
from distill.rationales import GOLD_TEACHER, THOUGHTS, generate_rationales, gold_rationales
from distill.teacher import LocalServerChoice, TeacherCache, TeacherClient, make_client
from kb.errors import NesyError
from kb.workspace import check_name, named_path

ANNOTATIONS_TEACHER = "annotations"  # --teacher annotations: distill/annotations.py, no teacher calls


def _fail(message: str) -> None:
    """The CLI's one-line error (exit 2)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _one_line_errors(prefix: str = ""):
    """A domain error (NesyError) raised inside becomes the CLI's one-line error."""
    try:
        yield
    except NesyError as e:
        _fail(f"{prefix}{e}")


def _run_name(text: str, fallback: str = "errors") -> str:
    """A plain run name made from a file or set name (the default --out of `teach knowledge`)."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text))
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", name[:100]) or fallback


def _check_out(out: str | None, area: str) -> None:
    """--out must be a plain name, checked before anything is created, written or started."""
    if out is not None:
        with _one_line_errors():
            named_path(area, check_name(out, "--out"), "--out")


cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Teacher jobs: verified rationales (CoT/PoT/EoT) and KB knowledge.",
)


TEACHER_HELP = (
    "'local' (the packaged llama.cpp teacher), the base URL of an OpenAI-compatible server, "
    "'gold' (rationales only: the dataset's own human-written CoT, no teacher calls) or "
    "'annotations' (GSM8K: PoT programs / EoT systems built from the calculator annotations, "
    "each verified in the sandbox; one set per thought, named <out>-<thought>)"
)
MODEL_HELP = "local: a GGUF path or packaged teacher name; URL: the model name"
KEY_ENV_HELP = (
    "environment variable holding the API key (never written anywhere; '' sends no key). "
    "The app offers only the variables declared in $NESY_TEACHER_KEY_ENVS"
)
TIMEOUT_HELP = "total seconds of one request attempt (connect + send + read), then a retry"
CONCURRENCY_HELP = "requests in flight (the local teacher: at most one per slot, see --slots)"
SLOTS_HELP = (
    "local teacher: requests decoded together, each slot with its own prompt cache "
    "(on 2 CPU cores two slots were no faster than one: decoding is compute-bound there)"
)
PROMPT_CACHE_HELP = (
    "local teacher: reuse the computed prefix (instruction + demonstrations) of "
    "the previous call instead of reading it again"
)
FROM_SET_HELP = (
    "SKIntern: knowledge for every question of this rationale set, from the question and "
    "its gold answer (a set name as `nesy train --data` takes it: the workspace's set, "
    "else a shipped one)"
)
ATTEMPTS_HELP = (
    "calls per question at most: a malformed answer (not stored) is asked again as a new "
    "sample, each one cached; at temperature 0 one call"
)
DRAFT_HELP = (
    "local teacher: speculative decoding with the packaged Qwen2.5-Coder-0.5B as draft "
    "(the greedy output, up to floating-point near-ties). It pays where decoding waits on "
    "memory (many cores, a GPU); on 2 CPU cores it was slower, so it is off by default"
)
BATCH_HELP = (
    "OpenAI Batch API: no live call; every request not in the teacher cache is submitted as one batch "
    "recorded under this name (not a path); then `nesy teach batch status NAME`, `nesy teach batch "
    "import NAME` and this command again without --batch"
)


def _until_stopped(job):
    """Run a teacher job; a stop request exits with STOPPED_EXIT_CODE and says how to continue,
    a domain error (a bad teacher choice, …) is the one-line error.

    The stop handler is installed first, so SIGTERM/SIGINT stop the job at any moment (while the
    local server starts, a call hangs or a retry backs off), not only between results."""
    install_stop_handler()
    try:
        with _one_line_errors():
            return job()
    except StopRequested:
        typer.echo("stopped; run the same command again to continue (finished calls are cached)")
        raise typer.Exit(STOPPED_EXIT_CODE) from None


def _check_batch(batch: str | None, teacher: str) -> None:
    """--batch takes a plain name and a teacher URL, checked before anything is created or started."""
    if batch is None:
        return
    with _one_line_errors():
        batch_dir(batch)
    if teacher in ("local", GOLD_TEACHER, ANNOTATIONS_TEACHER):
        _fail("--batch needs the base URL of a server with the OpenAI Batch API as --teacher")


@dataclass(frozen=True)
class TeacherChoice:
    """Which teacher answers and how it is called: the options every teacher job shares."""

    teacher: str
    model: str | None
    api_key_env: str
    concurrency: int
    timeout: float
    max_retries: int
    slots: int
    prompt_cache: bool
    draft: bool
    batch: str | None

    def client(self, temperature: float, max_tokens: int) -> TeacherClient:
        """make_client(...), or with --batch a client that queues what the cache cannot answer."""
        server = LocalServerChoice(self.slots, self.prompt_cache, self.draft)
        client = make_client(
            self.teacher,
            self.model,
            self.api_key_env,
            self.concurrency,
            temperature,
            max_tokens,
            self.timeout,
            self.max_retries,
            server,
        )
        return client if self.batch is None else BatchCollector(client.config, client.cache)


TEACHER_OPTIONS = {  # TeacherChoice's fields as `nesy teach` options, declared once
    "teacher": (str, typer.Option("local", help=TEACHER_HELP)),
    "model": (str, typer.Option(None, help=MODEL_HELP)),
    "api_key_env": (str, typer.Option("OPENAI_API_KEY", help=KEY_ENV_HELP)),
    "concurrency": (int, typer.Option(4, help=CONCURRENCY_HELP)),
    "timeout": (float, typer.Option(600.0, help=TIMEOUT_HELP)),
    "max_retries": (int, typer.Option(5, help="retries on 429/5xx/timeouts, with exponential backoff")),
    "slots": (int, typer.Option(ServerOptions.n_parallel, help=SLOTS_HELP)),
    "prompt_cache": (bool, typer.Option(True, "--prompt-cache/--no-prompt-cache", help=PROMPT_CACHE_HELP)),
    "draft": (bool, typer.Option(False, "--draft/--no-draft", help=DRAFT_HELP)),
    "batch": (str, typer.Option(None, "--batch", help=BATCH_HELP)),
}


def with_teacher_options(command):
    """The command's own options followed by TEACHER_OPTIONS; it receives the latter as one
    `choice: TeacherChoice` (typer reads the signature set here)."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "choice"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
        for name, (kind, option) in TEACHER_OPTIONS.items()
    ]

    @functools.wraps(command)
    def run(**options):
        choice = TeacherChoice(**{name: options.pop(name) for name in TEACHER_OPTIONS})
        return command(choice=choice, **options)

    run.__signature__ = inspect.signature(command).replace(parameters=own + shared)
    return run


def _submitted(client: TeacherClient, batch: str | None) -> bool:
    """--batch: submit what the job queued and say what comes next (True); False when nothing was
    queued (every answer came from the cache: the job's own summary says what it made)."""
    if batch is None:
        return False
    if not client.queued:
        typer.echo(f"batch {batch}: nothing to submit, every answer is in the teacher cache")
        return False
    record = _until_stopped(lambda: submit(client, batch))
    typer.echo(
        f"batch {batch} ({record['batch_id']}): submitted {record['requests']} requests "
        f"({client.usage.cached} answered from the cache); next `nesy teach batch status {batch}`, "
        f"then `nesy teach batch import {batch}` (or with --wait SECONDS), then this command again "
        f"without --batch"
    )
    return True


def _thoughts(text: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    if not chosen or any(t not in THOUGHTS for t in chosen):
        _fail(f"--thoughts must be a comma-separated subset of {','.join(THOUGHTS)}")
    return chosen


@cli.command("rationales")
@with_teacher_options
def rationales_cmd(
    dataset: str = typer.Option(..., help="dataset name (nesy data list)"),
    split: str = typer.Option("train"),
    limit: int = typer.Option(None, help="a seeded sample of this many questions"),
    seed: int = typer.Option(0),
    thoughts: str = typer.Option("cot", help="comma-separated: cot,pot,eot"),
    n_samples: int = typer.Option(1, help="samples per question and thought type"),
    temperature: float = typer.Option(0.0, help="0 for one greedy sample; >0 with --n-samples > 1"),
    max_tokens: int = typer.Option(512),
    out: str = typer.Option(
        None, help="rationale set name, not a path: $NESY_HOME/datasets/<out> (default: <dataset>-<split>)"
    ),
    choice: TeacherChoice = None,
) -> None:
    """Generate CoT/PoT/EoT rationales, verify each against the gold answer, keep the verified."""
    _check_out(out, "datasets")
    _check_batch(choice.batch, choice.teacher)
    chosen = _thoughts(thoughts)
    if n_samples < 1 or choice.concurrency < 1:
        _fail("--n-samples and --concurrency must be at least 1")
    with _one_line_errors():
        spec = get_dataset(dataset)
        if any(t in ("pot", "eot") for t in chosen) and spec.answer_type != "number":
            _fail(f"PoT/EoT need numeric answers; {dataset} answers are {spec.answer_type}")
        examples = spec.load(split, limit=limit, seed=seed)
        name = out or f"{dataset}-{split}"
        named_path("datasets", name, "--out")
    with _one_line_errors("--out: "):
        rationale_dir(name)
    if choice.teacher == GOLD_TEACHER:
        _gold(examples, chosen, name, f"{dataset} {split}")
    elif choice.teacher == ANNOTATIONS_TEACHER:
        _annotations(examples, chosen, name)
    else:

        def job():
            client = choice.client(temperature, max_tokens)
            return client, generate_rationales(client, examples, chosen, n_samples, name)

        client, summary = _until_stopped(job)
        if _submitted(client, choice.batch):
            return
        typer.echo(
            f"kept {summary.kept} verified of {summary.calls} samples {summary.by_thought} -> "
            f"{summary.out}; failed calls {summary.failed_calls}; usage {summary.usage}"
        )
        if summary.calls and summary.failed_calls == summary.calls:
            _fail(f"every teacher call failed (see {summary.out.parent / 'raw.jsonl'})")


def _gold(examples, chosen: list[str], name: str, source: str) -> None:
    if chosen != ["cot"]:
        _fail("--teacher gold gives CoT rationales only (use --thoughts cot)")
    summary = gold_rationales(examples, name)
    if not summary.kept:
        _fail(f"{source} has no rationales to use with --teacher gold")
    typer.echo(f"kept {summary.kept} verified of {summary.calls} gold rationales -> {summary.out}")


def _annotations(examples, chosen: list[str], name: str) -> None:
    from distill import annotations

    if any(t not in annotations.THOUGHTS for t in chosen):
        _fail("--teacher annotations gives pot,eot; CoT from the same rationales is --teacher gold")
    for thought in chosen:  # one set per thought: sources and thoughts never mix
        summary = _until_stopped(
            lambda thought=thought: annotations.annotation_rationales(
                examples, thought, annotations.default_name(thought, name)
            )
        )
        typer.echo(summary.line())


@cli.command("knowledge")
@with_teacher_options
def knowledge_cmd(
    errors: Path = typer.Option(None, help="student error JSONL (NesyCD error analysis)"),
    dataset: str = typer.Option(None, help="with --with-answer: training examples (SKIntern)"),
    from_set: str = typer.Option(None, "--from-set", help=FROM_SET_HELP),
    split: str = typer.Option("train", help="with --dataset (never test: knowledge is for training)"),
    limit: int = typer.Option(
        None,
        help="--dataset: a seeded sample of this many questions; "
        "--from-set: its first N questions (as nesy train --limit)",
    ),
    seed: int = typer.Option(0, help="the seed of --dataset's --limit sample"),
    with_answer: bool = typer.Option(False, help="SKIntern: knowledge from question + gold answer"),
    auto_accept: bool = typer.Option(False, help="store entries as accepted instead of pending"),
    max_tokens: int = typer.Option(KNOWLEDGE_MAX_TOKENS, help="room for the teacher's analysis"),
    temperature: float = typer.Option(KNOWLEDGE_TEMPERATURE, help="the reference samples at 0.8"),
    attempts: int = typer.Option(KNOWLEDGE_ATTEMPTS, help=ATTEMPTS_HELP),
    out: str = typer.Option(
        None, help="name (not a path) of the run folder for raw teacher I/O, $NESY_HOME/teach/knowledge/<out>"
    ),
    choice: TeacherChoice = None,
) -> None:
    """Distil knowledge into pending KB entries (from student errors, or training questions + answers)."""
    _check_out(out, "teach/knowledge")
    _check_batch(choice.batch, choice.teacher)
    _check_knowledge_source(errors, dataset, from_set, with_answer, split)
    if attempts < 1:
        _fail("--attempts must be at least 1")
    with _one_line_errors():
        kind, cases, default_name = _knowledge_cases(errors, dataset, from_set, split, limit, seed)
        refuse_test_questions(cases)
        name = out or default_name
        knowledge_dir(name)

    def job():
        client = choice.client(temperature, max_tokens)
        return client, distil_knowledge(client, cases, kind, name, auto_accept, attempts)

    client, summary = _until_stopped(job)
    if _submitted(client, choice.batch):
        return
    typer.echo(
        f"{summary.created} entries ({'accepted' if auto_accept else 'pending'}) from "
        f"{summary.cases} cases; malformed {summary.malformed} (not stored); asked again "
        f"{summary.asked_again}; kept curated {summary.skipped_existing}; failed calls "
        f"{summary.failed_calls}; quality flags {summary.flags_line()}; raw {summary.raw}; "
        f"usage {summary.usage}"
    )
    if summary.cases and summary.failed_calls == summary.cases:
        _fail(f"every teacher call failed (see {summary.raw})")


def _check_knowledge_source(errors, dataset, from_set, with_answer: bool, split: str) -> None:
    """Exactly one source of cases, with the options that go with it."""
    given = [
        flag
        for flag, value in (("--errors", errors), ("--dataset", dataset), ("--from-set", from_set))
        if value is not None
    ]
    if len(given) != 1:
        _fail(
            "give exactly one source: --errors FILE (NesyCD), --dataset NAME --with-answer or "
            "--from-set NAME (SKIntern)" + (f"; not {' and '.join(given)} together" if given else "")
        )
    if dataset is not None and not with_answer:
        _fail("--dataset needs --with-answer (SKIntern knowledge from question + gold answer)")
    if from_set is not None and split != "train":
        _fail("--split goes with --dataset; --from-set takes every question of the set")


def _knowledge_cases(errors, dataset, from_set, split, limit, seed) -> tuple[str, list[dict], str]:
    """(kind, cases, the default --out) of the one source given."""
    if errors is not None:
        return ERROR_KIND, _error_cases(errors), _run_name(errors.stem)
    if dataset is not None:
        examples = get_dataset(dataset).load(split, limit=limit, seed=seed)
        return EXAMPLE_KIND, example_cases(examples), f"{dataset}-{split}"
    return EXAMPLE_KIND, example_cases(set_examples(from_set, limit)), _run_name(from_set, "knowledge")


def _error_cases(path: Path) -> list[dict]:
    if not path.is_file():
        _fail(f"no such file: {path}")
    return read_error_cases(path)


@cli.command("server")
def server_cmd(stop: bool = typer.Option(False, "--stop", help="stop the shared local teacher")) -> None:
    """Show (or stop) the shared local llama.cpp teacher server."""
    if stop:
        typer.echo("stopped" if stop_local_teacher() else "no local teacher was running")
        return
    state = server_state()
    typer.echo(json.dumps(state) if state else "no local teacher recorded")


def _command_group(name: str, help: str) -> typer.Typer:
    """A `nesy teach NAME …` group of subcommands."""
    group = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, help=help)
    cli.add_typer(group, name=name)
    return group


cache_cli = _command_group(
    "cache",
    "The teacher cache ($NESY_HOME/cache/teacher.sqlite) as a JSONL file: carry finished teacher answers to "
    "another machine or workspace, so a job continued there repeats no call.",
)


@cache_cli.command("export")
def cache_export_cmd(file: Path = typer.Argument(..., help="the JSONL file to write (replaced)")) -> None:
    """Write every cached teacher answer to FILE."""
    try:
        n = TeacherCache().export(file)
    except OSError as e:
        _fail(f"cannot write {file}: {e.strerror}")
    typer.echo(f"exported {n} teacher answers -> {file}")


@cache_cli.command("import")
def cache_import_cmd(file: Path = typer.Argument(..., help="a file written by `nesy teach cache export`")) -> None:
    """Add the answers of FILE to the teacher cache (those already there are kept). A bad line
    stops the import with its line and field named; nothing is added then."""
    if not file.is_file():
        _fail(f"no such file: {file}")
    with _one_line_errors():
        try:
            added, already = TeacherCache().import_file(file)
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"{file} cannot be read as UTF-8 JSONL ({e})")
    typer.echo(f"imported {added} teacher answers from {file} ({already} already cached)")


batch_cli = _command_group(
    "batch",
    "Teacher batches submitted with --batch NAME (OpenAI Batch API): their status, and their answers "
    "imported into the teacher cache.",
)


@batch_cli.command("status")
def batch_status_cmd(name: str = typer.Argument(..., help="the name given to --batch")) -> None:
    """The batch's status and request counts, as the server reports them."""
    with _one_line_errors():
        record, batch = status(name)
    typer.echo(status_line(record, batch))


@batch_cli.command("import")
def batch_import_cmd(
    name: str = typer.Argument(..., help="the name given to --batch"),
    wait: float = typer.Option(
        None, "--wait", help="seconds to keep polling (5 s apart at first, doubling up to 60 s) for the batch to end"
    ),
) -> None:
    """Put the answers of an ended batch into the teacher cache; failed lines are counted, never
    cached. Importing again changes nothing."""
    summary = _until_stopped(lambda: import_batch(name, wait))
    typer.echo(summary.line(name))
    if summary.failed and not summary.imported + summary.already:
        _fail(f"every line of batch {name} failed (see {summary.folder})")
