"""The exercises' registry: the stage modules register into it on import, :mod:`labkit.exercises` reads it.

It imports no stage module, so each stage can import it while :mod:`labkit.exercises` imports every stage
(``_load``) without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exercise:
    id: str
    notebook: int
    task: str
    hints: list[str]
    checker: Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]
    #: how many hints this kernel has shown so far
    shown: int = field(default=0)


REGISTRY: dict[str, Exercise] = {}


def exercise(id: str, notebook: int, task: str, hints: list[str]) -> Callable[
        [Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]],
        Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]]:
    """Register a checker: ``checker(lab, namespace) -> [(what was checked, passed, what to look at when not)]``."""
    def register(fn: Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]
                 ) -> Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]:
        REGISTRY[id] = Exercise(id, notebook, task, hints, fn)
        return fn
    return register
