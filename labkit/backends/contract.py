"""The backend contract: what notebooks, stage functions and :mod:`labkit.doctor` rely on from every lab.

:class:`Lab` types the lab object each backend gives (:class:`labkit.backends.local.LocalLab`,
:class:`labkit.backends.minikube.MinikubeLab`, :class:`labkit.backends.external.ExternalLab`); with it the
rows they report (:class:`Health` for ``labkit status``, :class:`Result` for ``labkit doctor``), the
client-cache persistence models VSO knows and the type of ``up``'s progress callback.

No backend is imported here (their types only under ``TYPE_CHECKING``), so each backend, :mod:`labkit.helm`,
:mod:`labkit.doctor` and every stage module can import it without a cycle.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._state import State
    from ..names import Names

#: VSO's client-cache persistence models (the chart's controller.manager.clientCache.persistenceModel)
CACHE_MODELS = ("none", "direct-unencrypted", "direct-encrypted")

#: ``up``'s progress callback: one line of what it is doing (the CLI prints it, a notebook shows it)
Progress = Callable[[str], None]


@dataclass
class Health:
    """One row of ``labkit status``."""

    component: str
    pid: int | None
    address: str
    healthy: bool
    version: str
    detail: str = ""


@dataclass
class Result:
    """One row of ``labkit doctor``."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


def tool_version(cmd: list[str]) -> str:
    """The first line ``cmd`` prints (its version), or "" when it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tool(name: str, version_args: list[str], fix: str) -> Result:
    """A Result for one command-line tool on PATH."""
    path = shutil.which(name)
    if not path:
        return Result(name, False, "", fix)
    return Result(name, True, tool_version([path, *version_args]) or path)


class Lab(Protocol):
    """A lab object, whatever its backend (AGENTS.md, "The backend contract").

    Addresses come in three views: this machine's (``vault_addr``, ``pg_address``, ``kubeconfig``), the
    cluster's pods' (``vault_addr_for_cluster``, ``pg_address_for_pods``) and Vault's (``kube_api_for_vault``,
    ``pg_address_for_vault``). A property may raise a :class:`~labkit.errors.LabkitError` saying the lab is
    not up yet or a setting is missing.
    """

    @property
    def backend(self) -> str:
        """``local``, ``minikube`` or ``external``."""

    @property
    def state(self) -> State:
        """The lab's state directory (ports, secrets, logs, Helm files)."""

    @property
    def names(self) -> Names:
        """Every name the lab creates, with the attendee prefix (empty on a lab of one's own)."""

    # -- life cycle -------------------------------------------------------------------------------------------
    def up(self, progress: Progress | None = None, *, operator: bool = True) -> dict[str, str]:
        """Start or reuse everything (idempotent); component → what was done. ``operator=False`` leaves a missing
        VSO uninstalled where notebook 01 installs it."""

    def down(self, purge: bool = False) -> list[str]:
        """Stop or remove what the lab made; ``purge`` also wipes its state. Returns what was stopped."""

    def status(self) -> list[Health]:
        """One row per component; never raises."""

    def healthy(self) -> bool:
        """Every row of :meth:`status` is healthy."""

    def env(self) -> dict[str, str]:
        """The variables for shells and kernels (:func:`labkit._env.lab_env`)."""

    @property
    def tools_dir(self) -> Path:
        """``<state>/bin``: the CLIs ``env()`` puts first on ``PATH``."""

    # -- Vault ---------------------------------------------------------------------------------------------------
    @property
    def vault_addr(self) -> str: ...
    @property
    def vault_token(self) -> str: ...
    @property
    def vault_addr_for_cluster(self) -> str: ...
    def events_supported(self) -> tuple[bool, str]:
        """Whether Vault's event notifications (instant updates) work here, and why not."""

    # -- Kubernetes ----------------------------------------------------------------------------------------------
    @property
    def kube(self) -> Any:
        """A kubernetes ``ApiClient`` (cached)."""

    @property
    def kubeconfig(self) -> Path: ...
    @property
    def kube_api_for_vault(self) -> str: ...
    def kube_ca(self) -> str:
        """The cluster's CA (PEM), which Vault's Kubernetes auth trusts."""

    def app_url(self, namespace: str, name: str) -> str:
        """A loopback URL to the newest Ready pod of Deployment ``name``."""

    # -- PostgreSQL ----------------------------------------------------------------------------------------------
    @property
    def pg_address(self) -> tuple[str, int]: ...
    @property
    def pg_address_for_vault(self) -> tuple[str, int]: ...
    @property
    def pg_address_for_pods(self) -> tuple[str, int]: ...
    @property
    def pg_admin_user(self) -> str: ...
    @property
    def pg_admin_password(self) -> str: ...
    def pg_dsn(self, user: str = ..., password: str | None = None, dbname: str = "postgres") -> str:
        """A psycopg connection string, as the admin unless ``user``/``password`` are given."""

    # -- VSO -------------------------------------------------------------------------------------------------------
    def restart_operator(self, *, client_cache_persistence_model: str | None = None) -> None:
        """Restart VSO; with a model, reconfigure its client cache first."""

    def operator_settings(self) -> dict[str, Any]:
        """What VSO runs with: ``client_cache_persistence_model`` and where it runs."""

    @property
    def helm_managed_operator(self) -> bool:
        """VSO is a Helm release (whose chart renders the cache stage's transit VaultAuth)."""


@runtime_checkable
class OperatorRelease(Protocol):
    """A lab that owns VSO's Helm release and leaves installing it to notebook 01 (the local lab).

    ``isinstance(lab, OperatorRelease)`` asks whether a lab has these methods (other backends' ``up`` installs VSO).
    """

    def operator_installed(self) -> bool: ...
    def install_operator(self, *, client_cache_persistence_model: str | None = None) -> str: ...
    def uninstall_operator(self) -> list[str]: ...
