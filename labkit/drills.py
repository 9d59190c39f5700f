"""Troubleshooting drills (notebooks 12 and 13): predict, break, observe, diagnose, fix, check.

A drill is one :class:`labkit._stage.Diagnosis` (the symptom, the candidate causes, the right one and why the others
are wrong) plus one exercise with the same id (:mod:`labkit.exercises`: the fix the learner types, and a checker that
reads real state). Both are listed in the drill notebook's stage record. The notebook's cells are the drill:

* **predict** — the symptom (never the cause), and :func:`choices`;
* **break** — a ``%%bash`` cell that gets the lab into the broken state the way a user would;
* **observe** — ``kubectl describe``, ``kubectl get events``, the operator's log, ``vault read`` …;
* :func:`before_fix` — the fix's check, run on the broken state: it must fail, and it shows its hints;
* **diagnose** — the exercise cell ``exercise-diagnose-<id>``: ``drills.diagnose("<id>", "<letter>", globals())``;
* **fix** — the exercise cell ``exercise-<id>``: the learner's command;
* **check** — ``exercises.check(lab, "<id>", globals())``, with ``exercises.hint("<id>")`` on request.
"""

from __future__ import annotations

from typing import Any

from . import _stage
from ._stage import Diagnosis, own_lab
from .backends.contract import Lab
from .display import Check
from .errors import CheckFailed, LabkitError, ParameterError

#: drill id → its diagnosis question, read from the stage records on first use
REGISTRY: dict[str, Diagnosis] = {}


class DrillNotBroken(LabkitError):
    """A drill's fix check passed on the state its break cell should have broken."""


def _load() -> dict[str, Diagnosis]:
    if not REGISTRY:
        from .stages import RECORDS

        REGISTRY.update(_stage.by_id(RECORDS, "diagnoses", "drill"))
    return REGISTRY


def get(id: str) -> Diagnosis:
    _load()
    if id not in REGISTRY:
        raise ParameterError(f"Looked up the drill {id!r}: there is no such drill.",
                             [f"Use one of: {', '.join(sorted(REGISTRY))}.", "Check the id in the cell above.",
                              "Re-run the notebook's first code cell."])
    return REGISTRY[id]


class Choices:
    """The candidate causes of a drill's symptom, as the notebook shows them."""

    def __init__(self, d: Diagnosis) -> None:
        self.d = d

    def __str__(self) -> str:
        lines = [f"Symptom: {self.d.symptom}", "Which is the cause?"]
        lines += [f"  ({k}) {v}" for k, v in sorted(self.d.choices.items())]
        lines.append(f'Answer after observing: drills.diagnose("{self.d.id}", "<letter>", globals())')
        return "\n".join(lines)

    __repr__ = __str__


def choices(id: str) -> Choices:
    """Show drill ``id``'s symptom and candidate causes (the *predict* step)."""
    return Choices(get(id))


def diagnose(id: str, answer: str, namespace: dict[str, Any] | None = None, *, required: bool | None = None) -> Check:
    """Check the learner's diagnosis of drill ``id``: the right cause passes with the evidence that proves it; a wrong
    one is refused with the evidence that rules it out. With ``required`` (default: the notebook's
    ``EXERCISES_SOLVED``, set by CI after typing the solutions in) a wrong answer fails the cell."""
    d = get(id)
    key = str(answer).strip().lower().strip("()")
    if key not in d.choices:
        raise ParameterError(f"Checked the answer {answer!r} to drill {id}: it is not one of its choices.",
                             [f"Answer with one letter: {', '.join(sorted(d.choices))}.",
                              f"Show the choices again: drills.choices({id!r}).",
                              "Read the observe cells' output first: it holds the evidence."])
    right = key == d.answer
    result = Check(f"diagnosis of drill {id}: ({key}) {d.choices[key]}",
                   [("this is the cause", right, "" if right else f"not this: {d.why_not[key]}")])
    ns = namespace if namespace is not None else {}
    if required is None:
        required = bool(ns.get("EXERCISES_SOLVED"))
    if required and not right:
        raise CheckFailed(str(result), ["Read the observe cells' output again: the events and the log name the cause.",
                                        f"Show the choices again: drills.choices({id!r}).",
                                        f"Ask for a hint on the fix: exercises.hint({id!r})."])
    if right:
        result.results.append((f"evidence: {d.because}", True, ""))
    return result


def before_fix(lab: Lab, id: str, namespace: dict[str, Any] | None = None, *, required: bool | None = None) -> Check:
    """Run drill ``id``'s fix check on the broken state, before the fix: it should fail, and its hints show what to
    look at. When it passes instead, the break did not take; with ``required`` (CI) that fails the cell, which proves
    on every run that the checker tells a broken lab from a fixed one."""
    from . import exercises

    if get(id).own_lab_only and not own_lab(lab):
        return Check(f"drill {id}: skipped", [("this drill needs a lab of your own (it would stop shared things); its "
                                               "break cell did nothing here", True, "")])
    result = exercises.check(lab, id, namespace, required=False)
    ns = namespace if namespace is not None else {}
    if required is None:
        required = bool(ns.get("EXERCISES_SOLVED"))
    if result.passed and required:
        raise DrillNotBroken(
            f"Ran drill {id}'s check before the fix: it passed, so the lab is not in the drill's broken state.\n{result}",
            ["Run the drill's break cell again, then this cell.", "Reset the notebook: `labkit stage` with its number.",
             "If it still passes, the break cell or the checker is wrong: report it."])
    result.title = f"before the fix ({'FAILS, as it should' if not result.passed else 'passes: not broken'}): " \
                   f"{result.title}"
    return result
