"""The KB entry: the interchange format of DESIGN.md as pydantic models, with field-level errors.

Field order here IS the key order of an exported JSONL line (kb/jsonl.py dumps in model order),
so reordering fields changes the bytes of every export.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from kb.errors import NesyError

Status = Literal["pending", "accepted", "rejected"]
STATUSES: tuple[str, ...] = ("pending", "accepted", "rejected")
# Fields a user edits; id/version/timestamps are owned by the store.
EDITABLE_FIELDS = (
    "task",
    "learning_summary",
    "supplementary_knowledge",
    "status",
    "title",
    "concepts",
    "source",
    "links",
    "flags",
)
MAX_ID_LENGTH = 256
# Versions stay exact in every JSON reader (JavaScript's safe integers) and fit SQLite's INTEGER.
MAX_VERSION = 2**53 - 1
# A stored row was validated when it was written; reading it back (context=STORED) skips the rules
# added later, so a knowledge base written by an older version stays readable.
STORED = {"stored": True}
_SURROGATE = re.compile("[\ud800-\udfff]")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})", re.IGNORECASE)
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")  # what now_iso() writes
_AWARE = TypeAdapter(AwareDatetime)
# A quality flag's code: a short snake_case name (kb/quality.py writes restates_source, generic,
# false_arithmetic, empty_or_overlong); other tools may add their own codes, so any name is kept.
FLAG_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_FLAG_DETAIL = 500


def now_iso(moment: datetime | None = None) -> str:
    """UTC timestamp with a fixed width, so string order is time order (used for sorting)."""
    moment = moment or datetime.now(timezone.utc)  # isoformat: 4-digit years, unlike strftime
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _valid_unicode(value: str) -> str:
    # A lone surrogate (JSON "\ud800") is not a character: it cannot be written as UTF-8, so it
    # would fail later, far from the field that holds it.
    if not value.isascii() and (bad := _SURROGATE.search(value)):  # isascii: a flag, no scan
        raise ValueError(
            f"contains a lone surrogate U+{ord(bad.group()):04X} at position "
            f"{bad.start() + 1}, which is not a character"
        )
    return value


def _valid_id(value: str, info: ValidationInfo) -> str:
    """Ids are shown one per line and used in commands: short, printable, no line breaks."""
    if _stored(info):
        return value
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_ID_LENGTH} characters (this one has {len(value):,})")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise ValueError(
            f"must be printable characters only, no control characters or line "
            f"breaks (U+{ord(bad):04X} at position {value.index(bad) + 1})"
        )
    return value


def _valid_time(value: str, info: ValidationInfo) -> str:
    """An ISO 8601 time with a zone, stored as fixed-width UTC so string order is time order."""
    if _stored(info):
        return value
    try:
        canonical = _CANONICAL_TIME.fullmatch(value)
        if not canonical and not _ISO_TIME.fullmatch(value):
            raise ValueError
        moment = _AWARE.validate_python(value)  # the calendar check (no 2024-13-45)
        return value if canonical else now_iso(moment.astimezone(timezone.utc))
    except (ValueError, OverflowError):  # ValidationError is a ValueError
        raise ValueError("must be an ISO 8601 time with a time zone, like 2024-05-01T12:00:00Z") from None


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


def _valid_flag_code(value: str, info: ValidationInfo) -> str:
    if not _stored(info) and not FLAG_CODE.fullmatch(value):
        raise ValueError(
            "must be a short snake_case name: a-z, 0-9 and _, starting with a letter, at most 40 characters"
        )
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
Id = Annotated[Text, AfterValidator(_valid_id)]
Time = Annotated[Text, AfterValidator(_valid_time)]
FlagCode = Annotated[Text, AfterValidator(_valid_flag_code)]


class Source(BaseModel):
    """Where an entry came from (a student error case, a training example, or a person)."""

    model_config = ConfigDict(extra="forbid")
    kind: Text | None = None
    dataset: Text | None = None
    example_id: Text | None = None
    question: Text | None = None
    student_response: Text | None = None
    teacher_model: Text | None = None
    student_model: Text | None = None


class Flag(BaseModel):
    """A quality flag found by a check (kb/quality.py): what is wrong (code) and where (detail).
    Flags inform a curator; they never change the status of an entry by themselves."""

    model_config = ConfigDict(extra="forbid")
    code: FlagCode
    detail: Text | None = Field(None, max_length=MAX_FLAG_DETAIL)


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Id
    task: Text
    learning_summary: Text
    supplementary_knowledge: Text
    status: Status
    title: Text | None = None
    concepts: list[Text] = []
    source: Source | None = None
    links: list[Id] = []  # ids of other entries
    flags: list[Flag] = []  # quality flags, one per code (exported only when there are some)
    version: int = Field(1, strict=True)  # strict: true or "2" is not a version
    created_at: Time | None = None
    updated_at: Time | None = None
    updated_by: Text | None = None

    @field_validator("id", "task")
    @classmethod
    def _non_blank_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if value != value.strip():
            raise ValueError("must not start or end with whitespace")
        return value

    @field_validator("learning_summary", "supplementary_knowledge")
    @classmethod
    def _non_blank_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("concepts", "links")
    @classmethod
    def _no_blank_items(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("items must not be empty strings")
        return values

    @field_validator("flags")
    @classmethod
    def _one_flag_per_code(cls, flags: list[Flag]) -> list[Flag]:
        codes = [f.code for f in flags]
        if repeated := next((c for c in codes if codes.count(c) > 1), None):
            raise ValueError(f"flag code {repeated!r} is given {codes.count(repeated)} times; keep one per code")
        return flags

    @field_validator("version")
    @classmethod
    def _positive_version(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        if value > MAX_VERSION:
            raise ValueError(f"must be at most {MAX_VERSION}")
        return value

    def knowledge_text(self) -> str:
        """The text inserted into a student prompt (NesyCD knowledge block)."""
        return f"Learning summary: {self.learning_summary}\nSupplementary knowledge: {self.supplementary_knowledge}"

    def content(self) -> dict:
        """The editable fields only (what a revision diff compares)."""
        return self.model_dump(mode="json", include=set(EDITABLE_FIELDS))


class Revision(BaseModel):
    revision_id: int
    entry_id: str
    version: int
    action: str  # create | update | status | delete | restore | merge | import
    by: str
    at: str
    changes: dict[str, list]  # field -> [old, new]
    snapshot: dict | None  # the entry after the change (before it, for a delete)


class EntryInvalid(NesyError, ValueError):
    """An entry failed validation; .problems lists (field, message) pairs, field dotted."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"field '{f}': {m}" for f, m in problems))


