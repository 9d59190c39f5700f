"""The lab backends, in one registry: ``local`` (default), ``minikube`` or ``external``.

Every backend gives a lab object with the same contract the notebooks rely on (:class:`~labkit.backends.contract.Lab`):
``up``, ``down``, ``status``, ``healthy``, ``env``, ``vault_addr``/``vault_token``, ``kubeconfig``,
``pg_address``/``pg_dsn``, ``restart_operator`` and ``operator_settings``. :func:`get_backend` builds it and
:func:`labkit.doctor.doctor` runs its prerequisite checks, both from :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .contract import Lab, Result


def _local(state: str | Path | None, **options: Any) -> Lab:
    from .local.lab import LocalLab

    return LocalLab(state)  # the local lab takes no options


def _local_checks() -> list[Result]:
    from .local.checks import local_checks

    return local_checks()


def _minikube(state: str | Path | None, **options: Any) -> Lab:
    from .minikube import MinikubeLab

    return MinikubeLab(state, **options)


def _minikube_checks() -> list[Result]:
    from .minikube.doctor import doctor_checks

    return doctor_checks()


def _external(state: str | Path | None, **options: Any) -> Lab:
    from .external import ExternalLab

    return ExternalLab(state, **options)


def _external_checks() -> list[Result]:
    from .external import doctor_checks

    return doctor_checks()


@dataclass(frozen=True)
class Backend:
    """One backend: how to build its lab object and check its prerequisites (``labkit doctor``)."""

    name: str
    lab: Callable[..., Lab]  # (state, **options) → the lab object, not started
    checks: Callable[[], list[Result]]
    use: str  # when to choose it (said when a backend name is not known)


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("local", _local, _local_checks,
            "Use backend 'local' for the self-contained lab (the default; CI, Binder, workshops)."),
    Backend("minikube", _minikube, _minikube_checks,
            "Use 'minikube' for the tutorial's own setup (needs Docker, minikube, Helm, kubectl)."),
    Backend("external", _external, _external_checks,
            "Use 'external' with VAULT_ADDR, VAULT_TOKEN and KUBECONFIG pointing at your own Vault and cluster."),
)}
BACKENDS = tuple(REGISTRY)


def backend(name: str | None = "local") -> Backend:
    """The registry's entry for ``name`` (default ``local``); a :class:`ParameterError` for an unknown name."""
    key = (name or "local").strip().lower()
    if key not in REGISTRY:
        raise ParameterError(f"Checked the backend name {key!r}: it is not one of {', '.join(BACKENDS)}.",
                             [b.use for b in REGISTRY.values()])
    return REGISTRY[key]


def get_backend(name: str | None = "local", state: str | Path | None = None, **options: Any) -> Lab:
    """Return the lab object for backend ``name``."""
    return backend(name).lab(state, **options)


__all__ = ["BACKENDS", "REGISTRY", "Backend", "Lab", "backend", "get_backend"]
