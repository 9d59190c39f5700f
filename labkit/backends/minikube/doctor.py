"""``labkit doctor --backend minikube``: each tool with its version, the Docker engine, the Vault edition."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from ... import install
from ...errors import LabkitError, MissingTool
from ..contract import Result
from ..contract import tool_version as _version
from .plan import DOCKER_ENGINE_FIX, DOCKER_FIX, TOOLS, Settings, Tool


def docker_client(timeout: int = 10) -> Any:
    """A Docker SDK client whose engine answered a ping."""
    try:
        import docker
    except ImportError:
        raise MissingTool("Checked for the Python package `docker` (the Docker SDK): it is not installed.",
                          ["pip install docker", "Or reinstall labkit: pip install -e ."]) from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise MissingTool(f"Checked that the Docker engine answers (DOCKER_HOST or /var/run/docker.sock): it does not ({exc}).",
                          [DOCKER_ENGINE_FIX, DOCKER_FIX, "Or use the local backend, which needs no Docker."]) from None



def version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


def check_tool(t: Tool) -> Result:
    path = shutil.which(t.name)
    if not path and t.name == "kubectl":
        found = install.kubectl_binary()
        path = str(found) if found else None
    if not path:
        return Result(t.name, False, "", t.fix)
    text = _version([path, *t.version_args])
    have = version_tuple(text)
    if have and have < t.minimum:
        want = ".".join(map(str, t.minimum))
        return Result(t.name, False, text, f"{t.name} {text} is older than {want}: upgrade it. {t.fix}")
    return Result(t.name, True, text or path)


def doctor_checks(environ: dict[str, str] | None = None) -> list[Result]:
    """Each tool with its version, the Docker engine, and which Vault edition ``VAULT_LICENSE`` selects."""
    env = os.environ if environ is None else environ
    out = [check_tool(t) for t in TOOLS]
    try:
        client = docker_client(timeout=5)
        out.append(Result("docker engine", True, f"server {client.version().get('Version', '?')}"))
    except LabkitError as exc:
        out.append(Result("docker engine", False, "", exc.fixes[0]))
    settings = Settings.from_env(env)
    if settings.enterprise:
        out.append(Result("VAULT_LICENSE", True, f"set: Vault Enterprise ({settings.vault_image}); instant updates work"))
    else:
        out.append(Result("VAULT_LICENSE", True, f"not set: Vault community ({settings.vault_image}); "
                                                 "instant updates (event notifications) need Enterprise"))
    return out
