"""labkit: the helper package of VSO Lab.

Start a lab (``labkit up`` or :func:`get_lab`), then drive Vault, Kubernetes and
the Vault Secrets Operator through small functions named after the lab's steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
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

if TYPE_CHECKING:
    from .backends.contract import Lab


def get_lab(backend: str = "local", state: str | None = None) -> Lab:
    """The lab object for ``backend`` (not started): ``get_lab().up()``.

    Ready clients: ``lab.kube`` (kubernetes ApiClient), ``labkit.vault.client(lab)`` (hvac),
    ``lab.pg_dsn()`` (a psycopg connection string); addresses in ``lab.env()``.
    """
    from .backends import get_backend

    return get_backend(backend, state=state)


def up(backend: str = "local", state: str | None = None, operator: bool = True) -> dict[str, str]:
    """Start or repair the lab (``labkit up``); returns what each component did. ``operator=False`` (``labkit up
    --no-operator``) leaves VSO's Helm release uninstalled when it is missing: notebook 01 installs it."""
    return get_lab(backend, state).up(operator=operator)


def down(backend: str = "local", state: str | None = None, purge: bool = False) -> list[str]:
    """Stop the lab (``labkit down``); ``purge`` also wipes its state."""
    return get_lab(backend, state).down(purge=purge)


def status(backend: str = "local", state: str | None = None) -> list:
    """One health row per component (``labkit status``)."""
    return get_lab(backend, state).status()


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
    "down",
    "get_lab",
    "status",
    "up",
]
