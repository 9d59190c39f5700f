"""What the node agent does to one pod: its local ports, its volumes and service-account credentials, starting
its containers as local processes (image → command: :data:`labkit.backends.local.containers.IMAGES`) and
stopping them. Each function is a method of :class:`~labkit.backends.local.agent.Agent` (``start = pods.start``)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import port_for
from kubernetes.client.exceptions import ApiException

from ... import _procs
from . import kubelet, satoken
from .containers import (
    IMAGES,
    ConfigMissing,
    Container,
    Probe,
    Run,
    _rewrite,
    expand_vars,
    image_repo,
    resolve_env,
    unmapped_message,
)
from .kubelet import PORT_ANNOTATION, LogPump, log_path
from .kubelet import now_iso as _now

if TYPE_CHECKING:
    from .agent import Agent

PORTS_ANNOTATION = "vsolab.dev/ports"


def pod_dir(agent: Agent, pod: Any) -> Path:
    return agent.host.pod_dir(pod.metadata.namespace, pod.metadata.name)


def remove_pod_dir(agent: Agent, pod: Any) -> None:
    """Forget a deleted pod: its HOME, the Secret/ConfigMap volumes written there, its container logs."""
    ns, name = pod.metadata.namespace, pod.metadata.name
    agent.recorder.forget(pod.metadata.uid)
    if not any(r.namespace == ns and r.name == name for r in agent.runs.values()):
        shutil.rmtree(agent.pod_dir(pod), ignore_errors=True)
        kubelet.remove_logs(agent.logs, ns, name)


def allocate_ports(agent: Agent, run: Run, pod: Any) -> None:
    """A local port for every containerPort and probe port of the pod, published in its annotations."""
    wanted = [p.container_port for c in pod.spec.containers for p in (c.ports or [])]
    for c in pod.spec.containers:
        for pr in (c.readiness_probe, c.liveness_probe):
            action = pr and (pr.http_get or pr.tcp_socket)
            if action and isinstance(action.port, int):
                wanted.append(action.port)
    known = json.loads((pod.metadata.annotations or {}).get(PORTS_ANNOTATION, "{}"))
    for cp in wanted:
        if cp not in run.ports:
            run.ports[cp] = int(known.get(str(cp), 0)) or port_for.select_random()
    if run.ports and not known:
        first = [p.container_port for c in pod.spec.containers for p in (c.ports or [])] or list(run.ports)
        agent.core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, {"metadata": {"annotations": {
            PORT_ANNOTATION: str(run.ports[first[0]]),
            PORTS_ANNOTATION: json.dumps({str(k): v for k, v in run.ports.items()})}}})


def port_of(agent: Agent, run: Run, c: Container, port: Any) -> int | None:
    if isinstance(port, str) and not port.isdigit():
        named = [p.container_port for p in c.spec.ports or [] if p.name == port]
        return run.ports.get(named[0]) if named else None
    return run.ports.get(int(port))


def materialize_volumes(agent: Agent, pod: Any, container: Any) -> dict[str, str]:
    """Write configMap/secret volumes to disk; return mountPath → local dir."""
    mounts: dict[str, str] = {}
    vols = {v.name: v for v in pod.spec.volumes or []}
    for vm in container.volume_mounts or []:
        vol = vols.get(vm.name)
        if vol is None or vm.mount_path.startswith("/var/run/secrets/kubernetes.io"):
            continue
        local = agent.host.volume_dir(pod.metadata.namespace, pod.metadata.name, vm.name)
        data: dict[str, str] = {}
        if vol.config_map is not None:
            try:
                data = dict(agent.core.read_namespaced_config_map(vol.config_map.name, pod.metadata.namespace).data or {})
            except ApiException as exc:
                if exc.status == 404 and not vol.config_map.optional:
                    raise ConfigMissing(f'configmap "{vol.config_map.name}" not found') from None
        elif vol.secret is not None:
            try:
                raw = agent.core.read_namespaced_secret(vol.secret.secret_name, pod.metadata.namespace).data or {}
                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
            except ApiException as exc:
                if exc.status == 404 and not vol.secret.optional:
                    raise ConfigMissing(f'secret "{vol.secret.secret_name}" not found') from None
        for k, v in data.items():
            agent.host.write_volume_file(local / k, v)
        mounts[vm.mount_path.rstrip("/")] = str(local)
    return mounts


def start(agent: Agent, run: Run, c: Container) -> None:
    """Start (or restart) one container's process, or say why it waits."""
    pod, spec = agent.pods[run.uid], c.spec
    c.waiting, c.waiting_message, c.ready, c.kill_at, c.proc = "", "", False, None, None
    image = IMAGES.get(image_repo(spec.image))
    if image is None:
        c.waiting, c.waiting_message, c.next_start = "ErrImagePull", unmapped_message(spec.image), float("inf")
        agent.recorder.emit(pod, "Failed", f'Failed to pull image "{spec.image}": {c.waiting_message}',
                           container=c.name, warning=True)
        return
    try:
        env = resolve_env(agent.core, pod.metadata.namespace, spec, pod)
        c.mounts = agent.materialize_volumes(pod, spec)
        if satoken.wanted(pod) and run.credentials is None:
            run.credentials = agent.issue_credentials(pod)
    except ConfigMissing as exc:
        c.waiting, c.waiting_message, c.next_start = "CreateContainerConfigError", str(exc), time.monotonic() + 1
        agent.recorder.emit(pod, "Failed", f"Error: {exc}", container=c.name, warning=True)
        return
    python = agent.host.python()
    if python is None:
        c.waiting, c.next_start = "RunContainerError", float("inf")
        c.waiting_message = (f"the node agent found no Python that the pod user {agent.host.user!r} can run "
                             "(install one system-wide: apt-get install python3 python3-psycopg)")
        agent.recorder.emit(pod, "Failed", f"Error: {c.waiting_message}", container=c.name, warning=True)
        return
    argv = [_rewrite(a, c.mounts) for a in image.argv(spec, run.ports)]
    if argv and argv[0] == sys.executable:  # python:* images: the Python the pod's user can run
        argv[0] = python
    shim = agent.host.shim(python)
    home = agent.host.home(pod.metadata.namespace, pod.metadata.name)
    c.env = {"PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
             "HOSTNAME": pod.metadata.name, "LANG": "C.UTF-8", **env,
             _procs.TAG_ENV: f"{agent.state.lab_id}:pod:{run.uid}"}
    if run.credentials is not None and "KUBECONFIG" not in env:
        c.env["KUBECONFIG"] = str(run.credentials.kubeconfig)  # the service account (see labkit.backends.local.satoken)
    own = [run.ports[p.container_port] for p in spec.ports or [] if p.container_port in run.ports]
    if own:
        # The local stand-ins for the pod's own network namespace.
        c.env["PORT"], c.env["BIND_ADDR"] = str(own[0]), "127.0.0.1"
    argv = [expand_vars(a, c.env) for a in argv]
    if argv:
        argv[0] = agent.host.runnable(argv[0])  # under root: a copy of the lab's binary the pod user can run
    # A workingDir inside a volume maps to it; any other path of the image's file system to HOME.
    wd = spec.working_dir
    c.cwd = _rewrite(wd, c.mounts) if wd and _rewrite(wd, c.mounts) != wd else str(home)
    log = log_path(agent.logs, run.namespace, run.name, c.name)
    if log.exists():  # the previous instance's log, for `kubectl logs --previous`
        os.replace(log, log_path(agent.logs, run.namespace, run.name, c.name, previous=True))
    agent.recorder.emit(pod, "Pulled", f'Container image "{spec.image}" already present on machine',
                       container=c.name)
    try:
        c.proc = subprocess.Popen(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=c.cwd, start_new_session=True,
                                  **agent.host.as_pod_user())
    except OSError as exc:
        c.waiting, c.waiting_message, c.next_start = "RunContainerError", f"{argv[0]}: {exc.strerror or exc}", \
            float("inf")
        agent.recorder.emit(pod, "Failed", f"Error: {c.waiting_message}", container=c.name, warning=True)
        return
    c.pump = LogPump(c.proc, log)
    agent.recorder.emit(pod, "Created", "Container created", container=c.name)
    agent.recorder.emit(pod, "Started", "Container started", container=c.name)
    c.started_at, c.started_mono = _now(), time.monotonic()
    now = time.monotonic()
    c.probes = [Probe(kind, p, next_at=now + (p.initial_delay_seconds or 0))
                for kind, p in (("Readiness", spec.readiness_probe), ("Liveness", spec.liveness_probe)) if p]
    c.ready = spec.readiness_probe is None


