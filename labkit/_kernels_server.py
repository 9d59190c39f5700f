"""JupyterLab's kernels over Unix sockets in a private directory (see labkit/_kernels.py). A module of its own so
that papermill's runs do not import Jupyter Server; JupyterLab loads it by name (``labkit._kernels.SERVER_ARGS``)."""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

from ._kernels import _Private


class ServerPrivateKernelManager(_Private, ServerKernelManager):
    """Jupyter Server's kernel manager, over Unix sockets in a private directory."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._private(kwargs))
