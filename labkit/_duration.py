"""Durations as the notebooks write them (``"90s"``, ``"2m"``, ``"1h"``).

A module of its own: the stage modules read their notebook's durations with it, and importing
:mod:`labkit.notebook` for it would reach every backend (``notebook`` → ``backends``).
"""

from __future__ import annotations

from .errors import ParameterError


def duration_seconds(value: str) -> float:
    """``"90s"``, ``"2m"``, ``"1h"`` → seconds (VSO's refreshAfter format, and Vault's TTLs)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return float(value[:-1]) * units[value[-1]]
    except (KeyError, ValueError, IndexError):
        raise ParameterError(
            f"Checked the duration {value!r}: it is not a number followed by s, m or h.",
            ['Write durations like "30s", "2m" or "1h".', "Use a whole number of seconds for TTLs under a minute.",
             "Check the parameters cell at the top of the notebook."],
        ) from None
