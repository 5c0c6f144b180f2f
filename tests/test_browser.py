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
from waiting import wait_until

from distill import jobs
from kb.jsonl import export_jsonl
from kb.schema import Entry, Source
from kb.store import KBStore

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
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
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app" / "main.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


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
    return Entry(
        id=f"b{i:03d}",
        task=kw.pop("task", "gsm8k"),
        status=kw.pop("status", "accepted"),
        title=f"Entry {i}",
        learning_summary=f"Read the question twice; case {i}.",
        supplementary_knowledge=f"Fact {i}: multiply before adding.",
        concepts=kw.pop("concepts", ["order of operations"] if i % 2 else ["units"]),
        source=Source(kind="error_analysis", dataset="gsm8k", question=f"Question {i}?"),
        **kw,
    )


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
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(200)


def widget(page, key: str):
    """The element Streamlit tags with class st-key-<key> (other characters become '-')."""
    return page.locator(f".st-key-{re.sub(r'[^A-Za-z0-9_-]', '-', key)}").first


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


def scroll_to(locator) -> None:
    """Scroll an element into view (for a screenshot). Streamlit may redraw it between Playwright
    finding it and scrolling ("not attached to the DOM"): the locator finds it again."""
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(3):
        try:
            return locator.scroll_into_view_if_needed(timeout=TIMEOUT_MS)
        except PlaywrightError as e:
            if "not attached" not in str(e) or attempt == 2:
                raise


def shot(page, artifacts_dir: Path, name: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:  # widgets load their code lazily; give them a moment so the picture is not placeholders
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=stMain] [data-testid=stSkeleton]').length <= 1",
            timeout=15_000,
        )
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
    page.get_by_text(re.compile(r"^3 of \d+ nodes shown \(1 entries\)")).wait_for()
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


def page_text(page) -> str:
    return page.evaluate("() => document.querySelector('[data-testid=stMain]').innerText")


def answer_events(job_id: str) -> list[dict]:
    from distill.progress import read_jsonl

    return read_jsonl(jobs.home() / "jobs" / job_id / "answer_events.jsonl")


@pytest.mark.slow
def test_compare_streams_tokens_in_the_background_and_cancels(server, home, page, artifacts_dir):
    """The embedded student answers in a job; the page shows tokens while they come, the exact
    prompts and the retrieved entries with scores; Cancel stops it."""
    open_page(page, server["url"] + "/compare")
    sign_in(page)
    fill(page, "cmp:max-new", "1024")
    fill(page, "cmp:question", "A box has 4 rows of 3 eggs. How many eggs are in the box?")
    fill(page, "cmp:gold", "12")
    settle(page)
    click(page, "Answer both ways")
    job = wait_until(lambda: next((j for j in jobs.list_jobs() if j.kind == "compare"), None), 30, "the job")
    tokens = wait_until(
        lambda: (
            [e for e in answer_events(job.id) if e["event"] == "token"][:4]
            if len([e for e in answer_events(job.id) if e["event"] == "token"]) >= 4
            else None
        ),
        600,
        "streamed tokens",
    )
    loaded = next(e for e in answer_events(job.id) if e["event"] == "loaded")
    print(
        f"first token {tokens[0]['time'] - loaded['time']:.2f} s after the student was loaded "
        f"(loading {loaded['seconds']:.1f} s; load average {os.getloadavg()[0]:.1f})"
    )
    streamed = "".join(t["text"] for t in tokens).strip()
    page.wait_for_function(
        "(t) => document.querySelector('[data-testid=stMain]').innerText.includes(t)", arg=streamed, timeout=TIMEOUT_MS
    )  # on screen while the job still runs
    assert jobs.get(job.id).active
    page.get_by_text("The exact prompt").first.wait_for()
    page.get_by_text("Without knowledge").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(artifacts_dir / "screenshot-compare-streaming.png"))
    widget(page, "cmp:cancel").get_by_role("button").click()
    page.get_by_text("Cancelled: the answers stop where they were.").wait_for(timeout=TIMEOUT_MS)
    assert jobs.get(job.id).status == "cancelled"
    scroll_to(page.get_by_text("Cancelled: the answers stop where they were."))
    page.screenshot(path=str(artifacts_dir / "screenshot-compare-cancelled.png"))
    fill(page, "cmp:max-new", "16")
    settle(page)
    click(page, "Answer both ways")
    page.get_by_text("Retrieved knowledge").wait_for(timeout=600_000)
    page.get_by_text(re.compile(r"^Answer: .*(correct|wrong)")).nth(1).wait_for(timeout=600_000)
    page.get_by_text(re.compile(r"0\.\d{3}\s+b0\d\d")).first.wait_for()  # entries with their scores
    page.get_by_text("The exact prompt").nth(1).click()
    page.get_by_text(re.compile("Supplementary knowledge: Fact")).first.wait_for()  # the with-side prompt
    scroll_to(page.get_by_text("Retrieved knowledge"))
    page.screenshot(path=str(artifacts_dir / "screenshot-compare-result.png"))
    # answered, the student stays loaded for the next comparison: its session job still runs
    page.get_by_text(re.compile("The student stays loaded for the next comparison")).wait_for(timeout=TIMEOUT_MS)
    warm = next(j for j in jobs.list_jobs() if j.kind == "compare")
    assert warm.id != job.id and warm.active  # the cancelled session is not reused
    jobs.wait(jobs.cancel(warm.id, grace=5).id, timeout=60)  # not left idling after the module


