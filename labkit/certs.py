"""Stage 8 (notebook 08, beyond the tutorial): Certificates from Vault's PKI engine: VaultPKISecret.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from ._stage import Stage, nothing_to_undo
from .backends.contract import Lab
from .display import Check


def check(lab: Lab) -> Check:
    return Check("Certificates from Vault's PKI engine: VaultPKISecret", [("not written yet", False, "")])


STAGE = Stage(8, "08-pki-certificates", "Certificates from Vault's PKI engine: VaultPKISecret",
              undo=nothing_to_undo, check=check, requires=(1,))
