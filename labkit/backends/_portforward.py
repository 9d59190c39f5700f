"""``kubectl port-forward`` to the app's pods on a cluster backend, recorded in the lab's state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import port_for

from .. import _procs, install, k8s
from .._state import listening
from ..errors import ComponentError, MissingTool, SyncError
from .cluster_plan import KUBECTL_FIX, port_forward_command

if TYPE_CHECKING:
    from .cluster import ClusterLab


class PortForwards:
    """``kubectl port-forward`` processes to app pods, recorded in the lab's state so any process can stop them."""

    def __init__(self, lab: ClusterLab) -> None:
        self.lab = lab

    def _tag(self, namespace: str, name: str) -> str:
        return f"{self.lab.state.lab_id}:pf:{namespace}:{name}"

    def url(self, namespace: str, name: str) -> str:
        self.lab.state.ensure()
        pods = sorted(k8s.ready_pods(self.lab.kube, namespace, f"app={name}"), key=lambda p: p.metadata.creation_timestamp)
        if not pods:
            raise SyncError(f"Checked for a Ready pod of {namespace}/{name} to port-forward to: there is none.",
                            ["Deploy the app first.", f"Wait for its pod to be Ready: `kubectl get pods -n {namespace}`.",
                             "Check the image can be pulled (`kubectl describe pod …`)."])
        pod = pods[-1].metadata.name  # the newest: after a rollout restart the old pods are going away
        records = dict(self.lab.state.read().get("port_forwards", {}))
        key, tag = f"{namespace}/{name}", self._tag(namespace, name)
        rec = records.get(key)
        pidfile = self.lab.state.path("run", f"pf-{namespace}-{name}.pid")
        if rec and rec.get("pod") == pod and _procs.read_pid(pidfile, tag) and listening(rec["port"]):
            return f"http://127.0.0.1:{rec['port']}"
        self._stop(pidfile, tag)
        kubectl = install.kubectl_binary()
        if not kubectl:
            raise MissingTool("Checked PATH for kubectl (it port-forwards to the app): it is not installed.", [KUBECTL_FIX])
        port = port_for.select_random()
        log = self.lab.state.path("logs", f"port-forward-{namespace}-{name}.log")
        cmd = port_forward_command(str(kubectl), self.lab.kubeconfig, self.lab.kube_context, namespace, pod, port)
        daemon = _procs.Daemon(cmd, check=lambda: listening(port), tag=tag, log=log, timeout=30)
        try:
            _procs.start(daemon, pidfile)
        except (_procs.ProcessExitedWithError, _procs.TimeoutExpired):
            raise ComponentError(f"Started `kubectl port-forward` to {namespace}/{pod}: it did not listen on 127.0.0.1:{port}.",
                                 [f"Read its log: {log}", f"Check the pod: `kubectl describe pod {pod} -n {namespace}`.",
                                  "Check your kubeconfig allows pods/portforward."], detail=_procs.log_tail(log)) from None
        records[key] = {"pod": pod, "port": port}
        self.lab.state.update(port_forwards=records)
        return f"http://127.0.0.1:{port}"

    def _stop(self, pidfile: Path, tag: str) -> None:
        pid = _procs.read_pid(pidfile, tag)
        if pid:
            _procs.stop_pid(pid, grace=3)
        pidfile.unlink(missing_ok=True)

    def stop_all(self) -> int:
        n = 0
        for proc in _procs.tagged(f"{self.lab.state.lab_id}:pf:"):
            _procs.stop_pid(proc.pid, grace=3)
            n += 1
        for f in self.lab.state.path("run").glob("pf-*.pid") if self.lab.state.path("run").exists() else []:
            f.unlink(missing_ok=True)
        if self.lab.state.root.exists():
            self.lab.state.update(port_forwards={})
        return n
