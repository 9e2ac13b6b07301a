"""Helpers shared by pilot tests (imported by name: the tests folder is on sys.path)."""

from __future__ import annotations

import time
from typing import Callable


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 8.0, poll: float = 0.05) -> bool:
    """Let the app run until ``cond()`` holds or ``timeout`` passes; returns the last ``cond()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await pilot.pause(poll)
    return cond()


async def settle_until(pilot, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``cond()`` (failing the test if it never holds), then let the screen draw: for snapshots."""
    assert await wait_for(pilot, cond, timeout)
    await pilot.pause(0.2)


def utc_clock(monkeypatch):
    """Times drawn in UTC (snapshots must not depend on the machine's zone); undone at teardown."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