def issue_credentials(agent: Agent, pod: Any) -> satoken.Credentials:
    """A token of the pod's service account, bound to the pod, and a kubeconfig using it."""
    try:
        cred = satoken.issue(agent.core, pod, agent.pod_dir(pod), agent.api.configuration.host,
                              agent.state.path("pki", "ca.crt"))
        agent.host.share_with_pod(cred.dir)  # under root: readable by the pod user, writable by the agent only
        return cred
    except ApiException as exc:
        reason = (json.loads(exc.body or "{}") if (exc.body or "").startswith("{") else {}).get("message", "")
        raise ConfigMissing(f"service account token: {reason or exc.reason}") from None


def kill(agent: Agent, run: Run, c: Container, message: str, grace: float) -> None:
    """Ask a container to stop (SIGTERM to its process group); SIGKILL follows after ``grace`` in :meth:`tick`."""
    if not c.running or c.kill_at is not None:
        return
    agent.recorder.emit(agent.pods[run.uid], "Killing", message, container=c.name)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(c.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
    c.kill_at = time.monotonic() + grace


def stop_run(agent: Agent, uid: str, grace: float = 3, pod: Any = None) -> None:
    run = agent.runs.pop(uid, None)
    if run is None:
        return
    procs = [c.proc for c in run.containers.values() if c.running]
    for c in run.containers.values():
        if pod is not None and c.running:
            agent.recorder.emit(pod, "Killing", f"Stopping container {c.name}", container=c.name)
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # type: ignore[union-attr]
            p.wait()  # type: ignore[union-attr]
