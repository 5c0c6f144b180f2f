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
from pathlib import Path


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
