"""Stage 13 (notebook 13, beyond the tutorial): Troubleshooting, part 2: syncs, restarts and rotations.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("Troubleshooting, part 2: syncs, restarts and rotations", [("not written yet", False, "")])


STAGE = Stage(13, "13-troubleshooting-sync", "Troubleshooting, part 2: syncs, restarts and rotations",
              undo=nothing_to_undo, check=check, requires=(1, 2, 3))
