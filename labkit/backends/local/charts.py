"""The chart repository as a lab component: ``python -m labkit.backends.local.chartrepo`` (chartrepo.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import requests

from ... import install
from .component import Component


class ChartRepo(Component):
    """The lab's Helm chart repository (the VSO chart ``labkit install`` packaged), on 127.0.0.1; see chartrepo.py."""

    name = "charts"
    timeout = 20.0

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        charts = install.TOOLS["helm"].dir / install.CHART_DIR
        return [sys.executable, "-m", "labkit.backends.local.chartrepo", "--dir", str(charts), "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3]) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def healthy(self) -> bool:
        return requests.get(f"{self.address()}/index.yaml", timeout=2).ok

    def version(self) -> str:
        return f"vault-secrets-operator {install.VSO_VERSION}" if install.TOOLS["helm"].built() else "empty (labkit install)"
