""""Try it yourself": at least two exercises per notebook from 01 on.

Each exercise is registered by its stage's module with :func:`exercise`: an id (the notebook's exercise cell is
``exercise-<id>``, its checker cell calls ``check(lab, "<id>")``), the task, hints the learner asks for one at a
time (``hint("<id>")``), and a checker that reads real state. The learner types the solution in the exercise cell;
the text CI types is in ``notebooks/solutions/<notebook>.yaml`` (see :mod:`labkit._cells`).
"""

from __future__ import annotations

from typing import Any

from ._exercise_registry import REGISTRY as REGISTRY
from ._exercise_registry import Exercise as Exercise
from ._exercise_registry import exercise as exercise

# the registry lives in a module of its own: the stage modules register into it, and this one imports them
from .backends.contract import Lab
from .display import Check
from .errors import CheckFailed, ParameterError


def _get(id: str) -> Exercise:
    _load()
    if id not in REGISTRY:
        raise ParameterError(f"Looked up the exercise {id!r}: there is no such exercise.",
                             [f"Use one of: {', '.join(sorted(REGISTRY))}.", "Check the id in the cell above.",
                              "Re-run the notebook's first code cell (it imports the exercises)."])
    return REGISTRY[id]


def _load() -> None:
    # the stage modules register their exercises on import
    from . import cache, cleanup, connect, dynamic, instant, rotation, static  # noqa: F401


def for_notebook(n: int) -> list[Exercise]:
    _load()
    return [e for e in REGISTRY.values() if e.notebook == n]


def hint(id: str) -> str:
    """The next hint for exercise ``id`` (each call shows one more; the last one repeats)."""
    ex = _get(id)
    if not ex.hints:
        return f"hint: no hints for {id}"
    ex.shown = min(ex.shown + 1, len(ex.hints))
    return "\n".join(f"hint {i + 1}/{len(ex.hints)}: {h}" for i, h in enumerate(ex.hints[: ex.shown]))


def check(lab: Lab, id: str, namespace: dict[str, Any] | None = None, *, required: bool | None = None) -> Check:
    """Check exercise ``id`` against the lab's real state. With ``required`` (default: the notebook's
    ``EXERCISES_SOLVED``, which CI sets after typing the solutions in) a failed check fails the cell."""
    ex = _get(id)
    ns = namespace if namespace is not None else {}
    result = Check(f"exercise {id}", ex.checker(lab, ns))
    if not result.results:
        raise ParameterError(f"Checked exercise {id}: its checker returned nothing to check.",
                             ["This is a bug in labkit: a checker must check something.", "Report it.",
                              "Skip this exercise meanwhile."])
    if required is None:
        required = bool(ns.get("EXERCISES_SOLVED"))
    if required and not result.passed:
        raise CheckFailed(str(result), ["Follow the note next to each unchecked item.",
                                        f"Ask for a hint: `exercises.hint({id!r})`.",
                                        "Re-run the cells above this exercise, in order."])
    return result

