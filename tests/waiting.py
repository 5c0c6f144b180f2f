"""Polling for a condition another process brings about (a job's status, its events, a file)."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 60.0, what: str = "condition", every: float = 0.1):
    """predicate()'s first truthy value; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
