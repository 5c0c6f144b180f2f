"""App bench: what a user waits for, measured in Chromium against a real `streamlit run`.

  cold start      streamlit process start -> first page rendered in the browser   (target < 5 s)
  KB page         open the KB page with 10k and 100k entries (paged), and one page flip / text
                  search round trip                                                 (target < 1.5 s)
  graph           graph page with ~500 and ~2,000 nodes: time to first draw, time until the
                  physics layout settles, then redraw and zoom cost (interactive = tens of ms)
  job polling     one poll of the Jobs page data (list + progress + log tail) with 200 jobs

Each workspace is seeded through the kb store's bulk import. Run: .venv/bin/python bench/bench_app.py
(--quick: 10k only and the 500-node graph).
"""
from __future__ import annotations

import argparse
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


# ------------------------------------------------------------------------------------ seeding

def seed_kb(home: Path, n: int, tasks: int = 10, concepts: int = 50) -> float:
    from kb.schema import Entry, Source
    from kb.store import KBStore

    start = time.perf_counter()
    kb = KBStore(home / "kb.sqlite")
    batch = []
    for i in range(n):
        batch.append(Entry(
            id=f"k{i:06d}", task=f"task{i % tasks}", status=("accepted", "pending", "rejected")[i % 3],
            title=f"Knowledge {i}", learning_summary=f"Check each step of problem type {i % 97}; "
                                                     "restate the question before computing.",
            supplementary_knowledge=f"Fact {i}: a ratio compares two quantities by division.",
            concepts=[f"concept{i % concepts}"],
            source=Source(kind="error_analysis", dataset="gsm8k", question=f"Question number {i}?")))
        if len(batch) == 5000:
            kb.import_entries(batch, by="bench")
            batch = []
    if batch:
        kb.import_entries(batch, by="bench")
    kb.close()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ server/browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `streamlit run app/main.py` on a free port for one workspace."""

    def __init__(self, home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env={**os.environ, "NESY_HOME": str(home)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

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

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rendered(page, text: str | re.Pattern, timeout_ms: int = 120_000) -> None:
    page.get_by_text(text).first.wait_for(timeout=timeout_ms)


def timed_open(page, url: str, marker) -> float:
    start = time.perf_counter()
    page.goto(url)
    rendered(page, marker)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------- benches

def bench_cold_start(browser, home: Path) -> float:
    server = Server(home)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        server.wait_healthy()
        page.goto(server.url)
        rendered(page, re.compile(r"matching entries"))
        return time.perf_counter() - server.started
    finally:
        page.close()
        server.stop()


def bench_kb_page(browser, home: Path, n: int) -> dict:
    server = Server(home)
    server.wait_healthy()
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        timed_open(page, server.url, re.compile(r"matching entries"))  # warm: imports, caches
        first = timed_open(page, server.url, f"1–50 of {n} matching entries")
        timed_open(page, server.url + "/jobs", "Jobs")
        start = time.perf_counter()  # in-app navigation: what a user does most
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Knowledge base").click()
        rendered(page, f"1–50 of {n} matching entries")
        navigate = time.perf_counter() - start
        flip_button = page.get_by_role("button", name="Page 2", exact=True)
        flip_button.wait_for()  # the pager's code loads lazily; time the rerun, not that
        start = time.perf_counter()
        flip_button.click()
        rendered(page, f"51–100 of {n} matching entries")
        flip = time.perf_counter() - start
        start = time.perf_counter()
        box = page.locator(".st-key-kb-text input")
        box.fill("ratio 4242")
        box.press("Enter")
        rendered(page, re.compile(r"^1–(\d+) of \1 matching entries$"))  # one short page
        page.get_by_text("k004242").first.wait_for(state="attached")  # grid cells are a canvas
        search = time.perf_counter() - start
        return {"open": first, "navigate": navigate, "page flip": flip, "text search": search}
    finally:
        page.close()
        server.stop()


def bench_graph(browser, home: Path) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    server = Server(home)
    server.wait_healthy()
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        timed_open(page, server.url + "/graph", re.compile(r"\d+ nodes \("))  # warm the caches
        start = time.perf_counter()
        page.goto(server.url + "/graph")
        rendered(page, re.compile(r"\d+ nodes \("))
        caption = page.get_by_text(re.compile(r"\d+ nodes \(")).first.inner_text()
        page.frame_locator("iframe").first.locator("canvas").first.wait_for(timeout=120_000)
        first_draw = time.perf_counter() - start
        frame = next(f for f in page.frames if f != page.main_frame and "network" in f.evaluate(
            "() => Object.keys(window).join(' ')"))
        try:
            frame.wait_for_function(
                "() => !document.getElementById('loadingBar') || "
                "document.getElementById('loadingBar').style.display === 'none'", timeout=300_000)
            settled = time.perf_counter() - start
        except PlaywrightTimeout:
            settled = float("inf")  # reported as "> 300 s"
        redraw = frame.evaluate("() => { const t = performance.now(); network.redraw(); "
                                "return performance.now() - t; }")
        zoom = frame.evaluate("() => { const t = performance.now(); network.moveTo({scale: 1.7}); "
                              "network.redraw(); return performance.now() - t; }")
        nodes = frame.evaluate("() => network.body.data.nodes.length")
        return {"nodes": nodes, "caption": caption, "first draw": first_draw,
                "layout settled": settled, "redraw ms": redraw, "zoom ms": zoom}
    finally:
        page.close()
        server.stop()


def bench_job_poll(home: Path, jobs_n: int = 200) -> dict:
    os.environ["NESY_HOME"] = str(home)
    from distill import jobs

    conn = jobs._db()  # registry rows written directly: 200 real processes would only add noise
    now = time.time()
    for i in range(jobs_n):
        job_dir = home / "jobs" / f"j{i:04d}"
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "metrics.jsonl").write_text("".join(
            f'{{"step": {s}, "total": 1000, "loss": 1.0, "eta": 10}}\n' for s in range(1000)))
        (job_dir / "log.txt").write_text("line\n" * 5000)
        conn.execute("INSERT INTO jobs (id, kind, name, argv, status, cwd, created, exit_code) "
                     "VALUES (?, 'train', 'x', '[\"train\"]', 'succeeded', '.', ?, 0)", (f"j{i:04d}", now + i))
    conn.close()
    running = jobs.submit(["jobs", "selftest", "--steps", "100000", "--seconds-per-step", "0.05"], "selftest")
    try:
        time.sleep(2)
        reps = 20
        start = time.perf_counter()
        for _ in range(reps):
            listed = jobs.list_jobs()
            for job in listed:
                jobs.progress(job.id)
        table = (time.perf_counter() - start) / reps
        start = time.perf_counter()
        for _ in range(reps):
            jobs.get(running.id)
            jobs.progress(running.id)
            jobs.metrics(running.id)
            jobs.log_tail(running.id, 40)
        detail = (time.perf_counter() - start) / reps
        return {"jobs": len(listed), "table poll ms": table * 1000, "detail poll ms": detail * 1000}
    finally:
        jobs.cancel(running.id, grace=5)
        jobs.wait(running.id, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10k KB and the 500-node graph only")
    parser.add_argument("--no-graph", action="store_true", help="skip the graph measures")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    sizes = [10_000] if args.quick else [10_000, 100_000]
    graphs = {500: (475, 5, 20)} if args.quick else {500: (475, 5, 20), 2000: (1900, 20, 80)}
    graphs = {} if args.no_graph else graphs
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        homes = {}
        for n in sizes:
            homes[n] = Path(tmp) / f"kb{n}"
            homes[n].mkdir()
            print(f"seeded {n} entries in {seed_kb(homes[n], n):.1f} s", flush=True)
        cold = bench_cold_start(browser, homes[sizes[0]])
        rows.append(("cold start → KB page rendered (10k)", f"{cold:.2f} s", "< 5 s"))
        for n in sizes:
            r = bench_kb_page(browser, homes[n], n)
            rows.append((f"KB page load (full reload), {n // 1000}k", f"{r['open']:.2f} s", "< 1.5 s"))
            rows.append((f"KB page via sidebar, {n // 1000}k", f"{r['navigate']:.2f} s", "< 1.5 s"))
            rows.append((f"KB page flip, {n // 1000}k entries", f"{r['page flip']:.2f} s", "< 1.5 s"))
            rows.append((f"KB text search, {n // 1000}k entries", f"{r['text search']:.2f} s", ""))
        for target, (entries, tasks, concepts) in graphs.items():
            home = Path(tmp) / f"graph{target}"
            home.mkdir()
            seed_kb(home, entries, tasks, concepts)
            g = bench_graph(browser, home)
            label = f"graph {g['nodes']} nodes"
            rows.append((f"{label}: first draw", f"{g['first draw']:.2f} s", ""))
            settled = g["layout settled"]
            rows.append((f"{label}: layout settled",
                         f"{settled:.2f} s" if settled != float("inf") else "> 300 s", ""))
            rows.append((f"{label}: redraw / zoom", f"{g['redraw ms']:.0f} / {g['zoom ms']:.0f} ms",
                         "interactive"))
        browser.close()
        home = Path(tmp) / "jobs"
        home.mkdir()
        j = bench_job_poll(home)
        rows.append((f"job table poll ({j['jobs']} jobs)", f"{j['table poll ms']:.1f} ms", ""))
        rows.append(("job detail poll (status+metrics+log)", f"{j['detail poll ms']:.1f} ms", "≪ 2 s"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")


if __name__ == "__main__":
    main()
