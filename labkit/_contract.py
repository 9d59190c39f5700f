"""What every backend shares and :mod:`labkit.doctor` reads: a ``labkit status`` row, a ``labkit doctor`` row,
the client-cache persistence models VSO knows.

No backend is imported here, so each backend (:mod:`labkit.local`, :mod:`labkit.minikube`,
:mod:`labkit.external`), :mod:`labkit.helm` and :mod:`labkit.doctor` can import it without a cycle; the old
homes of these names re-export them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

#: VSO's client-cache persistence models (the chart's controller.manager.clientCache.persistenceModel)
CACHE_MODELS = ("none", "direct-unencrypted", "direct-encrypted")


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
