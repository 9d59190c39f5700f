"""``labkit doctor``: check each prerequisite of a backend and say how to fix it."""

from __future__ import annotations

from .backends import backend as _backend

# Result and tool live with what the backends share (the backends' doctor_checks make Results): re-exported here
from .backends.contract import Result as Result
from .backends.contract import tool as tool
from .backends.local.checks import local_checks as local_checks


def doctor(backend: str = "local") -> list[Result]:
    """The checks of ``backend`` (the registry in :mod:`labkit.backends` names them)."""
    return _backend(backend).checks()
