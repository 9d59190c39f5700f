"""Notebook kernels that only their user can reach: Unix sockets in a private directory, never TCP.

A Jupyter kernel talks over five ZeroMQ sockets. Over TCP (Jupyter's default) they listen on 127.0.0.1, where
every local user can connect to them. The messages are signed with the key in the kernel's connection file, so
nobody else can run code; but the IOPub socket publishes every output, and a subscriber needs no key to read it.
On a shared host (a workshop server, a hub, CI) another user could read what a learner's kernel prints and the
widgets' messages: a revealed secret, the output of a `vault read` the learner typed.

Over IPC the sockets are files, and these managers put them in a fresh 0700 directory of their own under the
temporary directory (``mkdtemp``: a new, unguessable name nobody else can have made), so only their user can open
them. The path stays short: a Unix socket's path may not exceed 107 bytes, which Jupyter's own choice for IPC
(beside the connection file in ``jupyter --runtime-dir``) exceeds under a long home directory, and the kernel would
not start. :class:`AsyncPrivateKernelManager` runs papermill's kernels (``labkit run-notebooks``);
``labkit._kernels_server.ServerPrivateKernelManager`` JupyterLab's (``labkit lab``, the hub's single-user servers),
through :data:`SERVER_ARGS`.

What is left on TCP: ipykernel's output pipe for forked subprocesses, a receive-only socket on 127.0.0.1 that drops
any message without the kernel's random pipe id. It publishes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from jupyter_client.manager import AsyncKernelManager, KernelManager

#: JupyterLab's (and jupyterhub-singleuser's) command-line option for the same
SERVER_ARGS = ["--MultiKernelManager.kernel_manager_class=labkit._kernels_server.ServerPrivateKernelManager"]


class _Private:
    """The sockets and the connection file in a new 0700 directory, removed when the kernel is cleaned up."""

    def _private(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._private_dir = tempfile.mkdtemp(prefix="vsolab-kernel-")  # 0700, a new name: nobody else made it
        kwargs["transport"] = "ipc"
        kwargs["ip"] = os.path.join(self._private_dir, "kernel")
        kwargs.setdefault("connection_file", os.path.join(self._private_dir, "kernel.json"))  # JupyterLab names its own
        return kwargs

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)  # type: ignore[misc]
        if not restart:
            shutil.rmtree(self._private_dir, ignore_errors=True)


class PrivateKernelManager(_Private, KernelManager):
    """:class:`jupyter_client.KernelManager` over Unix sockets in a private directory."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._private(kwargs))


class AsyncPrivateKernelManager(_Private, AsyncKernelManager):
    """The same for nbclient (papermill), which drives its kernels asynchronously."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._private(kwargs))
