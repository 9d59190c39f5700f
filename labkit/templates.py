"""Stage 9 (notebook 09, beyond the tutorial): Secret transformation: templates that render what the app reads.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("Secret transformation: templates that render what the app reads", [("not written yet", False, "")])


STAGE = Stage(9, "09-secret-templates", "Secret transformation: templates that render what the app reads",
              undo=nothing_to_undo, check=check, requires=(1,))