def field_problems(error: ValidationError) -> list[tuple[str, str]]:
    """pydantic errors as (dotted field, readable message), naming the value that was given."""
    problems = []
    for err in error.errors():
        field = _field_name(err["loc"]) or "(entry)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = "is not a known field"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            message += f" (got {_short_repr(err['input'])})"
        problems.append((field, message))
    return problems


def validate_entry(data: dict) -> Entry:
    """Entry from a dict, or EntryInvalid with every bad field named."""
    try:
        return Entry.model_validate(data)
    except ValidationError as e:
        raise EntryInvalid(field_problems(e)) from None


class NotJSON(EntryInvalid):
    """The line is not JSON at all (for a last line without newline: a truncated file)."""


def entry_from_json(line: str) -> Entry:
    """Entry from one JSONL line; EntryInvalid for bad JSON, non-objects and bad fields.
    Never anything else, whatever the line holds (deep nesting, huge numbers, repeated keys)."""
    _odd.objects = []
    try:
        data = _DECODER.decode(line)
    except json.JSONDecodeError as e:
        raise NotJSON([("(line)", f"not valid JSON: {e.msg} at column {e.colno}")]) from None
    except RecursionError:  # json's own guard against deep nesting (100,000 '[' in a row)
        raise EntryInvalid(
            [(_deep_field(line), "nested too deeply: an entry holds text, lists of text and one source object")]
        ) from None
    if not isinstance(data, dict):
        raise EntryInvalid([("(line)", f"expected a JSON object, got {_json_type(data)}")])
    problems = _key_problems(data) if _odd.objects else []
    try:
        entry = validate_entry(data)
    except EntryInvalid as e:
        problems += e.problems
    if problems:
        raise EntryInvalid(problems)
    return entry


