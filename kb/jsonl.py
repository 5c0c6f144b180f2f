"""KB interchange as JSONL: deterministic export, validated all-or-nothing import.

Export writes `dumps_entry` lines in id order, so export -> import -> export is byte-identical
(import keeps version, created_at, updated_at and updated_by from the file; quality flags are
content and travel with the entry).
Import reads and validates the WHOLE file before touching the store, then writes every entry in one
transaction: a file with any problem changes nothing. Each problem names the line and the field.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from kb.schema import Entry, EntryInvalid, NotJSON, entry_from_json
from kb.store import DuplicateEntry, KBStore

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# A line ends at \n, \r\n or a lone \r (old Mac files), like Python's universal newlines; not at
# the other characters str.splitlines() knows (\u2028, \x85, …), which JSON strings may hold raw.
_NEWLINE = re.compile(r"\r\n|\r|\n")
_NEWLINE_BYTES = re.compile(rb"\r\n|\r|\n")
DuplicatePolicy = Literal["fail", "skip", "overwrite"]
POLICIES = ("fail", "skip", "overwrite")


def dumps_entry(entry: Entry) -> str:
    """The one canonical line: model field order, no nulls, UTF-8 text kept as is. `flags` only
    when there are some, so an entry without flags exports the same bytes as before flags were
    added (older exports stay byte-identical)."""
    data = entry.model_dump(mode="json", exclude_none=True)
    if not data["flags"]:
        del data["flags"]
    return json.dumps(data, ensure_ascii=False)


@dataclass
class Problem:
    line: int  # 1-based; 0 = the file as a whole
    field: str | None
    message: str

    def describe(self, source: str) -> str:
        where = f"{source} line {self.line}" if self.line else source
        return f"{where}, field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class ImportReport:
    source: str
    lines: int = 0
    entries: list[Entry] = field(default_factory=list, repr=False)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # imported anyway (links to missing ids)
    duplicates: list[tuple[int, str, str]] = field(default_factory=list)  # line, id, "file"|"store"
    lines_of: dict[str, int] = field(default_factory=dict, repr=False)  # id -> line it came from
    added: int = 0
    overwritten: int = 0
    skipped: int = 0
    unchanged: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def first_error(self) -> str:
        """One line for a CLI: the first problem and how many more there are."""
        if not self.problems:
            return ""
        more = len(self.problems) - 1
        return self.problems[0].describe(self.source) + (f" (and {more} more problems)" if more else "")

    def first_warning(self) -> str:
        if not self.warnings:
            return ""
        more = len(self.warnings) - 1
        return self.warnings[0].describe(self.source) + (f" (and {more} more)" if more else "")

    def summary(self) -> str:
        return (
            f"{self.source}: {self.added} added, {self.overwritten} overwritten, "
            f"{self.skipped} skipped, {self.unchanged} unchanged"
        )


class ImportRejected(Exception):
    """The file had problems; nothing was written. .report lists every problem."""

    def __init__(self, report: ImportReport):
        self.report = report
        super().__init__(report.first_error())


def export_jsonl(store: KBStore, out: Path | str | IO, *, status=None, task=None) -> int:
    """Write matching entries as canonical lines (id order); a path is replaced atomically."""
    if not isinstance(out, (str, Path)):
        return _write_lines(store, out, status, task)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            count = _write_lines(store, f, status, task)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def validate_jsonl(
    source: Path | str | bytes, *, on_duplicate: DuplicatePolicy = "fail", max_bytes: int = DEFAULT_MAX_BYTES
) -> ImportReport:
    """Read and check a whole file without touching any store.
    Duplicate ids inside the file: fail -> a problem; skip -> first wins; overwrite -> last wins."""
    if on_duplicate not in POLICIES:
        raise ValueError(f"on_duplicate must be one of {', '.join(POLICIES)} (got {on_duplicate!r})")
    name, data, problem = _read(source, max_bytes)
    report = ImportReport(source=name)
    if problem is None:
        text, problem = _decode(data)
    if problem is not None:
        report.problems.append(problem)
        return report
    report.lines, parsed = _parse_lines(text, report.problems)
    report.entries = _dedupe_within_file(parsed, on_duplicate, report)
    report.problems.sort(key=lambda p: p.line)
    return report


def import_jsonl(
    store: KBStore,
    source: Path | str | bytes,
    *,
    on_duplicate: DuplicatePolicy = "fail",
    by: str = "import",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImportReport:
    """Validate the whole file, then write all of it in one transaction (or nothing:
    ImportRejected with every problem)."""
    report = validate_jsonl(source, on_duplicate=on_duplicate, max_bytes=max_bytes)
    if report.ok:
        _check_against_store(store, report, on_duplicate)
    if not report.ok:
        raise ImportRejected(report)
    report_missing_links(store, report)
    try:
        counts = store.import_entries(report.entries, by=by, on_duplicate=on_duplicate)
    except DuplicateEntry as e:  # someone added one of these ids since our check
        report.problems.append(Problem(0, "id", str(e)))
        raise ImportRejected(report) from None
    report.added, report.overwritten = counts["added"], counts["overwritten"]
    report.skipped += counts["skipped"]
    report.unchanged = counts["unchanged"]
    return report


# -- reading ----------------------------------------------------------------------------------
def _write_lines(store: KBStore, f: IO, status, task) -> int:
    count = 0
    for entry in store.iter_entries(status=status, task=task):
        f.write(dumps_entry(entry) + "\n")
        count += 1
    return count


def _read(source, max_bytes: int) -> tuple[str, bytes, Problem | None]:
    if isinstance(source, (bytes, bytearray)):
        name, size = "input", len(source)
    else:
        path = Path(source)
        name = str(source)
        if not path.is_file():
            return name, b"", Problem(0, None, "no such file")
        size = path.stat().st_size
    if size > max_bytes:  # checked before reading, so a huge file costs nothing
        return (
            name,
            b"",
            Problem(
                0,
                None,
                f"file is {size / 1e6:.1f} MB, over the import limit "
                f"of {max_bytes / 1e6:.1f} MB; split it or raise the limit",
            ),
        )
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    return name, data, None


def _decode(data: bytes) -> tuple[str, Problem | None]:
    if not data.strip():
        return "", Problem(0, None, "file is empty: expected one JSON entry per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = len(_NEWLINE_BYTES.findall(data, 0, e.start)) + 1
        return "", Problem(
            line, None, f"not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        )
    return text.removeprefix("\ufeff"), None


def _parse_lines(text: str, problems: list[Problem]) -> tuple[int, list[tuple[int, Entry]]]:
    lines = _NEWLINE.split(text) if "\r" in text else text.split("\n")  # the same, faster
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines carry no entry
        try:
            parsed.append((number, entry_from_json(line)))
        except EntryInvalid as e:
            if number == len(lines) and not ends_with_newline and isinstance(e, NotJSON):
                problems.append(
                    Problem(number, None, "truncated: the file ends in the middle of this entry (no closing newline)")
                )
                continue
            problems += [Problem(number, None if f == "(line)" else f, m) for f, m in e.problems]
    return len(lines), parsed


def _dedupe_within_file(parsed, on_duplicate: str, report: ImportReport) -> list[Entry]:
    chosen: dict[str, Entry] = {}  # id -> entry; dict order = first appearance
    for line, entry in parsed:
        if entry.id not in chosen:
            chosen[entry.id] = entry
            report.lines_of[entry.id] = line
            continue
        report.duplicates.append((line, entry.id, "file"))
        if on_duplicate == "fail":
            report.problems.append(
                Problem(line, "id", f"duplicate id {entry.id!r} (first on line {report.lines_of[entry.id]})")
            )
        elif on_duplicate == "skip":
            report.skipped += 1
        else:  # overwrite: the last one wins
            chosen[entry.id] = entry
            report.lines_of[entry.id] = line
    return list(chosen.values())


def report_missing_links(store: KBStore, report: ImportReport) -> None:
    """Warn about links to ids neither in the file nor in the store. Not refused: an export
    filtered by status may link to entries it left out, and a link is only a pointer."""
    in_file = report.lines_of
    outside = {link for e in report.entries for link in e.links if link not in in_file}
    known = store.live_ids(outside)
    report.warnings = [
        Problem(
            in_file[e.id], f"links.{i}", f"links to {link!r}, which is neither in this file nor in the knowledge base"
        )
        for e in report.entries
        for i, link in enumerate(e.links)
        if link not in in_file and link not in known
    ]


def _check_against_store(store: KBStore, report: ImportReport, on_duplicate: str) -> None:
    existing = store.live_ids(report.lines_of)
    for entry_id, line in report.lines_of.items():
        if entry_id in existing:
            report.duplicates.append((line, entry_id, "store"))
            if on_duplicate == "fail":
                report.problems.append(
                    Problem(
                        line,
                        "id",
                        f"id {entry_id!r} already exists in "
                        "the knowledge base (import with "
                        "skip or overwrite for duplicates)",
                    )
                )
    report.problems.sort(key=lambda p: p.line)
