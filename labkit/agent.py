"""The node agent: a small stand-in for a kubelet.

It registers one Node, binds the lab's Pending pods to it, and runs each
container as a local process:

* env values are resolved from literal ``value``, ``secretKeyRef``,
  ``configMapKeyRef`` and ``envFrom``, exactly once per process start, so a
  rollout restart really gives new processes with new env;
* an image is mapped to a local command (see :data:`IMAGES`); ``configMap`` and
  ``secret`` volumes are written to a per-pod directory and their mount paths
  rewritten in the command;
* each pod with a ``containerPort`` gets a free local port, passed as ``PORT``
  and published in the pod annotation ``vsolab.dev/port`` (podIP is 127.0.0.1);
* pod status (phase, conditions with Ready, containerStatuses, podIP) is kept
  up to date, readiness probes (httpGet, tcpSocket) are honoured, containers are
  restarted per ``restartPolicy``, and each pod has one log file;
* a pod with a ``deletionTimestamp`` is stopped and deleted.

Run it with ``python -m labkit.agent --state DIR``; ``labkit up`` does that.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.server
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import port_for
import requests
from kubernetes import client as kclient
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from . import _procs, k8s
from ._state import State

NODE_NAME = "vsolab-node"
PORT_ANNOTATION = "vsolab.dev/port"
RESTART_BACKOFF = 1.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _python_image(argv: list[str]) -> list[str]:
    """Images whose repository is ``python``: run with this machine's Python."""
    if argv and Path(argv[0]).name.startswith("python"):
        return [sys.executable, *argv[1:]]
    return argv


#: Image repository name → how to turn the container's argv into a local command.
IMAGES = {"python": _python_image}


def image_repo(image: str) -> str:
    """``docker.io/library/python:3.12-slim`` → ``python``."""
    name = image.split("@")[0].rsplit("/", 1)[-1]
    return name.split(":")[0]


class ConfigMissing(Exception):
    """A Secret or ConfigMap the container needs does not exist (yet)."""


def resolve_env(core: kclient.CoreV1Api, namespace: str, container: Any) -> dict[str, str]:
    """Resolve a container's env like the kubelet: envFrom first, then env in order."""
    out: dict[str, str] = {}
    cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def source(kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in cache:
            try:
                if kind == "secret":
                    obj = core.read_namespaced_secret(name, namespace)
                    cache[key] = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.data or {}).items()}
                else:
                    obj = core.read_namespaced_config_map(name, namespace)
                    cache[key] = dict(obj.data or {})
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
        ref = e.value_from.secret_key_ref or e.value_from.config_map_key_ref
        if ref is None:  # fieldRef / resourceFieldRef are not needed by the lab
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


