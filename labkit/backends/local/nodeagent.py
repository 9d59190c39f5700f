"""The node agent as a lab component: ``python -m labkit.backends.local.agent --state DIR`` (labkit/backends/local/agent.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import requests

from . import runas
from .component import Component


class NodeAgent(Component):
    name = "agent"
    extra_ports = ("kubelet",)  # its kubelet API (TLS), which the API server proxies `kubectl logs` to
    #: how the agent runs pods; an agent started with another revision is replaced on ``up`` (2: never as root)
    REVISION = "2"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "labkit.backends.local.agent", "--state", str(self.state.root)]

    def prepare(self) -> None:
        # Fail here, with the fix, rather than in the agent's log: the pods' user and directory.
        runas.pod_user()
        runas.ensure_pod_root(self.state)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        env["VSOLAB_AGENT_REVISION"] = self.REVISION
        return env

    def outdated(self, pid: int) -> bool:
        try:
            return psutil.Process(pid).environ().get("VSOLAB_AGENT_REVISION") != self.REVISION
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        return requests.get(f"{self.address()}/healthz", timeout=2).ok

    def version(self) -> str:
        from ..._version import __version__

        return __version__
