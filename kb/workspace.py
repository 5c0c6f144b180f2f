"""Where NeSy Studio writes: everything lives under $NESY_HOME (default ./workspace).

Layout (one place so every module agrees):
  kb.sqlite        the knowledge base (entries + revisions)
  jobs.sqlite      the job registry
  index/           the FAISS index and its id map
  models/          converted / assembled models (student HF folder, teacher GGUF)
  datasets/<name>/ teacher rationale datasets (records.jsonl + raw teacher I/O)
  cache/           the persistent teacher cache (teacher.sqlite: every real call logged)
  teacher/         the shared local llama.cpp teacher server (server.json, its log)
  teach/knowledge/<run>/raw.jsonl   raw teacher I/O of knowledge jobs
  jobs/<id>/       one folder per job: config.json, log.txt, metrics.jsonl
  adapters/<name>/ trained LoRA adapters with their card
  evals/<name>/    evaluation reports (results.json + samples.jsonl)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from kb.errors import NesyError


def home() -> Path:
    """The workspace root, created on first use."""
    root = Path(os.environ.get("NESY_HOME", "workspace")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> Path:
    """A folder inside the workspace, created on first use."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- names the user types

# Everything the tool creates under $NESY_HOME is named by the user with a *name*, never a path
# (OWASP path traversal: allow-list the characters, then check the resolved result stays inside).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
OWNED_MARKER = ".nesy-owned"


class InvalidName(NesyError, ValueError):
    """A user-typed name that is not a plain workspace name (an absolute path, '..', '/', …)."""


class NotOwned(NesyError, ValueError):
    """A folder the tool would replace but did not create itself: never deleted automatically."""


def check_name(name: object, option: str) -> str:
    """`name` if it is a plain name; otherwise InvalidName naming the option."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"{option} takes a name (letters, digits, '.', '_', '-'; at most 100 characters), not a path: {name!r}"
        )
    return name


def named_path(area: str, name: str, option: str) -> Path:
    """$NESY_HOME/<area>/<name> for a validated name (not created)."""
    parent = subdir(area)
    path = parent / check_name(name, option)
    if path.is_symlink() or path.resolve().parent != parent.resolve():
        raise InvalidName(f"{option}: {name!r} would leave {parent}")
    return path


def create_owned(path: Path) -> Path:
    """Create a folder and mark it as the tool's own, so a later fresh run may replace it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNED_MARKER).write_text("created by nesy; this folder may be replaced by a fresh run\n")
    return path


def remove_owned(path: Path) -> None:
    """Delete a folder the tool created (it holds the marker); refuse anything else."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not (path / OWNED_MARKER).is_file():
        raise NotOwned(
            f"{path} was not created by this version of nesy (no {OWNED_MARKER} marker), "
            "so it is never deleted automatically: remove or rename it yourself, or "
            "choose another name"
        )
    shutil.rmtree(path)
