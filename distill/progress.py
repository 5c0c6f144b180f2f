"""Progress reporting shared by every long-running command (teacher, training, evaluation).

One object does three jobs so that no command has to think about them:
- a tqdm bar on the terminal;
- a metrics JSONL line per update in the job folder ($NESY_JOB_DIR/metrics.jsonl when the command
  runs as a job, see distill/jobs.py), which the app polls for progress bars and live curves;
- a cooperative stop: SIGTERM/SIGINT set a flag that the loop checks at the next step, so the
  command can write a checkpoint and exit cleanly instead of dying mid-write.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tqdm import tqdm

from distill import jsonlines

STOPPED_EXIT_CODE = 3  # a command that stopped on request exits with this (jobs mark it "cancelled")


class StopRequested(Exception):
    """Raised by Progress.check_stop() so a loop can unwind to its checkpoint-and-exit path."""


_stop_flag = {"set": False, "at": None}


def _request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
    _stop_flag["set"] = True
    if _stop_flag["at"] is None:
        _stop_flag["at"] = time.monotonic()


def install_stop_handler() -> None:
    """Turn SIGTERM/SIGINT into a flag checked at the next step (idempotent)."""
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def stop_requested() -> bool:
    return _stop_flag["set"]


def stop_requested_at() -> float | None:
    """time.monotonic() of the first stop request (None: none), so blocking work such as a
    teacher call in flight can give up a bounded grace period after it."""
    return _stop_flag["at"]


def metrics_path() -> Path | None:
    job_dir = os.environ.get("NESY_JOB_DIR")
    return Path(job_dir) / "metrics.jsonl" if job_dir else None


class Progress:
    """tqdm + metrics.jsonl + stop flag. Use as a context manager.

    `update(n, **metrics)` advances by n and records step, total, elapsed, rate, ETA and any extra
    metrics (loss, lr, tokens_per_s, ...). `stage` names the phase (e.g. "S_P", "stage 2/4").
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", initial: int = 0, stage: str | None = None):
        install_stop_handler()
        self.total, self.step, self.stage = total, initial, stage or desc
        self.start = time.monotonic()
        self._initial = initial
        self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
        self._path = metrics_path()

    def update(self, n: int = 1, **metrics) -> None:
        self.step += n
        self._bar.update(n)
        if metrics:
            self._bar.set_postfix({k: _short(v) for k, v in metrics.items()}, refresh=False)
        self.record(**metrics)

    def record(self, **metrics) -> None:
        """Append one metrics line without advancing (e.g. an eval loss)."""
        if self._path is None:
            return
        elapsed = time.monotonic() - self.start
        done = self.step - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / rate if rate > 0 else None
        line = {
            "time": time.time(),
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "elapsed": round(elapsed, 3),
            "rate": round(rate, 4),
            "eta": None if eta is None else round(eta, 1),
            **metrics,
        }
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def check_stop(self) -> None:
        if stop_requested():
            raise StopRequested()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file a running or killed process appends to (metrics, eval samples);
    a half-written last line is skipped, not an error."""
    return jsonlines.read_jsonl(path, skip_bad=True)  # the one reader: lines end at \n, not U+2028


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
