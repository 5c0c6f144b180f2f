"""What every bench/ script shares: interleaved rounds, median ratio with its spread, machine load.

Colleagues share this machine's cores, so one timing of A then one of B says little: the load
can change between them. Each script instead runs its sides in rounds, A B A B …, takes the ratio
of each round, and prints the median with its min–max. The 1-minute load average is sampled
through the run and printed, and the CPU other processes used is measured; the machine counts as
*busy* when they used more than a quarter of a core on average (the load average alone cannot
tell: it counts the benchmark's own threads), and then the line says so (absolute numbers are
pessimistic; ratios from one round share the load).

    from _measure import Load, interleave, ratio
    with Load() as load:
        rounds = interleave({"ours": run_ours, "naive": run_naive}, rounds=5)
    print(ratio(rounds["ours"], rounds["naive"], "speed-up"), load)
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Spread:
    """A median with its min–max over rounds."""

    values: list[float]
    unit: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:.3g}{self.unit} (1 round)"
        return (
            f"{self.median:.3g}{self.unit} (min {min(self.values):.3g}, max {max(self.values):.3g}, "
            f"{len(self.values)} rounds)"
        )


def ratio(a: list[float], b: list[float], unit: str = "x") -> Spread:
    """Per-round a/b (a round's two sides ran back to back under the same load)."""
    return Spread([x / y for x, y in zip(a, b)], unit)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_second(count: int, fn: Callable[[], object]) -> float:
    """Items per second of one call of `fn` that handles `count` items."""
    return count / timed(fn)


def _shown(value: float | dict[str, float]) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {v:.4g}" for k, v in value.items()) + ")"
    return f"{value:.4g}"


def interleave(
    sides: dict[str, Callable[[], float | dict[str, float]]], rounds: int, warmup: int = 0, progress: bool = True
) -> dict[str, list]:
    """Run each side once per round, in order A B … then the next round; each call returns its
    measurement (seconds, tokens/s, …), or a dict of them when one run yields several (then
    `column` picks one out). `warmup` rounds run first and are dropped."""
    out: dict[str, list] = {name: [] for name in sides}
    for r in range(warmup + rounds):
        for name, fn in sides.items():
            value = fn()
            if r >= warmup:
                out[name].append(value)
        if progress and r >= warmup:
            print(
                f"  round {r - warmup + 1}/{rounds}: " + ", ".join(f"{n} {_shown(v[-1])}" for n, v in out.items()),
                flush=True,
            )
    return out


def column(runs: list[dict[str, float]], key: str) -> list[float]:
    """One measure over the rounds of a side whose runs each return a dict of measures."""
    return [run[key] for run in runs]


@dataclass
class Load:
    """While in its `with` block: the 1-minute load average, sampled every `every` seconds, and
    the CPU that *other* processes used: every process outside this process tree, sampled with
    the load (the benchmark's own threads, servers and browsers — renderers come and go — are its
    work, not a disturbance; a foreign process that ends between samples loses that last bit).

    The load average counts the benchmark itself (a 2-thread run on 2 cores shows ~2 by itself),
    so the verdict comes from the other processes: busy when they used more than `busy_cores`
    cores on average."""

    every: float = 2.0
    busy_cores: float = 0.25
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    samples: list[float] = field(default_factory=list)
    other_cores: float = 0.0

    def __enter__(self) -> Load:
        self._stop = threading.Event()
        self.samples.append(os.getloadavg()[0])
        self._started = time.monotonic()
        self._first = _foreign_cpu_seconds()
        self._last = dict(self._first)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])
            self._last.update(_foreign_cpu_seconds())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self._last.update(_foreign_cpu_seconds())
        wall = time.monotonic() - self._started
        other = sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())
        self.other_cores = max(other, 0.0) / wall if wall > 0 else 0.0

    @property
    def busy(self) -> bool:
        return self.other_cores > self.busy_cores

    def __str__(self) -> str:
        lo, hi = min(self.samples), max(self.samples)
        verdict = (
            f"BUSY: other processes used {self.other_cores:.2f} of {self.cores} cores on average; "
            f"absolute numbers are pessimistic, the ratios compare sides measured under the same load"
            if self.busy
            else f"idle: other processes used {self.other_cores:.2f} of {self.cores} cores on average"
        )
        return f"machine load (1-min average, this benchmark included) {lo:.2f}–{hi:.2f}; {verdict}"


def _foreign_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of every live process outside this process tree, by pid."""
    import psutil

    me = psutil.Process()
    mine = {me.pid} | {p.pid for p in me.children(recursive=True)}
    seconds = {}
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            seconds[proc.pid] = sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue  # ended between listing and reading
    return seconds
