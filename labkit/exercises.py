""""Try it yourself": at least two exercises per notebook from 01 on.

Each exercise is declared by its stage's module with :func:`exercise` and listed in that stage's record
(``STAGE.exercises``, :mod:`labkit._stage`): an id (the notebook's exercise cell is ``exercise-<id>``, its checker
cell calls ``check(lab, "<id>")``), the task, hints the learner asks for one at a time (``hint("<id>")``), and a
checker that reads real state. The learner types the solution in the exercise cell; the text CI types is in
``notebooks/solutions/<notebook>.yaml`` (see :mod:`labkit._cells`).
"""

from __future__ import annotations

from typing import Any

from . import _stage
from ._stage import Exercise as Exercise
from ._stage import exercise as exercise
from .backends.contract import Lab
from .display import Check
from .errors import CheckFailed, ParameterError

#: exercise id → exercise, read from the stage records on first use (:func:`_load`)
REGISTRY: dict[str, Exercise] = {}


def _get(id: str) -> Exercise:
    _load()
    if id not in REGISTRY:
        raise ParameterError(f"Looked up the exercise {id!r}: there is no such exercise.",
                             [f"Use one of: {', '.join(sorted(REGISTRY))}.", "Check the id in the cell above.",
                              "Re-run the notebook's first code cell (it imports the exercises)."])
    return REGISTRY[id]


def _load() -> dict[str, Exercise]:
    """Fill :data:`REGISTRY` from the stage records (imported here, not at the top: :mod:`labkit.stages` imports every
    stage and the lab's parameters, which a kernel that only asks for a hint does not need yet)."""
    if not REGISTRY:
        from .stages import RECORDS

        REGISTRY.update(_stage.by_id(RECORDS, "exercises", "exercise"))
    return REGISTRY


def for_notebook(n: int) -> list[Exercise]:
    """Notebook ``n``'s exercises, in its record's order (none for notebook 00)."""
    _load()
    from .stages import STAGES

    return list(STAGES[n].exercises) if n in STAGES else []


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

