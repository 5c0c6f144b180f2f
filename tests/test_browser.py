"""Browser tests: Playwright drives Debian's Chromium against one real `streamlit run` per module.

The server gets its own $NESY_HOME, seeded through the kb API; each test talks to the same
workspace (tests point $NESY_HOME at it too, so jobs and the store see what the app sees).
Screenshots of every page land in test-artifacts/.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distill import jobs
from kb.jsonl import export_jsonl
from kb.schema import Entry, Source
from kb.store import KBStore

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "NESY_HOME": str(home)}
    env.pop("NESY_JOB_DIR", None)
    log = open(home / "streamlit.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("streamlit did not become healthy")


def seed_entry(i: int, **kw) -> Entry:
    return Entry(id=f"b{i:03d}", task=kw.pop("task", "gsm8k"), status=kw.pop("status", "accepted"),
                 title=f"Entry {i}", learning_summary=f"Read the question twice; case {i}.",
                 supplementary_knowledge=f"Fact {i}: multiply before adding.",
                 concepts=kw.pop("concepts", ["order of operations"] if i % 2 else ["units"]),
                 source=Source(kind="error_analysis", dataset="gsm8k", question=f"Question {i}?"), **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-home")
    kb = KBStore(home / "kb.sqlite")
    for i in range(12):
        kb.add(seed_entry(i), by="seed")
    kb.close()
    port = free_port()
    proc = start_streamlit(home, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield {"url": url, "home": home}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def home(server, monkeypatch) -> Path:
    """This test talks to the server's workspace."""
    monkeypatch.setenv("NESY_HOME", str(server["home"]))
    return server["home"]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


# ----------------------------------------------------------------------------------- helpers

def open_page(page, url: str) -> None:
    page.goto(url)
    page.locator('[data-testid="stMain"] h1').first.wait_for()  # every page has a title
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Knowledge base").wait_for()
    settle(page)