# ------------------------------------------------ curation: selection, review, trash, first run
# (these run last: they change statuses and delete, which the export test above must not see)


def tick_row(page, row: int) -> None:
    """Tick the checkbox of a table row (0 = first data row) in the canvas grid, and wait for the
    app to report the new selection (a click that landed during a rerun is repeated)."""
    before = selection_caption(page)
    from playwright.sync_api import Error as PlaywrightError

    for _ in range(3):
        grid = page.locator('[data-testid="stDataFrame"]').first
        try:
            scroll_to(grid)
            box = grid.bounding_box()
        except PlaywrightError:  # the grid was replaced by a rerun between finding and scrolling
            settle(page)
            continue
        header = row_height = 35
        page.mouse.click(box["x"] + 20, box["y"] + header + row_height * row + row_height / 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            page.wait_for_timeout(250)
            if selection_caption(page) != before:
                settle(page)
                return
    raise AssertionError(f"ticking row {row} changed nothing ({before!r})")


def pick(page, key: str, option: str) -> None:
    """choose(), repeated when the list closed under a rerun (shared cores make reruns slow)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        settle(page)
        widget(page, key).get_by_role("combobox").click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            continue
        settle(page)
        return
    raise AssertionError(f"could not choose {option!r} in {key}")


def selection_caption(page) -> str:
    return page.locator('[data-testid="stCaptionContainer"]', has_text=" selected").first.inner_text()


def sort_by_id(page) -> None:
    pick(page, "kb:sort", "id")


def test_selection_follows_entries_across_filter_changes_and_bulk_actions(server, home, page, artifacts_dir):
    open_page(page, server["url"])
    sort_by_id(page)  # b011, b010, … (descending)
    tick_row(page, 0)
    tick_row(page, 1)
    assert selection_caption(page) == "2 selected: b011, b010"
    shot(page, artifacts_dir, "kb-selection")
    pick(page, "kb:concept", "units")  # the even entries: the first rows are other entries now
    assert selection_caption(page) == "0 selected"
    assert page.get_by_role("button", name="Delete selected").is_disabled()
    sign_in(page, "Ada")  # a rerun of the same view: the browser sends no stale ticks back
    assert selection_caption(page) == "0 selected"
    tick_row(page, 0)
    assert selection_caption(page) == "1 selected: b010"
    click(page, "Reject selected")
    page.get_by_text("Reject this entry? Nothing changes until you confirm.").wait_for()
    from playwright.sync_api import expect

    expect(widget(page, "kb:bulk-ids")).to_have_text("b010")  # the confirmation lists the id
    click(page, "Confirm: reject 1 entry")
    page.get_by_text("Marked 1 entry rejected: b010.").wait_for()
    assert selection_caption(page) == "0 selected"
    shot(page, artifacts_dir, "kb-after-bulk")
    sign_in(page, "Ada B")  # another rerun of the same view: still nothing ticked
    assert selection_caption(page) == "0 selected"
    assert KBStore().get("b010").status == "rejected" and KBStore().get("b008").status == "accepted"
    # "select all" names its scope and resets when the filter changes
    widget(page, "kb:scope").get_by_text("All 6 matching").click()
    settle(page)
    assert selection_caption(page) == "6 selected: every entry matching the filters"
    pick(page, "kb:concept", "(any)")
    assert selection_caption(page) == "0 selected"
    widget(page, "kb:scope").get_by_text("Ticked rows").locator("..").wait_for()
    KBStore().set_status(["b010"], "accepted", by="test")  # leave the seed as it was


def test_review_card_with_keyboard_shortcuts(server, home, page, artifacts_dir):
    kb = KBStore()
    for i in range(3):
        kb.add(
            seed_entry(40 + i, status="pending").model_copy(
                update={
                    "source": Source(
                        kind="error_analysis",
                        dataset="gsm8k",
                        question=f"Sam has {i + 3} boxes of 4 pens. How many pens?",
                        student_response=f"Sam has {i + 7} pens.",
                    )
                }
            ),
            by="seed",
        )
    open_page(page, server["url"])
    widget(page, "kb:view").get_by_text("Review one by one").click()
    settle(page)
    widget(page, "kb:status").get_by_role("combobox").click()
    page.get_by_role("option", name="pending", exact=True).click()
    settle(page)
    page.keyboard.press("Escape")
    card = widget(page, "kb-review-card")
    card.get_by_text("Entry 1 of 3 matching the filters").click()  # focus outside any text box
    card.get_by_text("Sam has 3 boxes of 4 pens. How many pens?").wait_for()
    card.get_by_text("Sam has 7 pens.").wait_for()
    card.get_by_text("Fact 40: multiply before adding.").wait_for()
    scroll_to(card)
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "screenshot-kb-review.png"))
    page.keyboard.press("a")
    settle(page)
    card.get_by_text("Sam has 4 boxes of 4 pens. How many pens?").wait_for()
    assert KBStore().get("b040").status == "accepted"
    page.keyboard.press("n")
    settle(page)
    card.get_by_text("Sam has 5 boxes of 4 pens. How many pens?").wait_for()
    page.keyboard.press("x")
    settle(page)
    deadline = time.monotonic() + 15  # the key may land during a rerun on loaded cores
    while KBStore().get("b042").status != "rejected" and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert KBStore().get("b042").status == "rejected" and KBStore().get("b041").status == "pending"
    page.get_by_text("You reached the end of the 1 entry matching the filters.").wait_for()


def test_trash_restores_a_deleted_entry(server, home, page, artifacts_dir):
    open_page(page, server["url"])
    sign_in(page)
    sort_by_id(page)
    tick_row(page, 0)
    first = selection_caption(page).split(": ")[1]
    click(page, "Delete selected")
    click(page, "Confirm: delete 1 entry")
    page.get_by_text(f"Deleted 1 entry: {first} (restorable from the Trash).").wait_for()
    widget(page, "kb:view").get_by_text(re.compile(r"Trash \(\d+\)")).click()
    settle(page)
    widget(page, f"kb:trash-{first}").get_by_text(re.compile("deleted by Ada")).wait_for()
    shot(page, artifacts_dir, "kb-trash")
    widget(page, f"kb:trash-{first}").get_by_role("button", name="Restore").click()
    settle(page)
    page.get_by_text(re.compile(f"Restored {first} as version \\d+")).wait_for()
    assert KBStore().get(first)


def test_first_open_is_named_explained_and_fully_offline(server, home, browser, artifacts_dir):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    open_page(page, server["url"])
    page.get_by_text("Welcome to NeSy Studio").wait_for()
    page.get_by_text(re.compile("distils the reasoning of a large teacher LLM")).wait_for()
    shot(page, artifacts_dir, "first-open")
    for name in ("graph", "transfer", "distill", "train", "jobs", "compare", "evaluate"):
        page.locator('[data-testid="stSidebarNav"] a').nth(0).wait_for()
        page.goto(f"{server['url']}/{name}")
        page.locator('[data-testid="stMain"] h1').first.wait_for()
        settle(page)
    page.wait_for_timeout(1500)  # late favicon / font requests
    icon = page.evaluate("() => [...document.querySelectorAll('link[rel*=icon]')].map(l => l.href)")
    context.close()
    local = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:", "about:")
    assert requests and all(url.startswith(local) for url in requests), [
        url for url in requests if not url.startswith(local)
    ]
    assert icon and all(href.startswith(local) for href in icon), icon


def test_kb_page_is_readable_at_820_px(server, home, browser, artifacts_dir):
    context = browser.new_context(viewport={"width": 820, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    open_page(page, server["url"])
    labels = ["Search", "Mode", "Status", "Task", "Concept", "Source", "Sort by", "Descending"]
    for text in labels:
        label = page.locator(
            '[data-testid="stMain"] [data-testid="stWidgetLabel"]', has_text=re.compile(f"^{text}$")
        ).first
        label.wait_for()
        box = label.bounding_box()
        clipped = label.evaluate("e => [...e.querySelectorAll('*'), e].some(n => n.scrollWidth > n.clientWidth + 1)")
        assert box["width"] >= 40 and not clipped, (text, box)
    grid = page.locator('[data-testid="stDataFrame"]').first
    assert grid.bounding_box()["width"] >= 480
    for name in ("Accept selected", "Reject selected", "Delete selected"):
        button = page.get_by_role("button", name=name)
        assert not button.evaluate(
            "e => [...e.querySelectorAll('*'), e].some(n => n.scrollWidth > n.clientWidth + 1)"
        ), name
    shot(page, artifacts_dir, "kb-820px")
    scroll_to(grid)
    page.screenshot(path=str(artifacts_dir / "screenshot-kb-820px-table.png"))
    context.close()


def graph_frame(page):
    """The frame holding the vis-network graph, once its layout has settled (physics off)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if frame.evaluate("() => window.nesySettled === true"):
                    return frame
            except Exception:  # noqa: BLE001 - a frame being replaced
                pass
        page.wait_for_timeout(250)
    raise TimeoutError("the graph did not settle")


def node_positions(frame) -> dict:
    return frame.evaluate("() => network.getPositions()")


def click_node(page, frame, node: str) -> None:
    """Click a node where vis-network drew it (canvas coordinates -> page coordinates)."""
    frame.frame_element().evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    spot = frame.evaluate(
        """(node) => {
        const pos = network.getPositions([node])[node];
        const dom = network.canvasToDOM(pos);
        const box = document.getElementById('mynetwork').getBoundingClientRect();
        return {x: box.left + dom.x, y: box.top + dom.y};
    }""",
        node,
    )
    box = frame.frame_element().bounding_box()
    page.mouse.click(box["x"] + spot["x"], box["y"] + spot["y"])
    settle(page)


def test_graph_click_opens_the_entry_and_the_layout_is_stable(server, home, page, artifacts_dir):
    open_page(page, server["url"] + "/graph")
    frame = graph_frame(page)
    first = node_positions(frame)
    assert frame.evaluate("() => network.physics.options.enabled") is False  # settled: physics off
    page.get_by_text(re.compile(r"^\d+ of \d+ nodes shown")).wait_for()
    frame.evaluate("() => { window.nesyMark = 1; }")
    click_node(page, frame, "entry:b007")
    widget(page, "graph-editor:b007:1:title").wait_for()
    assert frame.evaluate("() => window.nesyMark") == 1  # the rerun kept the page: same layout
    shot(page, artifacts_dir, "graph-click")
    click_node(page, frame, "entry:b004")
    widget(page, "graph-editor:b004:1:title").wait_for()
    open_page(page, server["url"] + "/graph")  # a new session: the same seeded layout
    again = node_positions(graph_frame(page))
    assert again.keys() == first.keys()
    assert all(abs(again[n]["x"] - first[n]["x"]) < 1 and abs(again[n]["y"] - first[n]["y"]) < 1 for n in first)


# ------------------------------------------- jobs that produced nothing, joined curves, configs, impact
# (last: they add jobs, which test_start_and_cancel_a_job above counts)


def test_jobs_page_shows_why_a_job_failed_and_one_curve_for_a_resumed_job(server, home, page, artifacts_dir):
    from openai_stub import Scripted, serve

    Scripted.answers, Scripted.calls = ["The answer is 999999."], []
    with serve(Scripted) as url:
        empty = jobs.wait(
            jobs.submit(
                [
                    "teach",
                    "rationales",
                    "--dataset",
                    "gsm8k",
                    "--limit",
                    "2",
                    "--teacher",
                    url,
                    "--model",
                    "stub",
                    "--api-key-env",
                    "",
                    "--out",
                    "none-kept",
                ],
                "teach-rationales",
                name="rationales that all failed",
            ).id,
            timeout=120,
        )
    assert empty.status == "failed"
    ckpt = home / "cache" / "browser-selftest.txt"
    ckpt.parent.mkdir(exist_ok=True)
    first = jobs.submit(
        ["jobs", "selftest", "--steps", "30", "--seconds-per-step", "0.05", "--checkpoint", str(ckpt)],
        "selftest",
        name="counting to 30",
    )
    wait_until(lambda: (jobs.progress(first.id) or {}).get("step", 0) >= 5, 60, "step 5")
    jobs.wait(jobs.cancel(first.id).id, timeout=30)
    resumed = jobs.wait(jobs.resume(first.id).id, timeout=90)
    open_page(page, server["url"] + "/jobs")
    pick(page, "jobs:pick", f"{empty.id} · {empty.name} · failed")
    page.get_by_text(re.compile("produced nothing: kept 0 of 2 rationales")).first.wait_for()
    assert not page.get_by_text("Train a student on these rationales").count()
    assert not page.get_by_role("button", name="Resume").count()
    shot(page, artifacts_dir, "jobs-produced-nothing")
    pick(page, "jobs:pick", f"{resumed.id} · {resumed.name} · succeeded")
    page.get_by_text(re.compile(r"Curves join the 2 runs of this job .* steps 1–30")).wait_for()
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    shot(page, artifacts_dir, "jobs-resumed-curve")


def test_train_config_saved_in_the_browser_is_the_file_the_cli_reads(server, home, page, artifacts_dir):
    from distill.methods.options import load_config

    (home / "datasets" / "gsm8k-cot").mkdir(parents=True, exist_ok=True)
    (home / "datasets" / "gsm8k-cot" / "records.jsonl").write_text("{}\n")
    (home / "configs").mkdir(exist_ok=True)
    (home / "configs" / "from-cli.yaml").write_text(
        "method: skintern\ndata: gsm8k-cot\noutput: sk-small\nstages: 3\nlora_r: 8\n"
    )
    open_page(page, server["url"] + "/train")
    pick(page, "t:config-pick", "from-cli")
    click(page, "Load config")
    page.get_by_text("Loaded config from-cli (skintern).").wait_for()
    page.get_by_text("nesy train skintern --data gsm8k-cot --output sk-small --lora-r 8 --stages 3").wait_for()
    fill(page, "t:config-name", "saved-here")
    settle(page)
    saved = home / "configs" / "saved-here.yaml"
    for _ in range(3):  # a click that lands during a rerun (loaded cores) is repeated
        click(page, "Save config")
        deadline = time.monotonic() + 15
        while not saved.exists() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        if saved.exists():
            break
    assert saved.exists()
    page.get_by_text(re.compile(r"nesy train skintern --config .*saved-here\.yaml")).first.wait_for()
    shot(page, artifacts_dir, "train-saved-config")
    assert load_config(str(home / "configs" / "saved-here.yaml"), "skintern") == {
        "data": "gsm8k-cot",
        "output": "sk-small",
        "preset": "cpu",
        "lora_r": 8,
        "stages": 3,
    }


def test_impact_columns_and_graph_rings(server, home, page, artifacts_dir):
    from distill.evaluate import record_impact

    record_impact(
        "eval:browser",
        {"b002": {"retrieved": 7, "fixed": 1, "broken": 4, "broken_shared": 2}, "b004": {"retrieved": 3, "fixed": 2}},
    )
    open_page(page, server["url"])
    page.get_by_text(re.compile(r"Impact on answers \(\d+ entries")).click()  # Compare may have added some
    settle(page)
    panel = page.locator('[data-testid="stExpander"]', has_text="Harmful entries first")
    panel.locator('[data-testid="stDataFrame"]').wait_for()
    assert widget(page, "kb:impact-pick").get_by_role("combobox").input_value() == "b002"  # most harmful first
    scroll_to(panel)
    page.screenshot(path=str(artifacts_dir / "screenshot-kb-impact.png"))
    open_page(page, server["url"] + "/graph")
    frame = graph_frame(page)
    ring = frame.evaluate("() => network.body.data.nodes.get('entry:b002')")
    assert ring["impact"] == "harmful" and ring["color"]["border"] == "#d50000"
    assert frame.evaluate("() => network.body.data.nodes.get('entry:b004').impact") == "helpful"
    shot(page, artifacts_dir, "graph-impact")
