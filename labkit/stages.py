"""``labkit stage N``: bring the lab to the state at the start of notebook N.

Everything the earlier notebooks create is applied by running those notebooks' own step cells
(:func:`labkit._cells.run_steps`: the ``%%bash`` cells tagged ``step``, the learner's commands); everything later
notebooks create is removed (each stage's ``undo``). Idempotent. Each stage is one record,
:class:`labkit._stage.Stage`, declared at the end of its teaching module (``static.STAGE`` …).
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import (
    _cells,
    authglobal,
    cache,
    certs,
    cleanup,
    connect,
    drills_access,
    drills_sync,
    dynamic,
    instant,
    rotation,
    static,
    staticroles,
    templates,
)
from ._stage import Stage
from .backends.contract import Lab
from .errors import NotRunning, ParameterError
from .notebook import SPEC, Session, export_params, use_lab_env, validate

#: notebook 00 starts the lab: it has no step of its own, so no record
WELCOME = "00-welcome-and-setup"
#: one record per stage, each declared in its teaching module, in the notebooks' order
RECORDS: tuple[Stage, ...] = (connect.STAGE, static.STAGE, dynamic.STAGE, rotation.STAGE, cache.STAGE, instant.STAGE,
                              cleanup.STAGE,
                              # beyond the tutorial: each starts from the stages its record requires
                              certs.STAGE, templates.STAGE, staticroles.STAGE, authglobal.STAGE,
                              drills_access.STAGE, drills_sync.STAGE)
#: stage number → its record
STAGES: dict[int, Stage] = {s.number: s for s in RECORDS}
NOTEBOOKS = [WELCOME, *(s.notebook for s in RECORDS)]


def apply_stage(lab: Lab, k: int, p: dict[str, Any]) -> None:
    """Do what notebook ``k`` does: run its step cells."""
    if k in STAGES:
        STAGES[k].apply(lab, p)
    else:  # notebook 00: no step cell
        _cells.run_steps(lab, k, p)


def prepare_stage(lab: Lab, n: int, params: dict[str, Any] | None = None) -> list[str]:
    """Make the lab look as it does at the start of notebook ``n``; return what was done.

    Notebook ``n`` starts from the stages its record names (:meth:`Stage.before`: every earlier one in the tutorial,
    a few for the notebooks beyond it). Every other stage is undone, the latest first; then the stages it starts
    from run their steps, in order, except one whose ``in_place`` test says its work is already there."""
    if not 0 <= n < len(NOTEBOOKS):
        raise ParameterError(f"Checked the stage number {n}: notebooks are numbered 0 to {len(NOTEBOOKS) - 1}.",
                             [f"Pick one of: {', '.join(NOTEBOOKS)}.", "Use the number at the start of the file name.",
                              "Run `labkit stage 0` to start from the beginning."])
    if not lab.healthy():
        raise NotRunning(
            f"Checked that the lab is up before preparing stage {n}: it is not.",
            ["Start it first: `labkit up`.", "Run `labkit status` to see which part is down.",
             "Run `labkit doctor` if `labkit up` fails."],
        )
    p = validate(params or {k: d for k, (_, d) in SPEC.items()})
    done = []
    # One writer at a time: `labkit up`/`down` or another `stage` on the same lab wait for this one.
    lock = getattr(lab, "lock", None)
    with lock(f"labkit stage {n}") if lock else contextlib.nullcontext():
        before = STAGES[n].before() if n in STAGES else ()
        for stage in reversed(RECORDS):  # what notebook n does not start from goes, the latest first
            if stage.number not in before:
                stage.undo(lab)
        for stage in RECORDS:  # then the stages it starts from run their steps, in order
            if stage.number in before:
                if stage.in_place is not None and stage.in_place(lab):
                    done.append(f"{stage.notebook} (already in place)")
                    continue
                stage.apply(lab, p)
                done.append(stage.notebook)
    return done


def start(session: Session, n: int) -> str:
    """The start cell of a notebook beyond the tutorial: ``labkit up`` when the lab is not running (notebook 07 stops
    it), then ``labkit stage N`` with the notebook's parameters; the kernel then points at the lab."""
    lab, lines = session.lab, []
    if not lab.healthy():
        actions = lab.up()
        lines.append(f"$ labkit up\n  the lab is up ({len(actions)} components)")
    use_lab_env(lab)
    export_params(lab, session.params)
    done = prepare_stage(lab, n, session.params)
    lines.append(f"$ labkit stage {n}\n  the lab is at the start of notebook {n:02d}; done: {', '.join(done) or 'nothing'}")
    return "\n".join(lines)
