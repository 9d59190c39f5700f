"""labkit: the helper package of VSO Lab.

Start a lab (``labkit up`` or :func:`connect`), then drive Vault, Kubernetes and
the Vault Secrets Operator through small functions named after the lab's steps.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    CheckFailed,
    ComponentError,
    LabkitError,
    MissingTool,
    NotRunning,
    ParameterError,
    PortTaken,
    StateError,
    SyncError,
    VaultError,
)

__all__ = [
    "CheckFailed",
    "ComponentError",
    "LabkitError",
    "MissingTool",
    "NotRunning",
    "ParameterError",
    "PortTaken",
    "StateError",
    "SyncError",
    "VaultError",
    "__version__",
]
