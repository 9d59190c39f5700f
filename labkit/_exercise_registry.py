"""The exercises' registry: the stage modules register into it on import, :mod:`labkit.exercises` reads it.

It imports no stage module, so each stage can import it while :mod:`labkit.exercises` imports every stage
(``_load``) without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.contract import Lab

#: ``checker(lab, namespace) -> [(what was checked, passed, what to look at when not)]``
Checker = Callable[["Lab", dict[str, Any]], list[tuple[str, bool, str]]]


@dataclass
class Exercise:
    id: str
    notebook: int
    task: str
    hints: list[str]
    checker: Checker
    #: how many hints this kernel has shown so far
    shown: int = field(default=0)


REGISTRY: dict[str, Exercise] = {}


def exercise(id: str, notebook: int, task: str, hints: list[str]) -> Callable[[Checker], Checker]:
    """Register a checker: ``checker(lab, namespace) -> [(what was checked, passed, what to look at when not)]``."""
    def register(fn: Checker) -> Checker:
        REGISTRY[id] = Exercise(id, notebook, task, hints, fn)
        return fn
    return register
