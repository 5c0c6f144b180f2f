"""App bench: what a user waits for, measured in Chromium against a real `streamlit run`, each
measure beside the plain Streamlit way of showing the same data, in interleaved rounds.

    .venv/bin/python bench/bench_app.py            # README: 10k and 100k entries, graphs of ~500
                                                   # and ~2,000 nodes, 3 rounds
    .venv/bin/python bench/bench_app.py --quick    # 10k entries and the ~500-node graph

The app is started as `make app` starts it: `streamlit run app/main.py --server.address …
--server.port … --server.headless true` from the repo root (so .streamlit/config.toml applies,
with Streamlit's default file watcher) and the Makefile's environment; one fresh server per side
and round, on a free loopback port.

  KB page      per --sizes N entries (paged 50 at a time); ours = app/main.py, plain =
               bench/_plain_kb_app.py (the same st.pagination and st.dataframe over a plain
               sqlite3 query of the same KB: Streamlit's own floor)
                 cold start   process start -> first page rendered  (no target: mostly Streamlit's own start)
                 open         a browser opening the page, server warm: first render  (target < 3 s)
                 page flip    click "Page 2" -> rows 51-100 shown                  (target < 1 s)
               ours only: the page reached from the sidebar, and a text search round trip
  graph        per --graphs N nodes: first draw (the graph can be clicked and zoomed: target
               < 3 s at 2,000 nodes), and until the layout is final (physics off, kb.graph);
               ours = the Graph page (caches warm), plain = the same kb.graph.render_html page
               opened straight in the browser (vis-network alone); ours only: redraw and zoom
               (interactive = tens of ms)
  compare      the Compare page with the embedded student (a warm session job): after a first
               comparison has loaded it, click "Answer both ways" -> the first streamed token on
               screen (target < 2 s), beside the session's own request -> first token time from
               its events (the page polls them twice a second)
  job polling  the data of one Jobs page refresh with --jobs jobs (list + progress of each), and
               of one running job's detail (status, metrics, log tail), against the page's 2 s
               refresh interval (no browser)

Ratios (bench/_measure.py: median with its min–max, machine load): ours/plain seconds, i.e. how
many times the plain page's wait ours takes; polling time / refresh interval. Each workspace is
seeded through the kb store's bulk import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
MAKE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(MAKE_ENV)

from _measure import Load, Spread, column, interleave, ratio, timed  # noqa: E402

APP = REPO / "app" / "main.py"
PLAIN_APP = REPO / "bench" / "_plain_kb_app.py"
JOBS_REFRESH_S = 2.0  # app/views/jobs.py: @st.fragment(run_every=2)
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
GRAPH_CAPTION = re.compile(r"\d+ of \d+ nodes shown \(")  # app/views/graph.py


# ------------------------------------------------------------------------------------ seeding


def seed_kb(home: Path, n: int, tasks: int = 10, concepts: int = 50) -> float:
    from kb.schema import Entry, Source
    from kb.store import KBStore

    start = time.perf_counter()
    kb = KBStore(home / "kb.sqlite")
    batch = []
    for i in range(n):
        batch.append(
            Entry(
                id=f"k{i:06d}",
                task=f"task{i % tasks}",
                status=("accepted", "pending", "rejected")[i % 3],
                title=f"Knowledge {i}",
                learning_summary=f"Check each step of problem type {i % 97}; restate the question before computing.",
                supplementary_knowledge=f"Fact {i}: a ratio compares two quantities by division.",
                concepts=[f"concept{i % concepts}"],
                source=Source(kind="error_analysis", dataset="gsm8k", question=f"Question number {i}?"),
            )
        )
        if len(batch) == 5000:
            kb.import_entries(batch, by="bench")
            batch = []
    if batch:
        kb.import_entries(batch, by="bench")
    kb.close()
    return time.perf_counter() - start


def seed_graph(home: Path, nodes: int) -> None:
    """A KB whose graph has about `nodes` nodes: 95 % entries, 1 % tasks, 4 % concepts."""
    seed_kb(home, nodes * 19 // 20, max(1, nodes // 100), max(1, nodes // 25))


def graph_html(home: Path) -> str:
    """The page the Graph view draws for this KB with its default filters (whole graph, 2,000 nodes)."""
    from kb import graph as kbgraph
    from kb.store import KBStore

    shown, _ = kbgraph.cap_graph(kbgraph.build_graph(KBStore(home / "kb.sqlite")), 2000)
    return kbgraph.render_html(shown, max_nodes=shown.number_of_nodes() or 1, height="700px")


# ------------------------------------------------------------------------------ server/browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `streamlit run <script>` for one workspace, as `make app` runs it; stopped on exit."""

    def __init__(self, home: Path, script: Path = APP):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(script),
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(self.port),
                "--server.headless",
                "true",
            ],
            cwd=REPO,
            env={**os.environ, "NESY_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("streamlit did not start")


@contextlib.contextmanager
def new_page(browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        yield page
    finally:
        page.close()


def rendered(page, text: str | re.Pattern, timeout_ms: int = 120_000) -> None:
    page.get_by_text(text).first.wait_for(timeout=timeout_ms)


def timed_open(page, url: str, marker) -> float:
    return timed(lambda: (page.goto(url), rendered(page, marker)))


# ------------------------------------------------------------------------------------- benches


def kb_page(browser, home: Path, n: int, script: Path = APP) -> dict[str, float]:
    """One fresh server: its cold start, then the warm KB page (the plain page has no sidebar
    and no text search)."""
    first_page = f"1–{min(50, n)} of {n} matching entries"
    out = {}
    with Server(home, script) as server, new_page(browser) as page:
        server.wait_healthy()
        page.goto(server.url)
        rendered(page, first_page)
        out["cold start"] = time.perf_counter() - server.started
        out["open"] = timed_open(page, server.url, first_page)
        if script == APP:
            timed_open(page, server.url + "/jobs", "Jobs")
            out["via sidebar"] = timed(
                lambda: (  # in-app navigation: what a user does most
                    page.locator('[data-testid="stSidebarNav"]').get_by_text("Knowledge base").click(),
                    rendered(page, first_page),
                )
            )
        flip_button = page.get_by_role("button", name="Page 2", exact=True)
        flip_button.wait_for()  # the pager's code loads lazily; time the rerun, not that
        out["page flip"] = timed(
            lambda: (flip_button.click(), rendered(page, f"51–{min(100, n)} of {n} matching entries"))
        )
        if script == APP:
            out["text search"] = timed(lambda: text_search(page, n // 2))
    return out


def text_search(page, i: int) -> None:
    """Search for entry i's own words; done when the one short page of hits shows it."""
    box = page.locator(".st-key-kb-text input")
    box.fill(f"ratio {i}")
    box.press("Enter")
    rendered(page, re.compile(r"^1–(\d+) of \1 matching entries$"))
    page.get_by_text(f"k{i:06d}").first.wait_for(state="attached")  # grid cells are a canvas


def graph_page(browser, home: Path) -> dict[str, float]:
    """The Graph page on a fresh server, its caches warmed by a first visit."""
    with Server(home) as server, new_page(browser) as page:
        server.wait_healthy()
        timed_open(page, server.url + "/graph", GRAPH_CAPTION)  # warm the caches
        start = time.perf_counter()
        page.goto(server.url + "/graph")
        rendered(page, GRAPH_CAPTION)
        page.frame_locator("iframe").first.locator("canvas").first.wait_for(timeout=120_000)
        first_draw = time.perf_counter() - start
        frame = next(
            f
            for f in page.frames
            if f != page.main_frame and "network" in f.evaluate("() => Object.keys(window).join(' ')")
        )
        settled = layout_settled(frame, start)
        redraw = frame.evaluate(
            "() => { const t = performance.now(); network.redraw(); return performance.now() - t; }"
        )
        zoom = frame.evaluate(
            "() => { const t = performance.now(); network.moveTo({scale: 1.7}); "
            "network.redraw(); return performance.now() - t; }"
        )
        nodes = frame.evaluate("() => network.body.data.nodes.length")
    return {"first draw": first_draw, "layout settled": settled, "redraw ms": redraw, "zoom ms": zoom, "nodes": nodes}


def graph_plain(browser, html: str) -> dict[str, float]:
    """The same vis-network page opened straight in the browser: no Streamlit, no component."""
    with new_page(browser) as page:
        start = time.perf_counter()
        page.set_content(html)
        page.locator("canvas").first.wait_for(timeout=120_000)
        first_draw = time.perf_counter() - start
        return {"first draw": first_draw, "layout settled": layout_settled(page.main_frame, start)}


def layout_settled(frame, start: float) -> float:
    """Seconds since `start` until physics has settled the layout and was switched off
    (kb.graph's CLICK_SCRIPT sets window.nesySettled); inf after 300 s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        frame.wait_for_function("() => window.nesySettled === true", timeout=300_000)
        return time.perf_counter() - start
    except PlaywrightTimeout:
        return float("inf")


COMPARE_QUESTIONS = [
    "Tom has 3 apples and buys 2 more. How many apples does he have?",
    "A box holds 4 rows of 3 eggs. How many eggs are in the box?",
    "Sara reads 12 pages a day. How many pages does she read in 5 days?",
    "A pen costs 2 dollars. How much do 7 pens cost?",
    "There are 30 students and 6 leave. How many students stay?",
]


def compare_page(browser, home: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds from the click to the first streamed tokens (3) on screen, per warm comparison, and
    where they went (the request file's time and the session's events)."""
    from distill import jobs

    os.environ["NESY_HOME"] = str(home)
    seed_kb(home, 200)
    out = {"on screen": [], "click -> written": [], "written -> start": [], "start -> first token": []}
    with Server(home) as server, new_page(browser) as page:
        server.wait_healthy()
        page.goto(server.url + "/compare")
        rendered(page, "Answer both ways")
        page.get_by_label("Your name (needed to start jobs or delete)").fill("bench")
        page.get_by_label("Your name (needed to start jobs or delete)").press("Enter")
        for i, question in enumerate(COMPARE_QUESTIONS[: rounds + 1]):
            box = page.locator(".st-key-cmp-question textarea")
            box.fill(question)
            box.press("Tab")
            page.wait_for_timeout(500)  # the rerun that commits the question
            served = len(session_events(home, "served"))
            start, clicked = time.perf_counter(), time.time()
            page.get_by_role("button", name="Answer both ways").click()
            first = first_tokens(home, served)
            on_screen = "(t) => document.querySelector('[data-testid=stMain]').innerText.includes(t)"
            page.wait_for_function(on_screen, arg=first, timeout=600_000)
            seconds = time.perf_counter() - start
            until(lambda: len(session_events(home, "served")) > served)
            if i:  # the first comparison loads the student: not a warm measure
                out["on screen"].append(seconds)
                for key, value in session_times(home, clicked).items():
                    out[key].append(value)
        for job in jobs.list_jobs():
            if job.active:
                jobs.cancel(job.id, grace=5)
    return out


def session_events(home: Path, kind: str | None = None) -> list[dict]:
    """The events of the (one) compare session job, or [] before it exists."""
    from distill import answer_session, jobs
    from distill.progress import read_jsonl

    job = next((j for j in jobs.list_jobs() if j.kind == answer_session.KIND), None)
    events = read_jsonl(home / "jobs" / job.id / answer_session.EVENTS) if job else []
    return [e for e in events if kind is None or e["event"] == kind]


def first_tokens(home: Path, served: int, n: int = 3) -> str:
    """The text of the first n streamed tokens of the request after the `served` ones."""

    def tokens() -> str | None:
        events = session_events(home)
        requests = [e["request"] for e in events if e["event"] == "request"]
        found = [
            e["text"]
            for e in events
            if e["event"] == "token" and requests[served:] and e.get("request") == requests[served]
        ]
        return "".join(found[:n]).strip() if len(found) >= n else None

    return until(tokens)


def until(check, timeout: float = 600.0):
    """Poll check() every 20 ms until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check.__qualname__} did not happen within {timeout:g} s")
        time.sleep(0.02)
    return result


def session_times(home: Path, clicked: float) -> dict[str, float]:
    """The last request's path through the session, from its request file and its events."""
    from distill import answer_session, jobs

    job = next(j for j in jobs.list_jobs() if j.kind == answer_session.KIND)
    events = session_events(home)
    last = events[-1]["request"]
    when = {e["event"]: e["time"] for e in reversed(events) if e.get("request") == last}  # first of each
    written = next((home / "jobs" / job.id).glob(f"requests*/{last}.*")).stat().st_mtime
    return {
        "click -> written": written - clicked,
        "written -> start": when["start"] - written,
        "start -> first token": when["token"] - when["start"],
    }


def job_polling(home: Path, jobs_n: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per refresh of the Jobs table and of a running job's detail, `rounds` times."""
    os.environ["NESY_HOME"] = str(home)
    from distill import jobs

    conn = jobs._db()  # registry rows written directly: real processes would only add noise
    now = time.time()
    for i in range(jobs_n):
        job_dir = home / "jobs" / f"j{i:04d}"
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "metrics.jsonl").write_text(
            "".join(f'{{"step": {s}, "total": 1000, "loss": 1.0, "eta": 10}}\n' for s in range(1000))
        )
        (job_dir / "log.txt").write_text("line\n" * 5000)
        conn.execute(
            "INSERT INTO jobs (id, kind, name, argv, status, cwd, created, exit_code) "
            "VALUES (?, 'train', 'x', '[\"train\"]', 'succeeded', '.', ?, 0)",
            (f"j{i:04d}", now + i),
        )
    conn.close()
    running = jobs.submit(["jobs", "selftest", "--steps", "100000", "--seconds-per-step", "0.05"], "selftest")
    reps = 20

    def table() -> float:
        def poll():
            for job in jobs.list_jobs():
                jobs.progress(job.id)

        return timed(lambda: [poll() for _ in range(reps)]) / reps * 1000

    def detail() -> float:
        def poll():
            jobs.get(running.id)
            jobs.progress(running.id)
            jobs.metrics(running.id)
            jobs.log_tail(running.id, 40)

        return timed(lambda: [poll() for _ in range(reps)]) / reps * 1000

    try:
        time.sleep(2)
        return interleave({"table": table, "detail": detail}, rounds)
    finally:
        jobs.cancel(running.id, grace=5)
        jobs.wait(running.id, timeout=30)


# ---------------------------------------------------------------------------------------- main


def show(label: str, ours: list[float], plain: list[float] | None = None, target: str = "", unit: str = " s") -> None:
    line = f"{label}: ours {Spread(ours, unit)}"
    if plain is not None:
        line += f"; plain {Spread(plain, unit)} -> ours/plain {ratio(ours, plain)}"
    print(line + (f"  (target {target})" if target else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="KB entries, comma list")
    parser.add_argument("--graphs", default="500,2000", help="graph nodes, comma list; '' skips")
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the registry for the polling measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="--sizes 10000 --graphs 500")
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="skip the Compare measure")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    graphs = [500] if args.quick else [int(s) for s in args.graphs.split(",") if s]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p, Load() as load:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for n in sizes:
            home = Path(tmp) / f"kb{n}"
            home.mkdir()
            print(f"KB page, {n:,} entries (seeded in {seed_kb(home, n):.1f} s):", flush=True)
            r = interleave(
                {"ours": lambda: kb_page(browser, home, n), "plain": lambda: kb_page(browser, home, n, PLAIN_APP)},
                args.rounds,
            )
            for key, target in (("cold start", ""), ("open", "< 3 s (first render)"), ("page flip", "< 1 s")):
                show(f"  {key}", column(r["ours"], key), column(r["plain"], key), target)
            show("  via sidebar", column(r["ours"], "via sidebar"), target="< 1 s")
            show("  text search", column(r["ours"], "text search"))
        for nodes in graphs:
            home = Path(tmp) / f"graph{nodes}"
            home.mkdir()
            seed_graph(home, nodes)
            html = graph_html(home)
            r = interleave(
                {"ours": lambda: graph_page(browser, home), "plain": lambda: graph_plain(browser, html)}, args.rounds
            )
            print(f"graph, {r['ours'][0]['nodes']:.0f} nodes:")
            for key, target in (("first draw", "< 3 s: interactive"), ("layout settled", "")):
                show(f"  {key}", column(r["ours"], key), column(r["plain"], key), target)
            show("  redraw", column(r["ours"], "redraw ms"), target="interactive", unit=" ms")
            show("  zoom", column(r["ours"], "zoom ms"), target="interactive", unit=" ms")
        if args.compare:
            home = Path(tmp) / "compare"
            home.mkdir()
            r = compare_page(browser, home, args.rounds)
            print("compare, warm student (the embedded 135M), click -> first token:")
            show("  on screen", r["on screen"], target="< 2 s")
            show("  of which: click -> the page wrote the request file", r["click -> written"])
            show("  of which: request file written -> session's start event", r["written -> start"])
            show("  of which: start -> first token event (prefill)", r["start -> first token"])
        browser.close()
        home = Path(tmp) / "jobs"
        home.mkdir()
        print(f"job polling, {args.jobs} jobs:")
        r = job_polling(home, args.jobs, args.rounds)
        for name in ("table", "detail"):
            share = Spread([100 * ms / (1000 * JOBS_REFRESH_S) for ms in r[name]], " %")
            print(f"  {name} poll: {Spread(r[name], ' ms')} = {share} of the {JOBS_REFRESH_S:g} s refresh")
    print(load)


if __name__ == "__main__":
    main()
