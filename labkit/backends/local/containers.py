"""What the node agent knows about a pod's containers, and how a container becomes a local process.

* :data:`IMAGES`: the one table mapping an image to a local command;
* env resolution (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``) and mount-path rewriting;
* the per-pod and per-container records of :mod:`labkit.backends.local.agent`, and the pod status built from them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from .kubelet import LogPump, now_iso


def _python_image(argv: list[str], ports: dict[int, int]) -> list[str]:
    """Images whose repository is ``python``: run with this machine's Python."""
    if argv and Path(argv[0]).name.startswith("python"):
        return [sys.executable, *argv[1:]]
    return argv


@dataclass(frozen=True)
class LocalImage:
    """How an image runs here: its ENTRYPOINT and CMD, and how the container's argv becomes a local command
    (``local(argv, ports)``, with the pod's containerPort → local port map)."""

    local: Callable[[list[str], dict[int, int]], list[str]]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    def argv(self, spec: Any, ports: dict[int, int]) -> list[str]:
        """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD); ``args`` replaces CMD."""
        argv = [*spec.command, *(spec.args or [])] if spec.command else [*self.entrypoint, *(spec.args or self.cmd)]
        return self.local(argv, ports)


def _vso_image(argv: list[str], ports: dict[int, int]) -> list[str]:
    """``hashicorp/vault-secrets-operator``: the manager ``labkit install`` built. The image holds it as
    ``/vault-secrets-operator`` and, for the chart's pre-upgrade hook, as ``/scripts/upgrade-crds`` beside
    ``/scripts/crds`` (the binary upgrades the CRDs when called by that name); both are laid out the same way here."""
    from ... import install

    vso = install.PRODUCTS["vso"]
    local = {"/vault-secrets-operator": vso.paths()["vso-manager"], "/scripts/upgrade-crds": _vso_scripts(vso.dir)}
    return [str(local[argv[0]]), *argv[1:]] if argv and argv[0] in local else argv


def _vso_scripts(vso_dir: Path) -> Path:
    """``<vso cache>/scripts/upgrade-crds``, beside ``scripts/crds``, as in VSO's Dockerfile (``labkit install``
    lays them out: :func:`labkit.install.lay_out_vso_scripts`). A cache made by an older labkit gets them here
    when it is writable; a shared, read-only one without them is one paragraph naming the fix."""
    from ... import install
    from ...errors import ComponentError

    scripts = vso_dir / "scripts"
    if not all((scripts / name).exists() for name in ("upgrade-crds", "crds")):
        try:
            install.lay_out_vso_scripts(vso_dir)
        except OSError as exc:
            raise ComponentError(
                f"Checked {scripts} for the chart's upgrade-crds hook (upgrade-crds and crds, as in VSO's image): "
                f"they are missing and this user cannot add them ({exc.strerror}).",
                [f"Ask whoever owns the binary cache to run `labkit install vso --force` (it lays them out in {vso_dir}).",
                 "Or use a cache of your own: unset VSOLAB_CACHE and run `labkit install`.",
                 "Then run the Helm install again (`labkit up`, or notebook 01's Helm cell)."]) from None
    return scripts / "upgrade-crds"


def _kube_rbac_proxy_image(argv: list[str], ports: dict[int, int]) -> list[str]:
    """``quay.io/brancz/kube-rbac-proxy``: the one ``labkit install`` built from the same version's module."""
    from ... import install

    binary = install.TOOLS["kube-rbac-proxy"].paths()["kube-rbac-proxy"]
    return [str(binary), *argv[1:]] if argv and argv[0] == "/usr/local/bin/kube-rbac-proxy" else argv


#: Image repository name → how it runs as a local process. The one place to add an image the local lab can run.
IMAGES: dict[str, LocalImage] = {
    "python": LocalImage(_python_image, cmd=("python3",)),
    "vault-secrets-operator": LocalImage(_vso_image, entrypoint=("/vault-secrets-operator",)),
    "kube-rbac-proxy": LocalImage(_kube_rbac_proxy_image, entrypoint=("/usr/local/bin/kube-rbac-proxy",)),
}


def unmapped_message(image: str) -> str:
    known = ", ".join(f"{name}:*" for name in sorted(IMAGES))
    return (f"The vsolab node runs containers as local processes and maps only the images {known}; {image!r} is "
            f"not one of them (add it to IMAGES in labkit/backends/local/containers.py, or use one of those images).")


def image_repo(image: str) -> str:
    """``docker.io/library/python:3.12-slim`` → ``python``."""
    name = image.split("@")[0].rsplit("/", 1)[-1]
    return name.split(":")[0]


class ConfigMissing(Exception):
    """A Secret or ConfigMap the container needs does not exist (yet)."""


