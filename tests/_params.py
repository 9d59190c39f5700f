"""The notebooks' parameters as CI runs them, in one place for every test module."""

from __future__ import annotations

from typing import Any

from labkit.notebook import CI, SPEC


def ci_params(**overrides: Any) -> dict[str, Any]:
    """Every notebook parameter: the learner's default, replaced by CI's value (short TTLs and live views, no
    interaction, exercises solved) where CI passes one, then by ``overrides``; a new dict each call."""
    return {k: d for k, (_, d) in SPEC.items()} | CI | overrides
