"""The node agent: a small kubelet that runs every container of a pod as a local process.

It registers one Node (with its kubelet endpoint), binds the lab's Pending pods to it and, per container:
resolves env once per start (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``, ``fieldRef``); maps the image
to a local command (:data:`labkit.backends.local.containers.IMAGES`; an unmapped image waits with ``ErrImagePull``);
writes ``configMap``/``secret`` volumes to the pod's directory; gives every containerPort a local port
(``PORT``; annotations ``vsolab.dev/port`` and ``vsolab.dev/ports``; podIP 127.0.0.1); runs readiness and
liveness probes by their periods and thresholds; gives each container its pod's service-account token through a
per-pod ``KUBECONFIG`` (:mod:`labkit.backends.local.satoken`; local processes cannot mount ``/var/run/secrets``); restarts
per ``restartPolicy`` with a short back-off; keeps
one containerStatus per container; records the kubelet's events; and serves container logs to the API
server over TLS (:mod:`labkit.backends.local.kubelet`). A pod with a ``deletionTimestamp`` is stopped and deleted.

Run it with ``python -m labkit.backends.local.agent --state DIR``; ``labkit up`` does that.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.server
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as kclient
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from ... import _procs, k8s
from ..._state import State
from . import kubelet, pods, runas
from .containers import (
    ConfigMissing,
    Container,
    Run,
    _rewrite,
    pod_status,
)
from .kubelet import NODE_NAME, EventRecorder, exit_code, log_path
from .kubelet import now_iso as _now

BACKOFF_FIRST, BACKOFF_CAP, BACKOFF_RESET = 10.0, 40.0, 120.0


class Agent:
    def __init__(self, state: State) -> None:
        self.state = state
        self.api = k8s.api_client(state.path("kube", "admin.kubeconfig"))
        self.core = kclient.CoreV1Api(self.api)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.runs: dict[str, Run] = {}
        self.pods: dict[str, Any] = {}
        self.stopping = threading.Event()
        # Under root, pods run as an unprivileged user, in directories outside the 0700 state directory.
        self.host = runas.PodHost(state)
        self.logs = state.path("logs")
        self.last_heartbeat = 0.0
        self.recorder = EventRecorder(self.core)
        self.probers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="probe")
        self.kubelet_port = state.ports()["kubelet"]

    # -- node -------------------------------------------------------------------------------------
    def register_node(self) -> None:
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                                        "type": "vsolab-agent"}},
        }
        k8s.apply(self.api, body)
        self.heartbeat()

    def heartbeat(self) -> None:
        now = _now()
        self.core.patch_node_status(NODE_NAME, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "vsolab node agent is running",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "vsolab-agent", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "local-process://1", "kernelVersion": os.uname().release,
                         "osImage": "local processes", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""},
        }})
        self.last_heartbeat = time.monotonic()

    # -- watching -----------------------------------------------------------------------------------
    def watch_pods(self) -> None:
        rv: str | None = ""
        while not self.stopping.is_set():
            try:
                if not rv:
                    lst = self.core.list_pod_for_all_namespaces()
                    for p in lst.items:
                        self.events.put(("SYNC", p))
                    assert lst.metadata is not None  # the API server sets a list's metadata
                    rv = lst.metadata.resource_version
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=60,
                                   allow_watch_bookmarks=True):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = ""
                        break
                    rv = obj.metadata.resource_version
                    if ev["type"] != "BOOKMARK":
                        self.events.put((ev["type"], obj))
                    if self.stopping.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = ""
                else:
                    time.sleep(1)
            except Exception:  # API server restarting, connection reset, ...
                rv = ""
                time.sleep(1)

    # -- pod handling -------------------------------------------------------------------------------
    def handle(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        if kind == "DELETED":
            self.pods.pop(uid, None)
            self.stop_run(uid)
            self.remove_pod_dir(pod)
            return
        if not pod.spec.node_name:
            if pod.metadata.deletion_timestamp is None:
                self.bind(pod)
            return
        if pod.spec.node_name != NODE_NAME:
            return
        self.pods[uid] = pod
        if pod.metadata.deletion_timestamp is not None:
            self.stop_run(uid, grace=min(pod.spec.termination_grace_period_seconds or 5, 5), pod=pod)
            try:
                self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                body=kclient.V1DeleteOptions(grace_period_seconds=0))
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self.pods.pop(uid, None)
            self.remove_pod_dir(pod)
            return
        if uid not in self.runs and pod.status.phase not in ("Succeeded", "Failed"):
            run = self.runs[uid] = Run(uid, pod.metadata.namespace, pod.metadata.name, start_time=_now())
            for spec in pod.spec.containers:
                run.containers[spec.name] = Container(spec)
            for st in pod.status.container_statuses or []:  # it ran under an agent that stopped: a node restart
                if st.name in run.containers and st.container_id:
                    started = st.state.running.started_at if st.state and st.state.running else None
                    run.containers[st.name].restarts = (st.restart_count or 0) + 1
                    run.containers[st.name].last = {
                        "exitCode": 255, "reason": "Unknown", "finishedAt": _now(), "containerID": st.container_id,
                        **({"startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ")} if started else {})}
            self.allocate_ports(run, pod)
            for c in run.containers.values():
                self.start(run, c)
            self.push_status(uid)

    def bind(self, pod: Any) -> None:
        body = kclient.V1Binding(
            metadata=kclient.V1ObjectMeta(name=pod.metadata.name),
            target=kclient.V1ObjectReference(api_version="v1", kind="Node", name=NODE_NAME),
        )
        try:
            self.core.create_namespaced_binding(pod.metadata.namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            return
        self.recorder.emit(pod, "Scheduled", f"Successfully assigned {pod.metadata.namespace}/{pod.metadata.name} "
                                             f"to {NODE_NAME}", component="default-scheduler")

    # -- one pod: ports, volumes, credentials, its containers' processes (pods.py) ----------------------
    pod_dir = pods.pod_dir
    remove_pod_dir = pods.remove_pod_dir
    allocate_ports = pods.allocate_ports
    port_of = pods.port_of
    materialize_volumes = pods.materialize_volumes
    start = pods.start
    issue_credentials = pods.issue_credentials
    kill = pods.kill
    stop_run = pods.stop_run

    # -- the sync loop ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Notice exits, restart with back-off, run due probes, retry config errors; push changed statuses."""
        for uid, run in list(self.runs.items()):
            if uid not in self.pods:
                continue
            if run.credentials is not None and time.time() >= run.credentials.renew_at:
                try:
                    run.credentials = self.issue_credentials(self.pods[uid])
                except ConfigMissing:
                    run.credentials.renew_at = time.time() + 10
            for c in run.containers.values():
                self.sync_container(run, c)
            self.push_status(uid)

    def sync_container(self, run: Run, c: Container) -> None:
        pod, now = self.pods[run.uid], time.monotonic()
        if c.proc is None:
            if c.waiting and now >= c.next_start:
                self.start(run, c)
            return
        rc = c.proc.poll()
        if rc is None:
            if c.kill_at is not None and now >= c.kill_at:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
            elif c.kill_at is None:
                self.run_probes(run, c, now)
            return
        if not c.last or c.last.get("containerID") != f"local://{c.proc.pid}":  # it has just exited
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)  # what it left behind, as a container's end ends them all
            code = exit_code(rc)
            c.last = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": c.started_at,
                      "finishedAt": _now(), "containerID": f"local://{c.proc.pid}"}
            c.ready, c.probes, c.kill_at = False, [], None
            policy = pod.spec.restart_policy or "Always"
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                if now - c.started_mono > BACKOFF_RESET:
                    c.backoff = 0.0
                c.next_start = now + c.backoff
                if c.backoff:
                    c.waiting = "CrashLoopBackOff"
                    c.waiting_message = (f"back-off {c.backoff:.0f}s restarting failed container={c.name} "
                                         f"pod={run.name}_{run.namespace}({run.uid})")
                    self.recorder.emit(pod, "BackOff", f"Back-off restarting failed container {c.name} in pod "
                                                       f"{run.name}_{run.namespace}({run.uid})", container=c.name,
                                       warning=True)
                c.backoff = min(max(c.backoff * 2, BACKOFF_FIRST), BACKOFF_CAP)
            else:
                c.next_start = float("inf")
        if now >= c.next_start:
            c.restarts += 1
            self.start(run, c)

    def run_probes(self, run: Run, c: Container, now: float) -> None:
        pod = self.pods[run.uid]
        for pr in c.probes:
            if pr.pending is not None and pr.pending.done():
                try:
                    ok, why = pr.pending.result()
                except Exception as exc:  # a probe that cannot run has failed
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                pr.pending = None
                p = pr.spec
                pr.successes, pr.failures = (pr.successes + 1, 0) if ok else (0, pr.failures + 1)
                if not ok:
                    self.recorder.emit(pod, "Unhealthy", f"{pr.kind} probe failed: {why}", container=c.name,
                                       warning=True)
                if pr.kind == "Readiness":
                    if ok and pr.successes >= (p.success_threshold or 1):
                        c.ready = True
                    elif not ok and pr.failures >= (p.failure_threshold or 3):
                        c.ready = False
                elif not ok and pr.failures >= (p.failure_threshold or 3):
                    grace = min(pod.spec.termination_grace_period_seconds or 5, 5)
                    self.kill(run, c, f"Container {c.name} failed liveness probe, will be restarted", grace)
                    return
            if pr.pending is None and now >= pr.next_at:
                pr.next_at = now + (pr.spec.period_seconds or 10)
                pr.pending = self.probers.submit(
                    kubelet.run_probe, pr.spec, lambda port: self.port_of(run, c, port), c.env, c.cwd,
                    lambda argv: [_rewrite(a, c.mounts) for a in argv], self.host.as_pod_user())

    def push_status(self, uid: str) -> None:
        run, pod = self.runs.get(uid), self.pods.get(uid)
        if run is None or pod is None:
            return
        status = pod_status(pod, run)
        key = json.dumps(status, sort_keys=True)
        if key == run.last_status:
            return
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
            run.last_status = key
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- what the kubelet API asks (called from its threads) --------------------------------------
    def find(self, namespace: str, name: str) -> tuple[Run | None, Any]:
        for uid, pod in list(self.pods.items()):
            if pod.metadata.namespace == namespace and pod.metadata.name == name:
                return self.runs.get(uid), pod
        return None, None

    def log_source(self, namespace: str, pod: str, container: str, previous: bool
                   ) -> tuple[Path, Callable[[], bool]] | str | None:
        run, obj = self.find(namespace, pod)
        if obj is None or container not in {c.name for c in obj.spec.containers}:
            return None
        path = log_path(self.logs, namespace, pod, container, previous=previous)
        c = run.containers.get(container) if run else None
        if previous or c is None or c.pump is None:
            if not previous and c is not None and c.waiting:
                return f'container "{container}" in pod "{pod}" is waiting to start: {c.waiting}'
            return path, lambda: True
        return path, c.pump.done.is_set

    def pod_ports(self, namespace: str, pod: str) -> dict[str, int]:
        run, _ = self.find(namespace, pod)
        return {str(k): v for k, v in run.ports.items()} if run else {}

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, port: int) -> None:
        for proc in _procs.tagged(f"{self.state.lab_id}:pod:"):
            _procs.stop_pid(proc.pid, grace=2)  # orphans of a crashed agent: restart them cleanly
        serve_health(port, self)
        kubelet.serve(self.kubelet_port, self.state.path("pki"), self, self.stopping)
        while True:
            try:
                self.register_node()
                break
            except Exception:  # API server not ready yet
                time.sleep(0.5)
        threading.Thread(target=self.watch_pods, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        while not self.stopping.is_set():
            try:
                kind, pod = self.events.get(timeout=0.2)
                self.handle(kind, pod)
            except queue.Empty:
                pass
            except Exception as exc:  # keep the node alive; log and go on
                print(f"{_now()} agent: {type(exc).__name__}: {exc}", flush=True)
            try:
                self.tick()
                if time.monotonic() - self.last_heartbeat > 20:
                    self.heartbeat()
            except Exception as exc:
                print(f"{_now()} agent: {type(exc).__name__}: {exc}", flush=True)
        for uid in list(self.runs):
            self.stop_run(uid)


def serve_health(port: int, agent: Agent) -> None:
    """Plain-HTTP ``/healthz`` for ``labkit status`` (no pod data)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"pods": len(agent.runs), "node": NODE_NAME}).encode()
            ok = self.path == "/healthz" and agent.last_heartbeat > 0
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="labkit.backends.local.agent")
    ap.add_argument("--state", required=True)
    args = ap.parse_args(argv)
    state = State(args.state)
    Agent(state).run(state.ports()["agent"])


if __name__ == "__main__":
    main()