def settle(page) -> None:
    """Wait until the script run finished (the running indicator is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=TIMEOUT_MS)
    page.wait_for_timeout(200)


def widget(page, key: str):
    """The element Streamlit tags with class st-key-<key> (other characters become '-')."""
    return page.locator(f'.st-key-{re.sub(r"[^A-Za-z0-9_-]", "-", key)}').first


def fill(page, key: str, value: str) -> None:
    box = widget(page, key).locator("input, textarea").first
    box.fill(value)
    box.press("Tab")  # commit the value (text inputs commit on blur)


def choose(page, key: str, option: str) -> None:
    widget(page, key).get_by_role("combobox").click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def sign_in(page, name: str = "Ada") -> None:
    """Type a curator name in the sidebar (never prefilled; jobs and deletions need it)."""
    box = page.get_by_label("Your name (needed to start jobs or delete)")
    box.fill(name)
    box.press("Enter")
    settle(page)


def click(page, name: str) -> None:
    page.get_by_role("button", name=name).first.click()
    settle(page)


def shot(page, artifacts_dir: Path, name: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:  # widgets load their code lazily; give them a moment so the picture is not placeholders
        page.wait_for_function("() => document.querySelectorAll("
                               "'[data-testid=stMain] [data-testid=stSkeleton]').length <= 1",
                               timeout=15_000)
    except PlaywrightTimeout:
        pass
    page.screenshot(path=str(artifacts_dir / f"screenshot-{name}.png"), full_page=True)


# ------------------------------------------------------------------------------------- tests

def test_edit_an_entry_and_see_it_saved(server, home, page, artifacts_dir):
    open_page(page, server["url"])
    page.get_by_text("Knowledge base").first.wait_for()
    shot(page, artifacts_dir, "kb")
    open_page(page, server["url"] + "/?entry=b003")
    fill(page, "kb-editor:b003:1:title", "Saved from the browser")
    click(page, "Save")
    page.get_by_text("Saved version 2.").wait_for()
    entry = KBStore().get("b003")
    assert entry.title == "Saved from the browser" and entry.version == 2


def test_two_editors_see_a_conflict_instead_of_overwriting(server, home, browser, artifacts_dir):
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        context.set_default_timeout(TIMEOUT_MS)
        pages.append(context.new_page())
    alice, bob = pages
    for p in pages:
        open_page(p, server["url"] + "/?entry=b005")
        widget(p, "kb-editor:b005:1:title").wait_for()
    fill(alice, "kb-editor:b005:1:title", "Alice was first")
    click(alice, "Save")
    alice.get_by_text("Saved version 2.").wait_for()
    fill(bob, "kb-editor:b005:1:title", "Bob was second")
    click(bob, "Save")
    bob.get_by_text(re.compile("Not saved: .* saved this entry")).wait_for()
    shot(bob, artifacts_dir, "kb-conflict")
    assert KBStore().get("b005").title == "Alice was first"
    for p in pages:
        p.context.close()


def test_graph_finds_and_focuses_a_node(server, home, page, artifacts_dir):
    open_page(page, server["url"] + "/graph")
    frame = page.frame_locator("iframe").first
    frame.locator("canvas").first.wait_for()
    shot(page, artifacts_dir, "graph")
    fill(page, "graph:find", "b007")
    settle(page)
    choose(page, "graph:focus", "entry:b007")
    page.get_by_text("3 nodes (1 entries)").wait_for()
    frame = page.frame_locator("iframe").first
    frame.locator("canvas").first.wait_for()
    counts = page.frames[-1].evaluate("() => network.body.data.nodes.length")
    assert counts == 3
    assert widget(page, "graph:node").inner_text().strip().startswith("Entry in this view")
    widget(page, "graph-editor:b007:1:title").wait_for()


def test_start_and_cancel_a_job(server, home, page, artifacts_dir):
    open_page(page, server["url"] + "/jobs")
    page.get_by_text("Check the job runner").click()
    click(page, "Start self-test job")
    page.get_by_text("Type your name in the sidebar to start jobs").wait_for()
    assert jobs.list_jobs() == []
    sign_in(page)
    click(page, "Start self-test job")
    page.get_by_text("Follow it on the Jobs page").wait_for()
    open_page(page, server["url"] + "/jobs")
    page.get_by_text("Status: running").wait_for()
    page.get_by_text(re.compile(r"selftest \d+/60")).wait_for()  # the live progress bar
    shot(page, artifacts_dir, "jobs")
    click(page, "Cancel")
    page.get_by_text("Status: cancelled").wait_for(timeout=TIMEOUT_MS)
    [job] = jobs.list_jobs()
    assert job.status == "cancelled" and job.exit_code == 3


def test_export_then_reimport(server, home, page, artifacts_dir, tmp_path):
    open_page(page, server["url"] + "/transfer")
    shot(page, artifacts_dir, "transfer")
    with page.expect_download() as download:
        page.get_by_role("button", name=re.compile(r"Download \d+ entries")).click()
    saved = tmp_path / "kb.jsonl"
    download.value.save_as(saved)
    expected = tmp_path / "expected.jsonl"
    kb = KBStore()
    export_jsonl(kb, expected, status=["accepted"])
    assert saved.read_bytes() == expected.read_bytes() and saved.read_bytes()
    kb.delete("b010", expected_version=None, by="test")
    page.locator('input[type="file"]').set_input_files(str(saved))
    settle(page)
    page.get_by_text(re.compile(r"\d+ ids already exist")).wait_for()
    widget(page, "x:policy").get_by_text("keep mine (skip)").click()
    settle(page)
    click(page, "Apply: import 12 entries")
    page.get_by_text(re.compile("Imported: 1 added, 0 overwritten, 11 skipped")).wait_for()
    assert KBStore().get("b010").title == "Entry 10"


def test_every_page_renders_and_is_captured(server, home, page, artifacts_dir):
    for name in ("distill", "train", "compare", "evaluate"):
        open_page(page, f"{server['url']}/{name}")
        assert not page.locator('[data-testid="stException"]').count(), name
        shot(page, artifacts_dir, name)


@pytest.mark.slow
def test_compare_with_the_embedded_student(server, home, page, artifacts_dir):
    open_page(page, server["url"] + "/compare")
    fill(page, "cmp:max-new", "32")
    fill(page, "cmp:question", "A box has 4 rows of 3 eggs. How many eggs are in the box?")
    fill(page, "cmp:gold", "12")
    settle(page)
    click(page, "Answer both ways")
    page.get_by_text("Retrieved knowledge").wait_for(timeout=300_000)
    assert page.get_by_text("Without knowledge").count() and page.get_by_text("With knowledge").count()
    page.get_by_text(re.compile(r"0\.\d{3}\s+b0\d\d")).first.wait_for()  # entries with scores
    shot(page, artifacts_dir, "compare-result")
