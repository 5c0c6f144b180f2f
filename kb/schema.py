"""The KB entry: the interchange format of DESIGN.md as pydantic models, with field-level errors.

Field order here IS the key order of an exported JSONL line (kb/jsonl.py dumps in model order),
so reordering fields changes the bytes of every export.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

Status = Literal["pending", "accepted", "rejected"]
STATUSES: tuple[str, ...] = ("pending", "accepted", "rejected")
# Fields a user edits; id/version/timestamps are owned by the store.
EDITABLE_FIELDS = ("task", "learning_summary", "supplementary_knowledge", "status", "title",
                   "concepts", "source", "links")


def now_iso() -> str:
    """UTC timestamp with a fixed width, so string order is time order (used for sorting)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Source(BaseModel):
    """Where an entry came from (a student error case, a training example, or a person)."""
    model_config = ConfigDict(extra="forbid")
    kind: str | None = None
    dataset: str | None = None
    example_id: str | None = None
    question: str | None = None
    student_response: str | None = None
    teacher_model: str | None = None
    student_model: str | None = None


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    task: str
    learning_summary: str
    supplementary_knowledge: str
    status: Status
    title: str | None = None
    concepts: list[str] = []
    source: Source | None = None
    links: list[str] = []
    version: int = 1
    created_at: str | None = None
    updated_at: str | None = None
    updated_by: str | None = None

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

    @field_validator("version")
    @classmethod
    def _positive_version(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    def knowledge_text(self) -> str:
        """The text inserted into a student prompt (NesyCD knowledge block)."""
        return (f"Learning summary: {self.learning_summary}\n"
                f"Supplementary knowledge: {self.supplementary_knowledge}")

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


class EntryInvalid(ValueError):
    """An entry failed validation; .problems lists (field, message) pairs, field dotted."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"field '{f}': {m}" for f, m in problems))


def field_problems(error: ValidationError) -> list[tuple[str, str]]:
    """pydantic errors as (dotted field, readable message), naming the value that was given."""
    problems = []
    for err in error.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(entry)"
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


def entry_from_json(line: str) -> Entry:
    """Entry from one JSONL line; EntryInvalid for bad JSON, non-objects and bad fields."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise EntryInvalid([("(line)", f"not valid JSON: {e.msg} at column {e.colno}")]) from None
    if not isinstance(data, dict):
        raise EntryInvalid([("(line)", f"expected a JSON object, got {_json_type(data)}")])
    return validate_entry(data)


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
