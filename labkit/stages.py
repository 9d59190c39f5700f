"""``labkit stage N``: bring the lab to the state at the start of notebook N.

Everything the earlier notebooks create is applied by running those notebooks' own step cells
(:func:`labkit._cells.run_steps`: the ``%%bash`` cells tagged ``step``, the learner's commands); everything later
notebooks create is removed. Idempotent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from . import _cells, cleanup
from .backends.contract import Lab
from .errors import NotRunning, ParameterError
from .notebook import SPEC, validate

NOTEBOOKS = [
    "00-welcome-and-setup",
    "01-install-vso-and-connect",
    "02-static-secrets",
    "03-dynamic-secrets",
    "04-rotation-live",
    "05-client-cache",
    "06-instant-updates",
    "07-clean-up",
]


def _noop(lab: Lab) -> None:
    return None


#: notebook number → how to remove what it creates (what it creates: its own step cells)
STAGES: dict[int, Callable[[Lab], Any]] = {
    1: cleanup.undo_connect_and_operator,
    2: cleanup.undo_static,
    3: cleanup.undo_dynamic,
    4: _noop,  # its one step changes the database role's TTLs, which stage 3's undo removes
    5: cleanup.undo_cache,
    6: cleanup.undo_instant,
}


def apply_stage(lab: Lab, k: int, p: dict[str, Any]) -> None:
    """Do what notebook ``k`` does: run its step cells."""
    _cells.run_steps(lab, k, p)


def prepare_stage(lab: Lab, n: int, params: dict[str, Any] | None = None) -> list[str]:
    """Make the lab look as it does at the start of notebook ``n``; return what was done."""
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
        for k in sorted(STAGES, reverse=True):
            if k >= n:
                STAGES[k](lab)
        for k in sorted(STAGES):
            if k < n:
                apply_stage(lab, k, p)
                done.append(NOTEBOOKS[k])
    return done
