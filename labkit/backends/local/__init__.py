"""The local backend: etcd, kube-apiserver, kube-controller-manager, PostgreSQL, OpenBao, the node agent and the
chart repository as processes on 127.0.0.1; VSO is the pod of a Helm release that the node agent runs.

``LocalLab`` (labkit/backends/local/lab.py) is imported on first use, so that the lab's own processes
(``python -m labkit.backends.local.agent``, ``python -m labkit.backends.local.chartrepo``) do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..contract import CACHE_MODELS as CACHE_MODELS
    from ..contract import Health as Health
    from .lab import LocalLab as LocalLab

__all__ = ["CACHE_MODELS", "Health", "LocalLab"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import lab

        return getattr(lab, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
