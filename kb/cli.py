"""`nesy kb ...`: browse, edit, search, import and export the knowledge base from a shell.

Bad input ends with one line `error: ...` on stderr and exit code 2, never a traceback.
Nothing heavy is imported at module level: search/similar/reindex load torch when they run.
"""

from __future__ import annotations

import functools
import getpass
import json
import math
import os
import sys
from pathlib import Path

import typer

from kb.quality import CHECKS
from kb.schema import FLAG_CODE, STATUSES, EntryInvalid
from kb.store import ConflictError, EntryNotFound, KBLocked, KBStore

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Browse, edit, search, import and export the knowledge base.",
)

USER_ERRORS = (ValueError, KeyError, ConflictError, EntryInvalid, KBLocked, OSError)


def _user() -> str:
    try:
        return os.environ.get("NESY_USER") or getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "cli"


def _friendly(command):
    """Turn expected failures into `error: ...` + exit 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from kb.jsonl import ImportRejected

        try:
            return command(*args, **kwargs)
        except (ImportRejected, *USER_ERRORS) as e:
            typer.echo(f"error: {_one_line(e)}", err=True)
            raise typer.Exit(2) from None

    return run


def _one_line(error: Exception) -> str:
    plain_key_error = isinstance(error, KeyError) and not isinstance(error, EntryNotFound)
    text = str(error.args[0]) if plain_key_error and error.args else str(error)
    return " ".join(text.split())


def _row(*cells: str) -> str:
    """One tab-separated output line; a tab or line break inside a cell (a title, a task, a
    name) is escaped, so no value can forge a column or an extra row."""
    return "\t".join(
        cell
        if cell.isprintable()
        else "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cell)
        for cell in cells
    )


def _check_status(status: str | None) -> None:
    if status and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)} (got {status!r})")


@cli.command("import")
@_friendly
def import_(
    path: Path = typer.Argument(..., help="JSONL file, one entry per line."),
    on_duplicate: str = typer.Option("fail", help="Ids already present: fail | skip | overwrite."),
    max_mb: float = typer.Option(50.0, help="Refuse files larger than this (MB)."),
    by: str = typer.Option(None, help="Name recorded in the revisions (default: $USER)."),
):
    """Validate the whole file, then import all of it or nothing."""
    from kb.jsonl import import_jsonl

    if not (math.isfinite(max_mb) and max_mb > 0):
        raise ValueError(f"--max-mb must be a positive number of megabytes (got {max_mb})")
    report = import_jsonl(KBStore(), path, on_duplicate=on_duplicate, by=by or _user(), max_bytes=int(max_mb * 1e6))
    if report.warnings:
        typer.echo(f"warning: {_one_line(report.first_warning())}", err=True)
    typer.echo(report.summary())


@cli.command("export")
@_friendly
def export(
    out: str = typer.Argument("-", help="Output file, or - for stdout."),
    status: str | None = typer.Option(None, help="Only this status (e.g. accepted)."),
    task: str | None = typer.Option(None, help="Only this task."),
):
    """Write entries as canonical JSONL (id order; byte-stable across export/import)."""
    from kb.jsonl import export_jsonl

    _check_status(status)
    if out == "-":
        sys.stdout.reconfigure(encoding="utf-8")  # entries are UTF-8 whatever the locale says
    target = sys.stdout if out == "-" else Path(out)
    count = export_jsonl(KBStore(), target, status=status, task=task)
    if out != "-":
        typer.echo(f"exported {count} entries to {out}")


FLAG_HELP = (
    f"Only entries with this quality flag ({', '.join(CHECKS)}; repeatable: any of "
    "them), 'any' for entries with a flag, 'none' for entries without."
)


@cli.command("list")
@_friendly
def list_(
    status: str | None = typer.Option(None),
    task: str | None = typer.Option(None),
    concept: str | None = typer.Option(None),
    flag: list[str] = typer.Option([], help=FLAG_HELP),
    text: str | None = typer.Option(None, help="Words that must all occur."),
    sort: str = typer.Option("updated_at"),
    ascending: bool = typer.Option(False, "--asc"),
    limit: int = typer.Option(50),
    offset: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Canonical JSONL lines."),
):
    """List entries with filters, sorted and paged. Columns: id, status, task, version, quality
    flags (comma-separated codes, - for none), title."""
    from kb.jsonl import dumps_entry

    _check_status(status)
    page = KBStore().query(
        status=status,
        task=task,
        concept=concept,
        text=text,
        sort=sort,
        descending=not ascending,
        offset=offset,
        limit=limit,
        **_flag_filter(flag),
    )
    for entry in page.entries:
        typer.echo(
            dumps_entry(entry)
            if as_json
            else _row(
                entry.id,
                entry.status,
                entry.task,
                f"v{entry.version}",
                ",".join(f.code for f in entry.flags) or "-",
                entry.title or "",
            )
        )
    if not as_json:
        typer.echo(f"-- {len(page.entries)} of {page.total} (offset {offset})", err=True)


def _flag_filter(names: list[str]) -> dict:
    """--flag values as KBStore.query arguments: codes, or 'any' / 'none' on their own."""
    if not names:
        return {}
    special = [n for n in names if n in ("any", "none")]
    if special and len(names) > 1:
        raise ValueError("--flag any / none cannot be combined with other --flag values")
    if special:
        return {"flagged": special[0] == "any"}
    for name in names:  # a mistyped code is an error, not an empty list
        if not FLAG_CODE.fullmatch(name):
            raise ValueError(f"--flag {name!r} is not a flag code (snake_case, like generic)")
    return {"flag": names}


@cli.command()
@_friendly
def check(
    status: str | None = typer.Option(None, help="Only entries with this status."),
    task: str | None = typer.Option(None, help="Only entries of this task."),
    checks: str = typer.Option(
        ",".join(CHECKS), help="Comma-separated checks to run; the flags of the others are kept as they are."
    ),
    by: str = typer.Option("nesy-quality", help="Name recorded in the revisions."),
):
    """Recompute the quality flags of existing entries (kb/quality.py); each entry whose flags
    change gets a revision. 'generic' compares with every entry of the KB and loads the
    embedder; an entry edited meanwhile is skipped."""
    from kb.quality import check_store

    _check_status(status)
    names = [c.strip() for c in checks.split(",") if c.strip()]
    report = check_store(KBStore(), status=status, task=task, checks=names, by=by)
    typer.echo(report.line())


@cli.command()
@_friendly
def show(entry_id: str, as_json: bool = typer.Option(False, "--json")):
    """Show one entry."""
    from kb.jsonl import dumps_entry

    entry = KBStore().get(entry_id)
    if as_json:
        typer.echo(dumps_entry(entry))
        return
    for name, value in entry.model_dump(exclude_none=True).items():
        typer.echo(f"{name}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")


@cli.command()
@_friendly
def search(
    query: str,
    k: int = typer.Option(5),
    status: list[str] = typer.Option(["accepted"], help="Statuses to include (repeatable)."),
    all_statuses: bool = typer.Option(False, "--all", help="Include every status."),
    task: str | None = typer.Option(None),
):
    """Semantic search (MiniLM + FAISS); syncs the index first."""
    from kb.index import KBIndex

    for s in status:
        _check_status(s)
    hits = KBIndex(KBStore()).search(query, k=k, statuses=None if all_statuses else status, task=task)
    for hit in hits:
        typer.echo(f"{hit.score:.3f}\t{hit.entry.id}\t{hit.entry.status}\t{hit.entry.title or ''}")


@cli.command()
@_friendly
def similar(entry_id: str, k: int = typer.Option(5)):
    """Entries most similar to one entry."""
    from kb.index import KBIndex

    for hit in KBIndex(KBStore()).similar(entry_id, k=k):
        typer.echo(f"{hit.score:.3f}\t{hit.entry.id}\t{hit.entry.status}\t{hit.entry.title or ''}")


@cli.command()
@_friendly
def duplicates(threshold: float = typer.Option(0.9, help="Cosine similarity, 0..1.")):
    """Pairs of near-duplicate entries (merge proposals)."""
    from kb.index import KBIndex

    for a, b, score in KBIndex(KBStore()).near_duplicates(threshold):
        typer.echo(f"{score:.3f}\t{a}\t{b}")


@cli.command()
@_friendly
def reindex(rebuild: bool = typer.Option(False, help="Re-embed everything, not just changes.")):
    """Bring the embedding index up to date with the KB. Stoppable (SIGTERM / Ctrl-C, or Cancel
    on the Jobs page): what was embedded is kept, and running it again continues from there."""
    # distill.progress: the CLI is a front-end, so it may use the job machinery kb/ itself avoids
    from distill.progress import STOPPED_EXIT_CODE, StopRequested, install_stop_handler
    from kb.index import KBIndex

    install_stop_handler()  # a stop before the first batch is a clean stop too
    index = KBIndex(KBStore())
    reporter = _EmbeddingProgress()
    try:
        report = (index.rebuild if rebuild else index.sync)(progress=reporter)
    except StopRequested:
        typer.echo(
            f"stopped after embedding {reporter.done} entries; they are kept, run `nesy kb reindex` again to continue",
            err=True,
        )
        raise typer.Exit(STOPPED_EXIT_CODE) from None
    finally:
        reporter.close()
    resumed = f" ({report.resumed} kept from a stopped run)" if report.resumed else ""
    typer.echo(
        f"embedded {report.embedded}{resumed}, removed {report.removed}, "
        f"{report.total} vectors ({report.kind}) in {report.seconds:.1f}s"
    )


class _EmbeddingProgress:
    """KBIndex.sync's progress(done, total) callback: a distill Progress (terminal bar + job
    metrics), created once the total is known; a pending stop request is raised between batches."""

    def __init__(self):
        self.bar, self.done = None, 0

    def __call__(self, done: int, total: int) -> None:
        from distill.progress import Progress

        if self.bar is None:
            self.bar = Progress(total, desc="embedding", unit="entry", stage="reindex")
        self.bar.update(done - self.done)
        self.done = done
        self.bar.check_stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command()
@_friendly
def stats(as_json: bool = typer.Option(False, "--json")):
    """Counts by status and task."""
    numbers = KBStore().stats()
    if as_json:
        typer.echo(json.dumps(numbers, ensure_ascii=False))
        return
    typer.echo(f"entries: {numbers['total']}  (deleted {numbers['deleted']}, revisions {numbers['revisions']})")
    for name, count in numbers["by_status"].items():
        typer.echo(f"  {name}: {count}")
    for name, count in numbers["by_task"].items():
        typer.echo(f"  task {name}: {count}")
    typer.echo(f"  flagged: {numbers['flagged']}")
    for name, count in numbers["by_flag"].items():
        typer.echo(f"  flag {name}: {count}")


@cli.command()
@_friendly
def history(entry_id: str):
    """Every revision of an entry (and of entries merged into it)."""
    revisions = KBStore().history(entry_id)
    if not revisions:
        raise EntryNotFound(entry_id)
    for rev in revisions:
        fields = ", ".join(rev.changes)
        typer.echo(_row(f"#{rev.revision_id}", f"v{rev.version}", rev.action, rev.by, rev.at, rev.entry_id, fields))


@cli.command()
@_friendly
def restore(
    entry_id: str,
    revision_id: int,
    expected_version: int | None = typer.Option(
        None, help="Refuse if the entry is no longer at this version (default: current)."
    ),
):
    """Bring back the content of a revision (a new revision records the restore)."""
    store = KBStore()
    if expected_version is None:
        expected_version = _current_version(store, entry_id)
    entry = store.restore(entry_id, revision_id, expected_version, by=_user())
    typer.echo(f"restored {entry_id} from revision #{revision_id}: now version {entry.version}")


@cli.command("set-status")
@_friendly
def set_status(status: str, entry_ids: list[str] = typer.Argument(...)):
    """Set the status of one or more entries in one transaction."""
    _check_status(status)
    changed = KBStore().set_status(entry_ids, status, by=_user())
    typer.echo(f"{changed} changed, {len(entry_ids) - changed} already {status}")


@cli.command()
@_friendly
def merge(keep_id: str, drop_id: str):
    """Merge drop into keep (concepts and links unioned; both histories kept)."""
    entry = KBStore().merge(keep_id, drop_id, by=_user())
    typer.echo(f"merged {drop_id} into {keep_id}: now version {entry.version}")


@cli.command()
@_friendly
def graph(
    out: Path = typer.Argument(..., help="HTML file to write."),
    status: str | None = typer.Option(None),
    task: str | None = typer.Option(None),
    focus: str | None = typer.Option(None, help="Entry id to centre on."),
    depth: int = typer.Option(1),
    neighbours: bool = typer.Option(False, help="Add semantic-neighbour edges (loads the embedder)."),
    threshold: float = typer.Option(0.8),
):
    """Write the KB graph as a self-contained HTML page (works offline)."""
    from kb.graph import build_graph, render_html

    _check_status(status)
    store = KBStore()
    index = None
    if neighbours:
        from kb.index import KBIndex

        index = KBIndex(store)
    built = build_graph(store, index, neighbour_threshold=threshold, status=status, task=task)
    out.write_text(render_html(built, focus=focus, depth=depth), encoding="utf-8")
    typer.echo(f"wrote {out} ({built.number_of_nodes()} nodes, {built.number_of_edges()} edges)")


def _current_version(store: KBStore, entry_id: str) -> int:
    """The stored version, deleted entries included (restoring is how they come back)."""
    revisions = [r for r in store.history(entry_id) if r.entry_id == entry_id]
    if not revisions:
        raise EntryNotFound(entry_id)
    return revisions[-1].version
