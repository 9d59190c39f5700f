"""The record of one tutorial stage, and of one of its "try it yourself" exercises.

Each stage's teaching module (``connect.py`` … ``cleanup.py``) declares its ``STAGE`` once, at its end: the
notebook it belongs to, how to apply it (the notebook's own step cells), how to undo it, its check and its
exercises. :mod:`labkit.stages` and :mod:`labkit.exercises` read those records; what a stage makes is listed by
:meth:`labkit.names.Names.made_by`. This module imports no stage module, so every stage can import it.
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class Diagnosis:
    """A troubleshooting drill's "what is the cause?" question (notebooks 12 and 13; :mod:`labkit.drills`).

    The drill's id is also the id of its fix exercise (``exercise-<id>``), whose checker reads real state. The choices
    are causes a user could believe from the symptom; ``why_not`` says, for each wrong one, which evidence rules it
    out, so a wrong diagnosis is refused with a reason, not just a "no".
    """

    id: str
    symptom: str
    #: letter → a cause, as the learner reads it
    choices: dict[str, str]
    #: the right letter
    answer: str
    #: why the right cause is right: the evidence on the page that proves it
    because: str
    #: wrong letter → the evidence that rules it out
    why_not: dict[str, str]
    #: the drill stops shared things (seals Vault, stops the operator): it runs only on a lab of one's own
    own_lab_only: bool = False

    def __post_init__(self) -> None:
        if self.answer not in self.choices or set(self.why_not) != set(self.choices) - {self.answer}:
            raise ValueError(f"drill {self.id!r}: the answer must be a choice, and every other choice needs a why_not")


def own_lab(lab: Lab) -> bool:
    """Whether drills that stop shared things (seal Vault, stop the operator) may run: not on a shared Vault, cluster
    or operator (the external backend, or a team's operator)."""
    return lab.backend != "external" and os.environ.get("VSOLAB_SHARED_OPERATOR") != "1"


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
    #: the stages this notebook starts from. ``None`` (the tutorial, notebooks 01-07): every earlier stage. The
    #: notebooks beyond the tutorial (08 on) each start from a few, e.g. ``(1,)`` (VSO installed and connected), so
    #: they can be taken in any order after notebook 01, even after notebook 07 removed everything.
    requires: tuple[int, ...] | None = None
    #: a quick test that what this stage makes is already in place; ``labkit stage`` then does not run its steps again
    in_place: Callable[[Lab], bool] | None = None
    #: the troubleshooting drills' diagnosis questions (:mod:`labkit.drills`)
    diagnoses: tuple[Diagnosis, ...] = ()

    def before(self) -> tuple[int, ...]:
        """The stages whose steps run before this notebook (``labkit stage N``)."""
        return tuple(range(1, self.number)) if self.requires is None else tuple(sorted(self.requires))

    def apply(self, lab: Lab, params: dict[str, Any]) -> list[str]:
        """Do what the notebook does: run its step cells, the learner's own commands (:func:`labkit._cells.run_steps`);
        return their ids. There is no second copy of the steps in Python."""
        return _cells.run_steps(lab, self.number, params)


def by_id(records: Any, attr: str, what: str) -> dict[str, Any]:
    """Every stage record's ``attr`` items (``exercises``, ``diagnoses``), by id; an id declared twice is a bug."""
    out: dict[str, Any] = {}
    for stage in records:
        for item in getattr(stage, attr):
            if item.id in out:
                raise ValueError(f"{what} id {item.id!r} is declared twice (stage {stage.number} and another)")
            out[item.id] = item
    return out
