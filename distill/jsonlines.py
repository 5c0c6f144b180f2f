"""The one reader for the JSONL files the tool writes and reads (rationale sets, eval samples,
metrics, bundled data), plain or gzip-compressed.

A line ends at "\\n", "\\r\\n" or a lone "\\r" (text-mode file iteration), never where
`str.splitlines()` also breaks: U+2028, U+2029 and U+0085 are legal raw inside a JSON string and
`json.dumps(..., ensure_ascii=False)` writes them as they are (GSM8K question gsm8k-train-02381
holds U+2028), so splitting there cuts a record in two. The control characters splitlines() also
knows (\\x0b, \\x0c, \\x1c-\\x1e) cannot be raw inside a JSON string, so they never end a record.
kb/jsonl.py, the KB's validated importer, reads bytes by the same rule.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kb.errors import NesyError

LINE_BREAK = re.compile(r"\r\n|\r|\n")


class JSONLError(NesyError, ValueError):
    """A line of a JSONL file that is not a JSON value; the message names the file and line."""


def open_text(path: Path | str) -> IO[str]:
    """The file as UTF-8 text, decompressed when its name ends in .gz."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def split_lines(text: str) -> list[str]:
    """Lines of a JSONL text already in memory, by the rule above (not str.splitlines())."""
    return LINE_BREAK.split(text)


def iter_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every non-blank line of the file."""
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; JSONLError names the first bad line."""
    for number, line in iter_lines(path):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise JSONLError(f"{path}: line {number}: not valid JSON ({e.msg})") from None


def read_jsonl(path: Path | str, *, skip_bad: bool = False) -> list:
    """Every line's value. skip_bad: a file another process appends to (metrics, eval samples),
    where a killed writer can leave a half-written line: such lines are skipped, not an error.
    A missing file is [] with skip_bad (nothing appended yet), FileNotFoundError otherwise."""
    if not skip_bad:
        return [value for _, value in iter_jsonl(path)]
    if not Path(path).exists():
        return []
    rows = []
    for _, line in iter_lines(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def resume_jsonl(path: Path | str) -> list:
    """The rows a stopped run appended to `path`, for a run that continues appending to it. A
    half-written last line (a killed writer) is dropped from the file too, so the next append
    starts on a fresh line instead of gluing a record onto the broken one."""
    rows = read_jsonl(path, skip_bad=True)
    if Path(path).exists():
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows
