"""The docs' figures, drawn by the app itself in Chromium against a real `streamlit run`.

    .venv/bin/python bench/figures.py results docs/results/evals/gsm8k docs/results/gsm8k.png
    .venv/bin/python bench/figures.py kb docs/screenshot.png

results REPORT OUT  the Evaluation page's accuracy chart (strict and flexible accuracy per
                    configuration, 95 % intervals as error bars) of a saved report folder,
                    e.g. the reproduction's docs/results/evals/<name> (copied into a scratch
                    workspace: the report is only read)
kb OUT              the knowledge-base page with the shipped starter KB (data/starter_kb.jsonl,
                    pending, with its quality flags), as the README shows it
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_app import CHROMIUM, CHROMIUM_ARGS, Server, rendered  # noqa: E402


def results_chart(report: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(report, home / "evals" / report.name)
        with _page(home, "/evaluate") as page:
            rendered(page, "Paired comparisons")
            chart = page.locator("[data-testid='stVegaLiteChart']").first
            chart.wait_for()
            page.wait_for_timeout(1500)  # vega draws after the element exists
            chart.screenshot(path=str(out))


def kb_page(out: Path) -> None:
    from kb.jsonl import import_jsonl
    from kb.store import KBStore

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        import_jsonl(KBStore(str(home / "kb.sqlite")), REPO / "data" / "starter_kb.jsonl", by="starter")
        with _page(home, "/", height=1500) as page:  # Streamlit scrolls inside the page: a tall window
            page.get_by_role("button", name="Got it").click()  # the first-open welcome, once read
            rendered(page, "matching entries")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out))


@contextlib.contextmanager
def _page(home: Path, path: str, height: int = 900):
    """A fresh app server on `home` and one Chromium page open at `path`."""
    from playwright.sync_api import sync_playwright

    with Server(home) as server, sync_playwright() as playwright:
        server.wait_healthy()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": height})
        page.goto(server.url + path)
        try:
            yield page
        finally:
            browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    r = sub.add_parser("results", help="the accuracy chart of a saved evaluation report")
    r.add_argument("report", type=Path)
    r.add_argument("out", type=Path)
    k = sub.add_parser("kb", help="the knowledge-base page with the starter KB")
    k.add_argument("out", type=Path)
    args = p.parse_args()
    if args.figure == "results":
        results_chart(args.report.resolve(), args.out.resolve())
    else:
        kb_page(args.out.resolve())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