def _expand(value: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


@dataclass
class Run:
    """The local process of one pod's (single) container."""

    uid: str
    namespace: str
    name: str
    proc: subprocess.Popen | None = None
    port: int | None = None
    container_port: int | None = None
    restarts: int = 0
    started_at: str = ""
    ready: bool = False
    waiting: str = ""
    waiting_message: str = ""
    terminated: dict[str, Any] = field(default_factory=dict)
    next_start: float = 0.0
    last_status: str = ""


class Agent:
    def __init__(self, state: State) -> None:
        self.state = state
        self.api = k8s.api_client(state.path("kube", "admin.kubeconfig"))
        self.core = kclient.CoreV1Api(self.api)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.runs: dict[str, Run] = {}
        self.pods: dict[str, Any] = {}
        self.stopping = threading.Event()
        self.shim = state.path("pods", ".bin")
        self.last_heartbeat = 0.0

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
        rv = ""
        while not self.stopping.is_set():
            try:
                if not rv:
                    lst = self.core.list_pod_for_all_namespaces()
                    for p in lst.items:
                        self.events.put(("SYNC", p))
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
            except Exception:  # noqa: BLE001 - API server restarting, connection reset, ...
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
            self.stop_run(uid, grace=min(pod.spec.termination_grace_period_seconds or 5, 5))
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
            self.runs[uid] = Run(uid, pod.metadata.namespace, pod.metadata.name)
            self.start(uid)

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

    def pod_dir(self, pod: Any) -> Path:
        return self.state.path("pods", f"{pod.metadata.namespace}_{pod.metadata.name}")

    def remove_pod_dir(self, pod: Any) -> None:
        """Forget a deleted pod's working directory (its HOME, Secret/ConfigMap volumes) and its log file."""
        ns, name = pod.metadata.namespace, pod.metadata.name
        if not any(r.namespace == ns and r.name == name for r in self.runs.values()):
            shutil.rmtree(self.pod_dir(pod), ignore_errors=True)
            self.state.path("logs", "pods", f"{ns}_{name}.log").unlink(missing_ok=True)

    def materialize_volumes(self, pod: Any, container: Any) -> dict[str, str]:
        """Write configMap/secret volumes to disk; return mountPath → local dir."""
        mounts: dict[str, str] = {}
        vols = {v.name: v for v in pod.spec.volumes or []}
        for vm in container.volume_mounts or []:
            vol = vols.get(vm.name)
            if vol is None or vm.mount_path.startswith("/var/run/secrets/kubernetes.io"):
                continue
            local = self.pod_dir(pod) / "volumes" / vm.name
            local.mkdir(parents=True, exist_ok=True)
            data: dict[str, str] = {}
            if vol.config_map is not None:
                try:
                    data = dict(self.core.read_namespaced_config_map(vol.config_map.name, pod.metadata.namespace).data or {})
                except ApiException as exc:
                    if exc.status == 404 and not vol.config_map.optional:
                        raise ConfigMissing(f'configmap "{vol.config_map.name}" not found') from None
            elif vol.secret is not None:
                try:
                    raw = self.core.read_namespaced_secret(vol.secret.secret_name, pod.metadata.namespace).data or {}
                    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
                except ApiException as exc:
                    if exc.status == 404 and not vol.secret.optional:
                        raise ConfigMissing(f'secret "{vol.secret.secret_name}" not found') from None
            for k, v in data.items():
                f = local / k
                f.write_text(v)
                os.chmod(f, 0o600)
            mounts[vm.mount_path.rstrip("/")] = str(local)
        return mounts

    def start(self, uid: str) -> None:
        run, pod = self.runs[uid], self.pods[uid]
        container = pod.spec.containers[0]
        run.waiting, run.waiting_message, run.ready = "", "", False
        mapper = IMAGES.get(image_repo(container.image))
        if mapper is None:
            run.waiting, run.waiting_message = "ImageNotMapped", (
                f"the node agent runs containers as local processes and knows the images {sorted(IMAGES)}; "
                f"{container.image!r} is not one of them")
            self.push_status(uid)
            return
        try:
            env = resolve_env(self.core, pod.metadata.namespace, container)
            mounts = self.materialize_volumes(pod, container)
        except ConfigMissing as exc:
            run.waiting, run.waiting_message = "CreateContainerConfigError", str(exc)
            run.next_start = time.monotonic() + 1
            self.push_status(uid)
            return
        argv = [*(container.command or ["python"]), *(container.args or [])]
        argv = [_rewrite(a, mounts) for a in mapper(argv)]
        ports = [p.container_port for c in pod.spec.containers for p in (c.ports or [])]
        if ports and run.port is None:
            run.container_port = ports[0]
            run.port = port_for.select_random()
            self.core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                           {"metadata": {"annotations": {PORT_ANNOTATION: str(run.port)}}})
        self.shim.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            link = self.shim / name
            if not link.exists():
                link.symlink_to(sys.executable)
        penv = {"PATH": f"{self.shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(self.pod_dir(pod)),
                "HOSTNAME": pod.metadata.name, "LANG": "C.UTF-8", **env,
                _procs.TAG_ENV: f"{self.state.lab_id}:pod:{uid}"}
        if run.port:
            # The local stand-ins for the pod's own network namespace.
            penv["PORT"] = str(run.port)
            penv["BIND_ADDR"] = "127.0.0.1"
        log = self.state.path("logs", "pods", f"{pod.metadata.namespace}_{pod.metadata.name}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"--- {_now()} start #{run.restarts} of {container.name} ---\n")
            fh.flush()
            cwd = _rewrite(container.working_dir, mounts) if container.working_dir else str(self.pod_dir(pod))
            Path(cwd).mkdir(parents=True, exist_ok=True)
            run.proc = subprocess.Popen(argv, env=penv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        cwd=cwd, start_new_session=True)
        run.started_at, run.terminated = _now(), {}
        self.push_status(uid)

    def stop_run(self, uid: str, grace: float = 3) -> None:
        run = self.runs.pop(uid, None)
        if run and run.proc and run.proc.poll() is None:
            _procs.stop_pid(run.proc.pid, grace=grace)
            run.proc.wait()

    def probe(self, uid: str) -> bool:
        run, pod = self.runs[uid], self.pods[uid]
        if run.proc is None or run.proc.poll() is not None:
            return False
        rp = pod.spec.containers[0].readiness_probe
        port = run.port
        try:
            if rp and rp.http_get and port:
                r = requests.get(f"http://127.0.0.1:{port}{rp.http_get.path or '/'}", timeout=1)
                return 200 <= r.status_code < 400
            if port:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            return True
        except OSError:
            return False
        except requests.RequestException:
            return False

    def tick(self) -> None:
        """Restart exited containers, refresh readiness, retry config errors."""
        now = time.monotonic()
        for uid, run in list(self.runs.items()):
            pod = self.pods.get(uid)
            if pod is None:
                continue
            if run.proc is None:
                if run.waiting == "CreateContainerConfigError" and now >= run.next_start:
                    self.start(uid)
                continue
            rc = run.proc.poll()
            if rc is not None and not run.terminated:
                run.terminated = {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error", "finishedAt": _now(),
                                  "startedAt": run.started_at}
                run.ready = False
                policy = pod.spec.restart_policy or "Always"
                if policy == "Always" or (policy == "OnFailure" and rc != 0):
                    run.next_start = now + min(RESTART_BACKOFF * (2 ** min(run.restarts, 5)), 30)
                    run.waiting = "CrashLoopBackOff"
                else:
                    run.next_start = float("inf")
                self.push_status(uid)
            elif rc is not None and now >= run.next_start:
                run.restarts += 1
                self.start(uid)
            elif rc is None:
                ready = self.probe(uid)
                if ready != run.ready:
                    run.ready = ready
                    self.push_status(uid)

    def push_status(self, uid: str) -> None:
        run, pod = self.runs.get(uid), self.pods.get(uid)
        if run is None or pod is None:
            return
        c = pod.spec.containers[0]
        running = run.proc is not None and run.proc.poll() is None
        if running:
            cstate: dict[str, Any] = {"running": {"startedAt": run.started_at}}
        elif run.terminated and not run.waiting:
            cstate = {"terminated": run.terminated}
        else:
            cstate = {"waiting": {"reason": run.waiting or "ContainerCreating", "message": run.waiting_message}}
        policy = pod.spec.restart_policy or "Always"
        if running or (run.terminated and policy == "Always") or run.waiting:
            phase = "Running" if running or run.terminated else "Pending"
        else:
            phase = "Succeeded" if run.terminated.get("exitCode") == 0 else "Failed"
        ready = "True" if run.ready and running else "False"
        now = _now()
        status = {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "hostIPs": [{"ip": "127.0.0.1"}], "startTime": pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            if pod.status.start_time else now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": c.name, "image": c.image, "imageID": f"local://{image_repo(c.image)}", "ready": ready == "True",
                "restartCount": run.restarts, "started": running, "state": cstate,
                "containerID": f"local://{run.proc.pid}" if run.proc else "",
                **({"lastState": {"terminated": run.terminated}} if run.terminated and running else {}),
            }],
        }
        key = json.dumps([phase, ready, cstate, run.restarts], sort_keys=True)
        if key == run.last_status:
            return
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
            run.last_status = key
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, port: int) -> None:
        for proc in _procs.tagged(f"{self.state.lab_id}:pod:"):
            _procs.stop_pid(proc.pid, grace=2)  # orphans of a crashed agent: restart them cleanly
        serve_health(port, self)
        while True:
            try:
                self.register_node()
                break
            except Exception:  # noqa: BLE001 - API server not ready yet
                time.sleep(0.5)
        threading.Thread(target=self.watch_pods, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        while not self.stopping.is_set():
            try:
                kind, pod = self.events.get(timeout=0.2)
                self.handle(kind, pod)
            except queue.Empty:
                pass
            except Exception as exc:  # noqa: BLE001 - keep the node alive; log and go on
                print(f"{_now()} agent: {type(exc).__name__}: {exc}", flush=True)
            try:
                self.tick()
                if time.monotonic() - self.last_heartbeat > 20:
                    self.heartbeat()
            except Exception as exc:  # noqa: BLE001
                print(f"{_now()} agent: {type(exc).__name__}: {exc}", flush=True)
        for uid in list(self.runs):
            self.stop_run(uid)


def _rewrite(arg: str, mounts: dict[str, str]) -> str:
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if arg == mount or arg.startswith(mount + "/"):
            return local + arg[len(mount):]
        arg = arg.replace(f" {mount}/", f" {local}/")
    return arg


def serve_health(port: int, agent: Agent) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
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
    ap = argparse.ArgumentParser(prog="labkit.agent")
    ap.add_argument("--state", required=True)
    args = ap.parse_args(argv)
    state = State(args.state)
    Agent(state).run(state.ports()["agent"])


if __name__ == "__main__":
    main()
