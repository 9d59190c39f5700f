"""Stage 11 (notebook 11, beyond the tutorial): VaultAuthGlobal: one login recipe for many teams.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("VaultAuthGlobal: one login recipe for many teams", [("not written yet", False, "")])


STAGE = Stage(11, "11-vault-auth-global", "VaultAuthGlobal: one login recipe for many teams",
              undo=nothing_to_undo, check=check, requires=(1,))