def resolve_env(core: kclient.CoreV1Api, namespace: str, container: Any, pod: Any = None) -> dict[str, str]:
    """Resolve a container's env like the kubelet: envFrom first, then env in order (``fieldRef`` from ``pod``)."""
    out: dict[str, str] = {}
    cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def source(kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in cache:
            try:
                if kind == "secret":
                    sec = core.read_namespaced_secret(name, namespace)
                    cache[key] = {k: base64.b64decode(v).decode(errors="replace") for k, v in (sec.data or {}).items()}
                else:
                    cm = core.read_namespaced_config_map(name, namespace)
                    cache[key] = dict(cm.data or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                cache[key] = None
        return cache[key]

    for ef in container.env_from or []:
        ref, kind = (ef.secret_ref, "secret") if ef.secret_ref else (ef.config_map_ref, "configmap")
        data = source(kind, ref.name)
        if data is None:
            if ref.optional:
                continue
            raise ConfigMissing(f'{kind} "{ref.name}" not found')
        for k, v in data.items():
            out[(ef.prefix or "") + k] = v
    for e in container.env or []:
        if e.value_from is None:
            out[e.name] = _expand(e.value or "", out)
            continue
        if e.value_from.field_ref is not None:
            if pod is not None:
                out[e.name] = field_value(pod, e.value_from.field_ref.field_path)
            continue
        ref = e.value_from.secret_key_ref or e.value_from.config_map_key_ref
        if ref is None:  # resourceFieldRef: the lab sets no limits
            continue
        kind = "secret" if e.value_from.secret_key_ref else "configmap"
        data = source(kind, ref.name)
        if data is None or ref.key not in data:
            if ref.optional:
                continue
            what = f'{kind} "{ref.name}"' if data is None else f'key "{ref.key}" in {kind} "{ref.name}"'
            raise ConfigMissing(f"{what} not found")
        out[e.name] = data[ref.key]
    return out


def field_value(pod: Any, path: str) -> str:
    """The downward API's ``fieldRef`` values (the paths the API server accepts for env)."""
    meta = pod.metadata
    for prefix, mapping in (("metadata.labels", meta.labels), ("metadata.annotations", meta.annotations)):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((mapping or {}).get(path[len(prefix) + 2:-2], ""))
    values = {
        "metadata.name": meta.name, "metadata.namespace": meta.namespace, "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name, "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1", "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    return str(values.get(path) or "")


def _expand(value: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of command and args with the container's environment: a defined VAR is
    replaced, an undefined one is left as written, ``$$`` is a literal ``$``."""
    return _VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def _rewrite(arg: str, mounts: dict[str, str]) -> str:
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if arg == mount or arg.startswith(mount + "/"):
            return local + arg[len(mount):]
        arg = arg.replace(f" {mount}/", f" {local}/")
    return arg


@dataclass
class Probe:
    kind: str  # "Readiness" or "Liveness"
    spec: Any
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    pending: concurrent.futures.Future | None = None


@dataclass
class Container:
    """One container of a pod: its current local process and what the kubelet remembers about it."""

    spec: Any
    proc: subprocess.Popen | None = None
    pump: LogPump | None = None
    restarts: int = 0
    started_at: str = ""
    started_mono: float = 0.0
    ready: bool = False
    waiting: str = ""
    waiting_message: str = ""
    last: dict[str, Any] = field(default_factory=dict)  # the last termination
    next_start: float = 0.0  # when to (re)start; inf: never again
    backoff: float = 0.0
    kill_at: float | None = None  # SIGKILL deadline of a container being stopped
    probes: list[Probe] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    mounts: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Run:
    """A pod on this node: its containers and its local ports."""

    uid: str
    namespace: str
    name: str
    containers: dict[str, Container] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # containerPort → local port
    start_time: str = ""
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    last_status: str = ""
    credentials: Any = None  # its service-account token and kubeconfig (labkit.backends.local.satoken.Credentials)


def pod_status(pod: Any, run: Run) -> dict[str, Any]:
    """The pod's status as a kubelet reports it: phase, conditions, one containerStatus per container."""
    statuses, finished = [], []
    for spec in pod.spec.containers:
        c = run.containers[spec.name]
        running = c.running
        if running:
            cstate: dict[str, Any] = {"running": {"startedAt": c.started_at}}
        elif c.waiting or not c.last:
            cstate = {"waiting": {"reason": c.waiting or "ContainerCreating",
                                  **({"message": c.waiting_message} if c.waiting_message else {})}}
        else:
            cstate = {"terminated": c.last}
        statuses.append({
            "name": c.name, "image": spec.image, "imageID": f"local://{image_repo(spec.image)}",
            "ready": running and c.ready, "restartCount": c.restarts, "started": running, "state": cstate,
            "containerID": f"local://{c.proc.pid}" if c.proc else "",
            **({"lastState": {"terminated": c.last}} if c.last and "terminated" not in cstate else {}),
        })
        finished.append(c.next_start == float("inf") and not running and bool(c.last))
    ready = "True" if all(s["ready"] for s in statuses) else "False"
    if all(finished):
        phase = "Succeeded" if all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses) else "Failed"
    elif any(not c.last and not c.running for c in run.containers.values()):
        phase = "Pending"
    else:
        phase = "Running"
    conditions = []
    for ctype, value in (("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", ready),
                         ("Ready", ready)):
        if run.conditions.get(ctype, ("", ""))[0] != value:
            run.conditions[ctype] = (value, now_iso())
        conditions.append({"type": ctype, "status": value, "lastTransitionTime": run.conditions[ctype][1]})
    status = {
        "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "hostIPs": [{"ip": "127.0.0.1"}], "conditions": conditions, "containerStatuses": statuses,
        "startTime": pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status.start_time
        else run.start_time,
    }
    return status
