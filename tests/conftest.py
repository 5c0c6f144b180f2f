"""Shared test fixtures: every test gets its own empty workspace; converted models are shared.

Environment for every test: offline model hub, a fresh $NESY_HOME per test, and $NESY_MODELS
pointing at one cache under the repo (.cache/models) so the student GGUF->HF conversion and the
teacher assembly happen once per machine, not once per test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))

# Hypothesis (tests/test_kb_fuzz.py). CI=true: the same examples on every run (derandomize is a
# fixed seed), a bounded number of them, no per-example deadline (shared cores are slow and
# uneven) and no example database, so CI time is predictable and a failure reproduces anywhere.
# Locally: fresh random examples each run, failures remembered and replayed first. Hypothesis'
# own files (example database, caches) go to .cache/hypothesis, not a .hypothesis/ in the cwd.
set_hypothesis_home_dir(REPO / ".cache" / "hypothesis")
settings.register_profile("ci", derandomize=True, max_examples=40, deadline=None, database=None, print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $NESY_HOME for each test."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("NESY_HOME", str(home))
    monkeypatch.delenv("NESY_JOB_DIR", raising=False)
    return home


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, reports)."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def pytest_collection_modifyitems(items):
    """Browser tests drive a real Streamlit server whose reruns can replace an element between
    Playwright finding it and acting on it; on 2 shared cores that race is real. Such transient
    browser errors get one more try; an assertion about what the page shows never does."""
    import pytest

    transient = [r"not attached to the DOM", r"Timeout \d+ms exceeded", r"Target (page|closed)"]
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=transient))


_RETRIED: list[str] = []


def pytest_runtest_logreport(report):
    """Remember why a browser test was retried: a retry that passes leaves no trace otherwise."""
    if report.outcome == "rerun":
        text = report.longreprtext.splitlines()
        error = next((line[1:].strip() for line in text if line.startswith("E ")), "?")
        where = next((line.split(": ")[0] for line in reversed(text) if re.match(r"\S+\.py:\d+: ", line)), "?")
        _RETRIED.append(f"{report.nodeid} ({report.when}, {where}): {error}")


def pytest_terminal_summary(terminalreporter):
    for line in _RETRIED:
        terminalreporter.write_line(f"retried after a transient browser error: {line}")
