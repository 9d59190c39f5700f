"""The record of one tutorial stage, and of one of its "try it yourself" exercises.

Each stage's teaching module (``connect.py`` … ``cleanup.py``) declares its ``STAGE`` once, at its end: the
notebook it belongs to, how to apply it (the notebook's own step cells), how to undo it, its check and its
exercises. :mod:`labkit.stages` and :mod:`labkit.exercises` read those records; what a stage makes is listed by
:meth:`labkit.names.Names.made_by`. This module imports no stage module, so every stage can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _cells
from .backends.contract import Lab
from .display import Check

#: ``checker(lab, namespace) -> [(what was checked, passed, what to look at when not)]``
Checker = Callable[[Lab, dict[str, Any]], list[tuple[str, bool, str]]]


@dataclass
class Exercise:
    """An exercise: the notebook's cell ``exercise-<id>``, its checker cell calls ``exercises.check(lab, "<id>")``."""

    id: str
    task: str
    hints: list[str]
    checker: Checker
    #: how many hints this kernel has shown so far
    shown: int = field(default=0)


def exercise(id: str, task: str, hints: list[str]) -> Callable[[Checker], Exercise]:
    """Make the decorated checker an :class:`Exercise`; list it in its stage's record."""
    def make(fn: Checker) -> Exercise:
        return Exercise(id, task, hints, fn)
    return make


def nothing_to_undo(lab: Lab) -> None:
    """The undo of a stage that makes nothing of its own (see the record's comment)."""
    return None


@dataclass(frozen=True)
class Stage:
    """One tutorial stage: notebook ``NN-…``, with everything labkit knows about it."""

    number: int
    #: the notebook's file name without ``.ipynb``, e.g. ``02-static-secrets``
    notebook: str
    title: str
    #: remove what this stage made (``labkit stage N`` undoes the stages N and later, latest first); idempotent
    undo: Callable[[Lab], Any]
    #: the notebook's check cell (its arguments differ per stage: what the notebook measured)
    check: Callable[..., Check]
    exercises: tuple[Exercise, ...] = ()

    def apply(self, lab: Lab, params: dict[str, Any]) -> list[str]:
        """Do what the notebook does: run its step cells, the learner's own commands (:func:`labkit._cells.run_steps`);
        return their ids. There is no second copy of the steps in Python."""
        return _cells.run_steps(lab, self.number, params)
