"""Stage 10 (notebook 10, beyond the tutorial): Database static roles: one PostgreSQL user, its password rotated.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("Database static roles: one PostgreSQL user, its password rotated", [("not written yet", False, "")])


STAGE = Stage(10, "10-database-static-roles", "Database static roles: one PostgreSQL user, its password rotated",
              undo=nothing_to_undo, check=check, requires=(1,))
