"""KBStore: the knowledge base in one SQLite file (WAL), safe to share between processes.

Guarantees a curator relies on:
- every change writes a revision (who, when, field diffs, snapshot), so history is complete and any
  revision can be restored; deletes are soft (the row stays, marked deleted) so nothing is lost;
- edits carry the version the editor started from; the version check and the write happen inside
  one `BEGIN IMMEDIATE` transaction, so two processes racing on the same version cannot both win;
- every write bumps a global change sequence stored on the row, so the embedding index can ask
  "what changed since seq N" and re-embed only that (changes_since);
- a database another process keeps locked is waited for (retries with backoff, `lock_timeout`
  seconds in all, default $NESY_KB_LOCK_TIMEOUT or 60), then KBLocked says so in one sentence.
  Readers never wait for writers (WAL), and opening an existing store writes nothing.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kb.errors import NesyError
from kb.quality import flags_with_checks
from kb.schema import EDITABLE_FIELDS, STATUSES, STORED, Entry, Revision, now_iso, validate_entry
from kb.workspace import home

SORTABLE = ("updated_at", "created_at", "id", "task", "status", "title", "version")
CHECKED_FIELDS = {"learning_summary", "supplementary_knowledge", "source"}  # what the checks read

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    pk INTEGER PRIMARY KEY,            -- stable rowid, also the FTS rowid
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL, status TEXT NOT NULL, title TEXT, source_kind TEXT,
    version INTEGER NOT NULL, created_at TEXT, updated_at TEXT, updated_by TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,              -- change sequence of the last write (for index sync)
    data TEXT NOT NULL                 -- the entry as canonical JSON
);
CREATE INDEX IF NOT EXISTS entries_status ON entries(deleted, status, updated_at);
CREATE INDEX IF NOT EXISTS entries_task ON entries(deleted, task, updated_at);
CREATE INDEX IF NOT EXISTS entries_updated ON entries(deleted, updated_at);
CREATE INDEX IF NOT EXISTS entries_seq ON entries(seq);
CREATE TABLE IF NOT EXISTS entry_concepts (
    entry_pk INTEGER NOT NULL, concept TEXT NOT NULL COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS concepts_by_name ON entry_concepts(concept, entry_pk);
CREATE INDEX IF NOT EXISTS concepts_by_entry ON entry_concepts(entry_pk);
CREATE TABLE IF NOT EXISTS entry_flags (   -- quality flag codes of live entries (filters, facets)
    entry_pk INTEGER NOT NULL, code TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS flags_by_code ON entry_flags(code, entry_pk);
CREATE INDEX IF NOT EXISTS flags_by_entry ON entry_flags(entry_pk);
CREATE TABLE IF NOT EXISTS revisions (
    revision_id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id TEXT NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL,
    by TEXT NOT NULL, at TEXT NOT NULL, changes TEXT NOT NULL, snapshot TEXT);
CREATE INDEX IF NOT EXISTS revisions_by_entry ON revisions(entry_id, revision_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('seq', 0);
"""
SCHEMA_VERSION = 2  # bump with any change to SCHEMA, so existing files get it on their next open
# (2: entry_flags. Entries written before flags existed have none, so the new table starts right.)
FTS_SCHEMA = """CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5(
    id, title, learning_summary, supplementary_knowledge, concepts, question,
    tokenize = 'unicode61 remove_diacritics 2')"""

FTS_INSERT = (
    "INSERT INTO entries_fts (rowid, id, title, learning_summary, supplementary_knowledge, "
    "concepts, question) VALUES (?,?,?,?,?,?,?)"
)


class ConflictError(NesyError):
    """The entry changed since the editor loaded it; .current is what is stored now."""

    def __init__(self, entry_id: str, expected_version: int, current: Entry):
        self.entry_id, self.expected_version, self.current = entry_id, expected_version, current
        super().__init__(
            f"entry '{entry_id}' was changed by {current.updated_by or 'someone'} at "
            f"{current.updated_at} (now version {current.version}); you edited version "
            f"{expected_version}. Reload it and apply your change again."
        )


class EntryNotFound(KeyError):
    def __str__(self) -> str:
        return f"no entry with id {self.args[0]!r}"


class KBLocked(NesyError, TimeoutError):
    """Another process held the database's write lock for longer than we were willing to wait."""

    def __init__(self, path: Path, waited: float):
        self.path, self.waited = path, waited
        super().__init__(
            f"the knowledge base {path} is locked by another process (waited "
            f"{waited:g} s); try again when that process has finished"
        )


