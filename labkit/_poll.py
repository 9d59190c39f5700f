"""Waiting for the lab to catch up: one poll loop for the checks and exercises."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(probe: Callable[[], T], seconds: float, interval: float = 0.5) -> T:
    """``probe()`` until it is truthy or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def refresh_wait(refresh_after: object, margin: float = 10) -> float:
    """How long a check waits for VSO to copy a change: the VaultStaticSecret's ``refreshAfter`` (a duration such as
    ``"10s"``; the notebook's parameter, ``10s`` when unset), plus ``margin`` seconds for a slow lab."""
    from ._duration import duration_seconds

    return duration_seconds(str(refresh_after or "10s")) + margin
