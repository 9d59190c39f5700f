"""Choose a lab backend by name: ``local`` (default), ``minikube`` or ``external``.

Every backend offers the same contract the notebooks rely on: ``up``, ``down``,
``status``, ``healthy``, ``env``, ``vault_addr``/``vault_token``, ``kubeconfig``,
``pg_address``/``pg_dsn``, ``restart_operator`` and ``operator_settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ParameterError

BACKENDS = ("local", "minikube", "external")


def get_backend(name: str | None = "local", state: str | Path | None = None, **options: Any) -> Any:
    """Return the lab object for backend ``name``."""
    name = (name or "local").strip().lower()
    if name == "local":
        from .local.lab import LocalLab

        return LocalLab(state)
    if name == "minikube":
        from .minikube import MinikubeLab

        return MinikubeLab(state, **options)
    if name == "external":
        from .external import ExternalLab

        return ExternalLab(state, **options)
    raise ParameterError(
        f"Checked the backend name {name!r}: it is not one of {', '.join(BACKENDS)}.",
        [
            "Use backend 'local' for the self-contained lab (the default; CI, Binder, workshops).",
            "Use 'minikube' for the tutorial's own setup (needs Docker, minikube, Helm, kubectl).",
            "Use 'external' with VAULT_ADDR, VAULT_TOKEN and KUBECONFIG pointing at your own Vault and cluster.",
        ],
    )