class DuplicateEntry(NesyError, ValueError):
    """Ids that already exist, when adding or importing with on_duplicate='fail'."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        shown = ", ".join(repr(i) for i in ids[:5]) + (" …" if len(ids) > 5 else "")
        super().__init__(f"{len(ids)} entr{'y' if len(ids) == 1 else 'ies'} already exist: {shown}")


@dataclass
class Page:
    entries: list[Entry]
    total: int  # matches of the whole query, not just this page
    offset: int
    limit: int


@dataclass
class _Row:
    pk: int
    entry: Entry
    deleted: bool


class KBStore:
    def __init__(self, path: Path | str | None = None, lock_timeout: float | None = None):
        self.path = Path(path) if path else home() / "kb.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = _lock_timeout() if lock_timeout is None else lock_timeout
        self._local = threading.local()  # one connection per thread (Streamlit runs threads)
        con = self._con
        # Only a new or older file needs the schema script (it writes, so it would wait for a
        # writer); an up-to-date store opens without taking any lock.
        if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            con.executescript(f"{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};")
        self.fts = _try_create_fts(con)

    # -- connection and transactions -------------------------------------------------------
    @property
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken
            # before the version check, not at the first write.
            # factory: every statement waits out another process's lock (see _PatientConnection).
            con = sqlite3.connect(
                self.path,
                timeout=min(_BUSY_WAIT, self.lock_timeout),
                isolation_level=None,
                check_same_thread=False,
                factory=_PatientConnection,
            )
            con.lock_timeout, con.path = self.lock_timeout, self.path
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- single entries ----------------------------------------------------------------------
    def add(self, entry: Entry, by: str) -> Entry:
        """Create an entry (version 1, timestamps now). ValueError if the id exists."""
        with self._write() as con:
            row = self._row(con, entry.id)
            if row and not row.deleted:
                raise DuplicateEntry([entry.id])
            return self._create(con, entry, by, row, action="create")

    def upsert(self, entry: Entry, by: str) -> Entry:
        """Create, or refresh the content of knowledge that `by` generated (re-runs of a teacher
        job). Human curation wins: when the stored entry was last changed by someone other than
        `by` (edited, merged, deleted) or is no longer pending (accepted / rejected), nothing is
        written and the stored entry is returned as it is (for a deleted one, its last state)."""
        with self._write() as con:
            row = self._row(con, entry.id)
            if row is None:
                return self._create(con, entry, by, row, action="create")
            if row.entry.updated_by != by or row.entry.status != "pending":
                return row.entry
            if row.deleted:  # deleted by this same generator: a re-run brings it back
                return self._create(con, entry, by, row, action="create")
            return self._change(con, row, entry.content(), by, action="update")

    def get(self, entry_id: str) -> Entry:
        row = self._row(self._con, entry_id)
        if row is None or row.deleted:
            raise EntryNotFound(entry_id)
        return row.entry

    def live_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these ids are live entries (an index lookup; nothing is parsed)."""
        ids, found = list(ids), set()
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            found.update(
                i for (i,) in self._con.execute(f"SELECT id FROM entries WHERE id IN ({marks}) AND +deleted = 0", chunk)
            )
        return found

    def get_many(self, ids: Iterable[str]) -> dict[str, Entry]:
        """Live entries by id (missing and deleted ids are absent from the result)."""
        ids, found = list(ids), {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for (data,) in self._con.execute(f"SELECT data FROM entries WHERE id IN ({marks}) AND +deleted = 0", chunk):
                entry = _load(data)
                found[entry.id] = entry
        return found

    def update(self, entry_id: str, changes: dict, expected_version: int, by: str) -> Entry:
        """Apply field changes if the entry is still at expected_version, else ConflictError."""
        unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
        if unknown:
            raise ValueError(f"cannot change field(s) {', '.join(unknown)}; editable: {', '.join(EDITABLE_FIELDS)}")
        with self._write() as con:
            row = self._live_row(con, entry_id)
            _check_version(row, expected_version)
            action = "status" if set(changes) == {"status"} else "update"
            # An edit of the checked text re-runs the per-entry quality checks, so a fixed entry
            # loses its stale flags (flags given explicitly are taken as they are).
            reflag = "flags" not in changes and bool(CHECKED_FIELDS & set(changes))
            return self._change(con, row, changes, by, action=action, reflag=reflag)

    def delete(self, entry_id: str, expected_version: int | None, by: str) -> None:
        """Soft delete (history stays); expected_version None skips the conflict check."""
        with self._write() as con:
            row = self._live_row(con, entry_id)
            if expected_version is not None:
                _check_version(row, expected_version)
            self._retire(con, row, by, action="delete", changes={"deleted": [False, True]})

    def set_status(self, ids: list[str], status: str, by: str, expected_versions: dict[str, int] | None = None) -> int:
        """Set the status of many entries in one transaction; returns how many changed.
        An unknown id refuses the whole batch. expected_versions (id -> the version the reviewer
        saw) refuses the whole batch with ConflictError when any of those entries moved on;
        ids absent from it are not checked."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)} (got {status!r})")
        with self._write() as con:
            rows = [self._row(con, i) for i in ids]
            missing = [i for i, r in zip(ids, rows) if r is None or r.deleted]
            if missing:
                raise EntryNotFound(missing[0] if len(missing) == 1 else missing)
            for row in rows:
                if expected_versions and row.entry.id in expected_versions:
                    _check_version(row, expected_versions[row.entry.id])
            changed = [r for r in rows if r.entry.status != status]
            for row in changed:
                self._change(con, row, {"status": status}, by, action="status")
            return len(changed)

    # -- history -----------------------------------------------------------------------------
    def history(self, entry_id: str) -> list[Revision]:
        """All revisions of the entry, plus those of entries merged into it, oldest first."""
        ids = [entry_id, *self._merged_sources(self._con, entry_id)]
        marks = ",".join("?" * len(ids))
        rows = self._con.execute(
            f"SELECT revision_id, entry_id, version, action, by, at, changes, snapshot "
            f"FROM revisions WHERE entry_id IN ({marks}) ORDER BY revision_id",
            ids,
        )
        return [_revision(r) for r in rows]

    def restore(self, entry_id: str, revision_id: int, expected_version: int, by: str) -> Entry:
        """Bring back the content of a revision (also undeletes); a new revision records it."""
        with self._write() as con:
            rev = self._revision(con, revision_id)
            allowed = {entry_id, *self._merged_sources(con, entry_id)}
            if rev is None or rev.entry_id not in allowed or rev.snapshot is None:
                raise ValueError(f"revision {revision_id} is not a restorable revision of entry '{entry_id}'")
            row = self._row(con, entry_id)
            if row is None:
                raise EntryNotFound(entry_id)
            _check_version(row, expected_version)
            content = {k: rev.snapshot[k] for k in EDITABLE_FIELDS if k in rev.snapshot}
            return self._change(
                con, row, content, by, action="restore", extra={"revision": [None, revision_id]}, force=True
            )

    def merge(self, keep_id: str, drop_id: str, by: str, expected_versions: tuple[int, int] | None = None) -> Entry:
        """Fold drop into keep: concepts and links unioned, drop marked deleted with a 'merge'
        revision pointing at keep; history(keep) then includes drop's revisions. Other entries
        linking to drop are re-pointed to keep (one 'update' revision each), so no link dangles."""
        if keep_id == drop_id:
            raise ValueError("cannot merge an entry with itself")
        with self._write() as con:
            keep, drop = self._live_row(con, keep_id), self._live_row(con, drop_id)
            if expected_versions:
                _check_version(keep, expected_versions[0])
                _check_version(drop, expected_versions[1])
            concepts = _union(keep.entry.concepts, drop.entry.concepts)
            links = [i for i in _union(keep.entry.links, drop.entry.links) if i not in (keep_id, drop_id)]
            merged = self._change(
                con,
                keep,
                {"concepts": concepts, "links": links},
                by,
                action="merge",
                extra={"merged_from": [None, drop_id]},
                force=True,
            )
            self._retire(
                con, drop, by, action="merge", changes={"deleted": [False, True], "merged_into": [None, keep_id]}
            )
            self._relink(con, drop_id, keep_id, by)
            return merged

    def _relink(self, con, old_id: str, new_id: str, by: str) -> None:
        """Replace old_id by new_id in the links of every live entry (a merge's follow-up).
        instr() on the stored JSON narrows the scan; the exact check is on the parsed links."""
        needle = json.dumps(old_id, ensure_ascii=False)
        for pk, data in con.execute(
            "SELECT pk, data FROM entries WHERE deleted = 0 AND instr(data, ?) > 0", (needle,)
        ).fetchall():
            entry = _load(data)
            if old_id not in entry.links:
                continue
            links = _union([new_id if i == old_id else i for i in entry.links], [])
            self._change(
                con,
                _Row(pk, entry, False),
                {"links": [i for i in links if i != entry.id]},
                by,
                action="update",
                extra={"relinked": [old_id, new_id]},
            )

    # -- queries -----------------------------------------------------------------------------
    def query(
        self,
        *,
        status=None,
        task=None,
        concept=None,
        text=None,
        source_kind=None,
        flag=None,
        flagged: bool | None = None,
        sort="updated_at",
        descending=True,
        offset=0,
        limit=50,
    ) -> Page:
        """One page of live entries matching every given filter; Page.total counts all matches.
        status / task / source_kind / flag accept one value or a list (any of them); flag is a
        quality flag code; flagged=True: entries with any flag, False: entries with none."""
        if sort not in SORTABLE:
            raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(SORTABLE)}")
        where, args = self._filters(status, task, concept, text, source_kind, flag, flagged)
        total = self._con.execute(f"SELECT COUNT(*) FROM entries WHERE {where}", args).fetchone()[0]
        order = "DESC" if descending else "ASC"
        rows = self._con.execute(
            f"SELECT data FROM entries WHERE {where} ORDER BY {sort} {order}, id {order} LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return Page([_load(d) for (d,) in rows], total, offset, limit)

    def iter_entries(self, *, status=None, task=None, concept=None, flag=None, batch: int = 1000) -> Iterator[Entry]:
        """Every matching live entry in id order, streamed (export, index rebuild, graph)."""
        where, args = self._filters(status, task, concept, None, None, flag)
        last = ""
        while True:
            rows = self._con.execute(
                f"SELECT id, data FROM entries WHERE {where} AND id > ? ORDER BY id LIMIT ?", [*args, last, batch]
            ).fetchall()
            for _, data in rows:
                yield _load(data)
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def stats(self) -> dict:
        con = self._con
        by_status = dict(con.execute("SELECT status, COUNT(*) FROM entries WHERE deleted = 0 GROUP BY status"))
        by_task = dict(con.execute("SELECT task, COUNT(*) FROM entries WHERE deleted = 0 GROUP BY task ORDER BY task"))
        by_flag = dict(
            con.execute(  # only live entries have rows in entry_flags
                "SELECT code, COUNT(*) FROM entry_flags GROUP BY code ORDER BY code"
            )
        )
        return {
            "total": sum(by_status.values()),
            "by_status": {s: by_status.get(s, 0) for s in STATUSES},
            "by_task": by_task,
            "by_flag": by_flag,
            "flagged": con.execute("SELECT COUNT(DISTINCT entry_pk) FROM entry_flags").fetchone()[0],
            "deleted": con.execute("SELECT COUNT(*) FROM entries WHERE deleted = 1").fetchone()[0],
            "revisions": con.execute("SELECT COUNT(*) FROM revisions").fetchone()[0],
            "seq": self.current_seq(),
        }

    def facets(self) -> dict:
        """Distinct values to offer as filters."""
        con = self._con
        return {
            "tasks": [t for (t,) in con.execute("SELECT DISTINCT task FROM entries WHERE deleted = 0 ORDER BY task")],
            "concepts": [c for (c,) in con.execute("SELECT DISTINCT concept FROM entry_concepts ORDER BY concept")],
            "source_kinds": [
                k
                for (k,) in con.execute(
                    "SELECT DISTINCT source_kind FROM entries WHERE deleted = 0 "
                    "AND source_kind IS NOT NULL ORDER BY source_kind"
                )
            ],
            "flags": [c for (c,) in con.execute("SELECT DISTINCT code FROM entry_flags ORDER BY code")],
        }

    def current_seq(self) -> int:
        return self._con.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0]

    def count_changed_since(self, seq: int) -> int:
        """How many entries (deleted ones included) were written after seq; an index lookup."""
        return self._con.execute("SELECT COUNT(*) FROM entries WHERE seq > ?", (seq,)).fetchone()[0]

    def changes_since(self, seq: int) -> tuple[int, list[str], list[str]]:
        """(current seq, ids created/changed after seq, ids deleted after seq)."""
        con = self._con
        con.execute("BEGIN")  # one snapshot: the seq and the rows agree
        try:
            now = self.current_seq()
            changed, deleted = [], []
            for entry_id, is_deleted in con.execute(
                "SELECT id, deleted FROM entries WHERE seq > ? ORDER BY seq", (seq,)
            ):
                (deleted if is_deleted else changed).append(entry_id)
        finally:
            con.execute("COMMIT")
        return now, changed, deleted

    # -- bulk import (used by kb/jsonl.py) ------------------------------------------------------
    def import_entries(self, entries: list[Entry], by: str, on_duplicate: str = "fail") -> dict:
        """Write validated entries in ONE transaction, keeping their version and timestamps.
        on_duplicate (id already live in the store): fail (nothing written) | skip | overwrite."""
        counts = {"added": 0, "overwritten": 0, "skipped": 0, "unchanged": 0}
        with self._write() as con:
            rows = self._rows(con, [e.id for e in entries])
            live = [e.id for e in entries if e.id in rows and not rows[e.id].deleted]
            if live and on_duplicate == "fail":
                raise DuplicateEntry(live)
            fresh = [e for e in entries if e.id not in rows]
            self._insert_many(con, fresh, by)
            counts["added"] = len(fresh)
            for entry in entries:
                if entry.id in rows:
                    counts[self._import_one(con, entry, rows[entry.id], by, on_duplicate)] += 1
        return counts

    def _insert_many(self, con, entries: list[Entry], by: str) -> None:
        """New ids in bulk (executemany, one change seq): the fast path of a large import."""
        if not entries:
            return
        at = now_iso()
        seq = con.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()[0]
        first_pk = con.execute("SELECT COALESCE(MAX(pk), 0) + 1 FROM entries").fetchone()[0]
        entries = [
            e.model_copy(
                update={
                    "created_at": e.created_at or at,
                    "updated_at": e.updated_at or at,
                    "updated_by": e.updated_by or by,
                }
            )
            for e in entries
        ]
        pks = range(first_pk, first_pk + len(entries))
        data = [e.model_dump_json() for e in entries]  # stored row and revision snapshot
        con.executemany(
            "INSERT INTO entries (pk, id, task, status, title, source_kind, version, created_at, "
            "updated_at, updated_by, deleted, seq, data) VALUES (?,?,?,?,?,?,?,?,?,?,0,?,?)",
            [(pk, e.id, *_columns(e), seq, d) for pk, e, d in zip(pks, entries, data)],
        )
        con.executemany(
            "INSERT INTO entry_concepts VALUES (?, ?)",
            [(pk, c) for pk, e in zip(pks, entries) for c in dict.fromkeys(e.concepts)],
        )
        con.executemany(
            "INSERT INTO entry_flags VALUES (?, ?)", [(pk, f.code) for pk, e in zip(pks, entries) for f in e.flags]
        )
        if self.fts:
            con.executemany(FTS_INSERT, [(pk, *_fts_values(e)) for pk, e in zip(pks, entries)])
        con.executemany(
            "INSERT INTO revisions (entry_id, version, action, by, at, changes, snapshot) "
            "VALUES (?,?,'import',?,?,?,?)",
            [
                (e.id, e.version, by, at, json.dumps(_diff({}, e.content()), ensure_ascii=False), d)
                for e, d in zip(entries, data)
            ],
        )

    def _import_one(self, con, entry: Entry, row: _Row, by: str, on_duplicate: str) -> str:
        at = now_iso()
        if row.deleted:
            version = max(entry.version, row.entry.version + 1)
            entry = entry.model_copy(
                update={
                    "version": version,
                    "created_at": entry.created_at or at,
                    "updated_at": entry.updated_at or at,
                    "updated_by": entry.updated_by or by,
                }
            )
            self._save(con, entry, row)
            self._log(con, entry, "import", by, at, _diff({}, entry.content()))
            return "added"
        if on_duplicate == "skip":
            return "skipped"
        current = row.entry
        if entry.content() == current.content():
            return "unchanged"  # metadata alone is not worth a new version
        entry = entry.model_copy(
            update={
                "version": max(entry.version, current.version + 1),
                "created_at": current.created_at,
                "updated_at": entry.updated_at or at,
                "updated_by": entry.updated_by or by,
            }
        )
        self._save(con, entry, row)
        self._log(con, entry, "import", by, at, _diff(current.content(), entry.content()))
        return "overwritten"

    # -- internals ---------------------------------------------------------------------------
    def _create(self, con, entry: Entry, by: str, row: _Row | None, action: str) -> Entry:
        at = now_iso()
        version = 1 if row is None else row.entry.version + 1  # re-adding a deleted id continues
        entry = entry.model_copy(update={"version": version, "created_at": at, "updated_at": at, "updated_by": by})
        self._save(con, entry, row)
        self._log(con, entry, action, by, at, _diff({}, entry.content()))
        return entry

    def _change(
        self,
        con,
        row: _Row,
        changes: dict,
        by: str,
        action: str,
        extra: dict | None = None,
        force: bool = False,
        reflag: bool = False,
    ) -> Entry:
        """Validate and write new content; a no-op change writes nothing unless forced.
        reflag: the per-entry quality checks run on the new content (kb/quality.py)."""
        current = row.entry
        at = now_iso()
        candidate = validate_entry(
            {**current.model_dump(), **changes, "version": current.version + 1, "updated_at": at, "updated_by": by}
        )
        if reflag:
            candidate = candidate.model_copy(update={"flags": flags_with_checks(candidate)})
        diff = _diff(current.content(), candidate.content())
        if not diff and not force and not row.deleted:
            return current
        self._save(con, candidate, row)
        self._log(con, candidate, action, by, at, {**diff, **(extra or {})})
        return candidate

    def _retire(self, con, row: _Row, by: str, action: str, changes: dict) -> None:
        at = now_iso()
        entry = row.entry.model_copy(update={"version": row.entry.version + 1, "updated_at": at, "updated_by": by})
        self._save(con, entry, row, deleted=True)
        self._log(con, entry, action, by, at, changes)

    def _save(self, con, entry: Entry, row: _Row | None, deleted: bool = False) -> None:
        seq = con.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()[0]
        values = (*_columns(entry), int(deleted), seq, entry.model_dump_json())
        if row is None:
            pk = con.execute(
                "INSERT INTO entries (task, status, title, source_kind, version, created_at, "
                "updated_at, updated_by, deleted, seq, data, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*values, entry.id),
            ).lastrowid
        else:
            pk = row.pk
            con.execute(
                "UPDATE entries SET task=?, status=?, title=?, source_kind=?, version=?, "
                "created_at=?, updated_at=?, updated_by=?, deleted=?, seq=?, data=? WHERE pk=?",
                (*values, pk),
            )
            con.execute("DELETE FROM entry_concepts WHERE entry_pk = ?", (pk,))
            con.execute("DELETE FROM entry_flags WHERE entry_pk = ?", (pk,))
            if self.fts:
                con.execute("DELETE FROM entries_fts WHERE rowid = ?", (pk,))
        if deleted:
            return  # a deleted entry is invisible to concept and flag facets and text search
        con.executemany("INSERT INTO entry_concepts VALUES (?, ?)", [(pk, c) for c in dict.fromkeys(entry.concepts)])
        con.executemany("INSERT INTO entry_flags VALUES (?, ?)", [(pk, f.code) for f in entry.flags])
        if self.fts:
            con.execute(FTS_INSERT, (pk, *_fts_values(entry)))

    def _log(self, con, entry: Entry, action: str, by: str, at: str, changes: dict) -> None:
        con.execute(
            "INSERT INTO revisions (entry_id, version, action, by, at, changes, snapshot) VALUES (?,?,?,?,?,?,?)",
            (entry.id, entry.version, action, by, at, json.dumps(changes, ensure_ascii=False), entry.model_dump_json()),
        )

    def _row(self, con, entry_id: str) -> _Row | None:
        found = con.execute("SELECT pk, data, deleted FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return _Row(found[0], _load(found[1]), bool(found[2])) if found else None

    def _rows(self, con, ids: list[str]) -> dict[str, _Row]:
        rows = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for pk, data, deleted in con.execute(f"SELECT pk, data, deleted FROM entries WHERE id IN ({marks})", chunk):
                entry = _load(data)
                rows[entry.id] = _Row(pk, entry, bool(deleted))
        return rows

    def _live_row(self, con, entry_id: str) -> _Row:
        row = self._row(con, entry_id)
        if row is None or row.deleted:
            raise EntryNotFound(entry_id)
        return row

    def _revision(self, con, revision_id: int) -> Revision | None:
        found = con.execute(
            "SELECT revision_id, entry_id, version, action, by, at, changes, "
            "snapshot FROM revisions WHERE revision_id = ?",
            (revision_id,),
        ).fetchone()
        return _revision(found) if found else None

    def _merged_sources(self, con, entry_id: str) -> list[str]:
        """Ids merged into this entry, transitively (their histories belong to it now)."""
        found, frontier = [], [entry_id]
        while frontier:
            current = frontier.pop()
            for (changes,) in con.execute(
                "SELECT changes FROM revisions WHERE entry_id = ? AND action = 'merge'", (current,)
            ):
                source = json.loads(changes).get("merged_from", [None, None])[1]
                if source and source not in found and source != entry_id:
                    found.append(source)
                    frontier.append(source)
        return found

    def _filters(
        self, status, task, concept, text, source_kind, flag=None, flagged: bool | None = None
    ) -> tuple[str, list]:
        clauses, args = ["deleted = 0"], []
        if flag:
            codes = [flag] if isinstance(flag, str) else list(flag)
            clauses.append(f"pk IN (SELECT entry_pk FROM entry_flags WHERE code IN ({','.join('?' * len(codes))}))")
            args += codes
        if flagged is not None:
            clauses.append(f"pk {'' if flagged else 'NOT '}IN (SELECT entry_pk FROM entry_flags)")
        for column, value in (("status", status), ("task", task), ("source_kind", source_kind)):
            if value:
                values = [value] if isinstance(value, str) else list(value)
                clauses.append(f"{column} IN ({','.join('?' * len(values))})")
                args += values
        if concept:
            clauses.append("pk IN (SELECT entry_pk FROM entry_concepts WHERE concept = ?)")
            args.append(concept)
        if text and text.strip():
            if self.fts and (match := _fts_query(text)):
                clauses.append("pk IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)")
                args.append(match)
            else:
                clauses.append("data LIKE ?")
                args.append(f"%{text.strip()}%")
        return " AND ".join(clauses), args

    # -- trash and merge preview (read-only; used by the app's Trash view and merge dialog) -----
    def deleted_entries(self, *, offset: int = 0, limit: int = 50) -> Page:
        """One page of deleted entries (merged-away ones included), most recently deleted first,
        as they were when deleted. Bring one back with
        restore(id, history(id)[-1].revision_id, expected_version=entry.version, by=...)."""
        con = self._con
        total = con.execute("SELECT COUNT(*) FROM entries WHERE deleted = 1").fetchone()[0]
        ids = [
            i
            for (i,) in con.execute(
                "SELECT id FROM entries WHERE deleted = 1 ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            )
        ]
        rows = [self._row(con, i) for i in ids]
        return Page([r.entry for r in rows if r is not None], total, offset, limit)

    def preview_merge(self, keep_id: str, drop_id: str) -> Entry:
        """The entry merge(keep_id, drop_id) would leave (same unions as merge); writes nothing."""
        if keep_id == drop_id:
            raise ValueError("cannot merge an entry with itself")
        con = self._con
        keep, drop = self._live_row(con, keep_id), self._live_row(con, drop_id)
        links = [i for i in _union(keep.entry.links, drop.entry.links) if i not in (keep_id, drop_id)]
        return keep.entry.model_copy(
            update={
                "concepts": _union(keep.entry.concepts, drop.entry.concepts),
                "links": links,
                "version": keep.entry.version + 1,
            }
        )

    # -- impact of entries on answers (written by evaluations and comparisons) ---------------
    # One row per (entry, report): a report's rows are replaced as a whole when it runs again.
    # Created on first write, so opening a store never needs it.
    _IMPACT_TABLE = """CREATE TABLE IF NOT EXISTS entry_impact (
        entry_id TEXT NOT NULL, report TEXT NOT NULL, retrieved INTEGER NOT NULL,
        fixed INTEGER NOT NULL, broken INTEGER NOT NULL, fixed_shared INTEGER NOT NULL,
        broken_shared INTEGER NOT NULL, at TEXT NOT NULL, PRIMARY KEY (entry_id, report))"""
    IMPACT_FIELDS = ("retrieved", "fixed", "broken", "fixed_shared", "broken_shared")

    def record_impact(self, report: str, impact: dict[str, dict[str, int]]) -> None:
        """Replace what `report` (e.g. "eval:<name>", "compare:<key>") says about entries:
        entry id -> {retrieved, fixed, broken, fixed_shared, broken_shared}."""
        at = now_iso()
        rows = [
            (entry_id, report, *(int(counts.get(f, 0)) for f in self.IMPACT_FIELDS), at)
            for entry_id, counts in impact.items()
        ]
        with self._write() as con:
            con.execute(self._IMPACT_TABLE)
            con.execute("DELETE FROM entry_impact WHERE report = ?", (report,))
            con.executemany("INSERT INTO entry_impact VALUES (?,?,?,?,?,?,?,?)", rows)

    def impact_stamp(self) -> str:
        """Changes whenever any report's impact rows change (a cache key beside current_seq)."""
        con = self._con
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'entry_impact'").fetchone():
            return ""
        return "|".join(
            str(v)
            for v in con.execute(
                "SELECT COUNT(*), MAX(at), SUM(retrieved + fixed + broken) FROM entry_impact"
            ).fetchone()
        )

    def impact(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Totals over every report per entry id (+ `reports`: how many reports saw it)."""
        con = self._con
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'entry_impact'").fetchone():
            return {}
        sums = ", ".join(f"SUM({f})" for f in self.IMPACT_FIELDS)
        sql, args = f"SELECT entry_id, {sums}, COUNT(*) FROM entry_impact", []
        if ids is not None:
            args = list(ids)
            sql += f" WHERE entry_id IN ({','.join('?' * len(args))})"
        return {
            row[0]: dict(zip((*self.IMPACT_FIELDS, "reports"), row[1:]))
            for row in con.execute(sql + " GROUP BY entry_id", args)
        }


_BUSY_WAIT = 1.0  # seconds SQLite's own busy handler waits per attempt before we pause and retry


class _PatientConnection(sqlite3.Connection):
    """A connection whose statements wait out another process's lock: each attempt lets SQLite's
    busy handler wait up to _BUSY_WAIT, then we pause (doubling up to 2 s) and try again, for
    lock_timeout seconds in all; then KBLocked. Retrying is safe: a statement refused with
    SQLITE_BUSY did nothing, and writes begin with BEGIN IMMEDIATE, so none waits half-way
    through a transaction. (executemany is retried with the same list: never pass it a generator.)
    """

    lock_timeout: float = 60.0
    path: Path | None = None

    def execute(self, *args):
        return self._patiently(super().execute, args)

    def executemany(self, *args):
        return self._patiently(super().executemany, args)

    def executescript(self, *args):
        return self._patiently(super().executescript, args)

    def _patiently(self, run, args):
        deadline, pause = time.monotonic() + self.lock_timeout, 0.05
        while True:
            try:
                return run(*args)
            except sqlite3.OperationalError as e:
                left = deadline - time.monotonic()
                if not _is_locked(e):
                    raise
                if left <= 0:
                    raise KBLocked(self.path, self.lock_timeout) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 2.0)


def _is_locked(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "locked" in str(error)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _lock_timeout() -> float:
    raw = os.environ.get("NESY_KB_LOCK_TIMEOUT", "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ValueError(f"NESY_KB_LOCK_TIMEOUT must be a number of seconds (got {raw!r})")
    return seconds


def _load(data: str) -> Entry:
    """An entry read back from a row: validated when it was written, so rules added since do not
    make an older knowledge base unreadable."""
    return Entry.model_validate_json(data, context=STORED)


def _try_create_fts(con) -> bool:
    """FTS5 when this SQLite has it (text search by words, fast); else LIKE over the JSON."""
    try:
        con.execute(FTS_SCHEMA)
        return True
    except sqlite3.OperationalError:
        return False


def _fts_query(text: str) -> str:
    # Every word must occur (prefix match); quoting keeps user punctuation out of FTS syntax.
    words = re.findall(r"\w+", text)
    return " AND ".join(f'"{w}"*' for w in words)


def _columns(entry: Entry) -> tuple:
    """The entry fields mirrored as columns (for filters and sorting), in table order."""
    return (
        entry.task,
        entry.status,
        entry.title,
        entry.source.kind if entry.source else None,
        entry.version,
        entry.created_at,
        entry.updated_at,
        entry.updated_by,
    )


def _fts_values(entry: Entry) -> tuple:
    question = entry.source.question if entry.source else None
    return (
        entry.id,
        entry.title or "",
        entry.learning_summary,
        entry.supplementary_knowledge,
        " ".join(entry.concepts),
        question or "",
    )


def _check_version(row: _Row, expected_version: int) -> None:
    if row.entry.version != expected_version:
        raise ConflictError(row.entry.id, expected_version, row.entry)


def _diff(old: dict, new: dict) -> dict[str, list]:
    return {k: [old.get(k), new[k]] for k in new if old.get(k) != new[k]}


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _revision(row) -> Revision:
    rid, entry_id, version, action, by, at, changes, snapshot = row
    return Revision(
        revision_id=rid,
        entry_id=entry_id,
        version=version,
        action=action,
        by=by,
        at=at,
        changes=json.loads(changes),
        snapshot=json.loads(snapshot) if snapshot else None,
    )
