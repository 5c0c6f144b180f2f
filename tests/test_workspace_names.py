"""Names the user types never become paths: `nesy train --output` cannot touch anything outside
$NESY_HOME, and the tool deletes only folders it created itself (issue: hardening, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kb.workspace import OWNED_MARKER, InvalidName, NotOwned, check_name, create_owned, named_path, remove_owned

REPO = Path(__file__).resolve().parent.parent


def nesy(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NESY_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def victim(root: Path) -> Path:
    folder = root / "precious"
    folder.mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    return folder


@pytest.mark.parametrize("how", ["absolute", "traversal"])
def test_train_output_outside_the_workspace_is_refused_and_nothing_is_removed(tmp_path, how):
    home, target = tmp_path / "home", victim(tmp_path / "outside")
    home.mkdir()
    value = str(target) if how == "absolute" else "../../outside/precious"
    (home / "adapters").mkdir()
    run = nesy("train", "std-cot", "--data", "no-such-set", "--output", value, home=home)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --output"), run.stderr
    assert (target / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in (home / "adapters").iterdir()) == []


def test_train_refuses_to_replace_a_folder_it_did_not_create(tmp_path):
    home = tmp_path / "home"
    old = victim(home / "adapters")  # e.g. made by hand, or by a version without the marker
    run = nesy("train", "std-cot", "--data", "no-such-set", "--output", old.name, home=home)
    assert run.returncode == 2
    assert "never deleted automatically" in run.stderr and run.stderr.count("\n") == 1
    assert (old / "thesis.txt").exists()


@pytest.mark.parametrize("bad", ["/etc", "../x", "a/b", "..", ".hidden", "", "a\nb", "x" * 101, "a\\b", "C:\\x", "é"])
def test_names_are_plain(bad, workspace):
    with pytest.raises(InvalidName, match="--output"):
        named_path("adapters", bad, "--output")


def test_a_symlinked_name_is_refused(workspace, tmp_path):
    target = victim(tmp_path / "elsewhere")
    (workspace / "adapters").mkdir(parents=True)
    (workspace / "adapters" / "link").symlink_to(target)
    with pytest.raises(InvalidName):
        named_path("adapters", "link", "--output")


def test_only_marked_folders_are_removed(workspace):
    mine = create_owned(named_path("adapters", "mine", "--output"))
    (mine / "weights").write_text("x")
    remove_owned(mine)
    assert not mine.exists()
    theirs = named_path("adapters", "theirs", "--output")
    theirs.mkdir()
    with pytest.raises(NotOwned):
        remove_owned(theirs)
    assert theirs.exists() and not (theirs / OWNED_MARKER).exists()
    assert check_name("gsm8k-nesycd_v2.1", "--output") == "gsm8k-nesycd_v2.1"
