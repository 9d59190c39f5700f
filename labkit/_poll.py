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
