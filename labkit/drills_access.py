"""Stage 12 (notebook 12, beyond the tutorial): Troubleshooting, part 1: logins, policies and ownership.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("Troubleshooting, part 1: logins, policies and ownership", [("not written yet", False, "")])


STAGE = Stage(12, "12-troubleshooting-access", "Troubleshooting, part 1: logins, policies and ownership",
              undo=nothing_to_undo, check=check, requires=(1, 2))