# -- reading JSON without surprises -----------------------------------------------------------
MAX_INT_DIGITS = 30  # longer integers are refused before Python converts them (slow, and capped)
_DEEP = 64  # a top-level value nested this deep is the one that made the parser give up
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _OddKeys(dict):
    """A JSON object with keys pydantic cannot judge: one named more than once (json keeps the
    last silently), or one holding a lone surrogate. .notes: key -> problem."""

    notes: dict[str, str]


class _BigNumber:
    """An integer literal too long to be a field value; pydantic refuses it by type."""

    def __init__(self, digits: str):
        self.digits = digits

    def __repr__(self) -> str:
        return f"a number with {len(self.digits.lstrip('-'))} digits"


def _object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs) and ((keys := "".join(obj)).isascii() or not _SURROGATE.search(keys)):
        return obj
    obj, keys = _OddKeys(obj), [k for k, _ in pairs]
    obj.notes = {
        k: f"is given {keys.count(k)} times in one object; keep one (JSON readers disagree on which one counts)"
        for k in obj
        if keys.count(k) > 1
    }
    obj.notes.update(
        {k: "field name contains a lone surrogate, which is not a character" for k in obj if _SURROGATE.search(k)}
    )
    _odd.objects.append(obj)
    return obj


def _parse_int(digits: str):
    return int(digits) if len(digits) <= MAX_INT_DIGITS else _BigNumber(digits)


_odd = threading.local()  # .objects: the _OddKeys of the line being read (per thread)
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_int=_parse_int)


def _key_problems(data: dict) -> list[tuple[str, str]]:
    """(dotted field, message) for every odd key (_OddKeys), at any depth."""
    problems, stack = [], [((), data)]
    while stack:  # iterative: the value may be nested hundreds of levels deep
        path, node = stack.pop()
        if isinstance(node, _OddKeys):
            problems += [(_field_name((*path, key)), note) for key, note in node.notes.items()]
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack += [((*path, key), value) for key, value in children]
    return sorted(problems)


def _deep_field(line: str) -> str:
    """The top-level field whose value is nested too deeply, found by a scan that stops at depth
    _DEEP (the parser recursed once per level); "(line)" if the line itself is the deep part."""
    depth, key = 0, None
    for token in _TOKEN.finditer(line):
        text = token.group()
        if text[0] == '"':
            key = text if depth == 1 else key
        elif text in "[{":
            depth += 1
            if depth == 1 and text == "[":
                return "(line)"
            if depth >= _DEEP and key:
                try:
                    return _field_name((json.loads(key),))
                except ValueError:
                    return "(line)"
        else:
            depth -= 1
    return "(line)"


def _field_name(loc) -> str:
    """A dotted field path safe to print on one line: control characters and lone surrogates
    escaped, long keys cut (a key is user input too)."""
    name = ".".join(str(part) for part in loc)
    if not name.isprintable():
        name = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
    return _cut(name, 80)


def _json_type(value) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
        _BigNumber: "a number",
    }
    return names.get(type(value), type(value).__name__)


def _short_repr(value, limit: int = 60) -> str:
    if isinstance(value, str):  # repr of the first part only: ids of megabytes are user input
        return _cut(repr(value[: limit + 1]), limit)
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
