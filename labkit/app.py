"""The example app: one Deployment manifest for every backend, and its endpoints.

The app's code travels in a ConfigMap and runs on the stock ``python:3.12-slim``
image: on minikube that is a real container; on the local lab the node agent
maps that image to this machine's Python. It reads ``DB_USERNAME`` and
``DB_PASSWORD`` from the Secret VSO writes, and ``DB_HOST``/``DB_PORT`` from a
ConfigMap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
import yaml

from . import k8s
from .backends.contract import Lab
from .display import Done, mask
from .errors import SyncError

IMAGE = "python:3.12-slim"
APP_PORT = 8080
CODE = Path(__file__).with_name("exampleapp.py")


def manifests(namespace: str, secret_name: str, db_host: str, db_port: int, name: str = "hashicups-exampleapp") -> list[dict]:
    labels = {"app": name}
    secret_env = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
        for env, key in (("DB_USERNAME", "username"), ("DB_PASSWORD", "password"))
    ]
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-code", "namespace": namespace},
         "data": {"app.py": CODE.read_text()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-db", "namespace": namespace},
         "data": {"DB_HOST": db_host, "DB_PORT": str(db_port)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": labels},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "terminationGracePeriodSeconds": 5,
                 "containers": [{
                     "name": "exampleapp", "image": IMAGE, "command": ["python", "/app/app.py"],
                     "ports": [{"containerPort": APP_PORT}],
                     "env": [*secret_env],
                     "envFrom": [{"configMapRef": {"name": f"{name}-db"}}],
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": APP_PORT}, "periodSeconds": 1},
                     "volumeMounts": [{"name": "code", "mountPath": "/app"}],
                 }],
                 "volumes": [{"name": "code", "configMap": {"name": f"{name}-code"}}],
             }},
         }},
    ]


def deploy(lab: Lab, namespace: str, secret_name: str, name: str = "hashicups-exampleapp", timeout: float = 60) -> Done:
    """Apply the app's Deployment and wait until a pod is Ready."""
    host, port = lab.pg_address_for_pods
    objs = manifests(namespace, secret_name, host, port, name)
    k8s.apply(lab.kube, objs)
    pod = wait_ready(lab, namespace, name, timeout)
    # The same manifests as a command that runs as shown (the ConfigMap carries the app's code, so it is long).
    docs = yaml.safe_dump_all(objs, sort_keys=False).rstrip()
    return Done(f"deployed {name} in {namespace}; pod {pod.metadata.name} is Ready",
                f"kubectl apply -n {namespace} -f - <<'EOF'\n{docs}\nEOF\nkubectl get pods -n {namespace}")


def wait_ready(lab: Lab, namespace: str, name: str = "hashicups-exampleapp", timeout: float = 60) -> Any:
    def probe() -> Any:
        pods = k8s.ready_pods(lab.kube, namespace, f"app={name}")
        return pods[0] if pods else None

    def hint() -> str:
        pods = k8s.pods(lab.kube, namespace, f"app={name}")
        if not pods:
            return "no pod exists: check the Deployment (`kubectl get deploy,rs -n …`) and that the lab is up"
        st = pods[0].status.container_statuses or []
        if st and st[0].state.waiting:
            return f"the container waits: {st[0].state.waiting.reason}: {st[0].state.waiting.message}"
        return f"pod {pods[0].metadata.name} is {pods[0].status.phase}; see its log"

    return k8s.wait_for(f"a Ready pod of {namespace}/{name}", probe, timeout, hint=hint)


def remove(lab: Lab, namespace: str, name: str = "hashicups-exampleapp") -> Done:
    for kind, n in (("Deployment", name), ("ConfigMap", f"{name}-code"), ("ConfigMap", f"{name}-db")):
        k8s.delete(lab.kube, "apps/v1" if kind == "Deployment" else "v1", kind, n, namespace)
    k8s.wait_for(f"the pods of {namespace}/{name} to go", lambda: not k8s.pods(lab.kube, namespace, f"app={name}"), 60)
    return Done(f"deleted the {name} Deployment in {namespace}", f"kubectl delete deployment {name} -n {namespace}")


def call(lab: Lab, namespace: str, path: str, name: str = "hashicups-exampleapp", timeout: float = 20) -> tuple[int, dict]:
    """GET an app endpoint through the backend's route to the pod; retried while pods roll."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            url = lab.app_url(namespace, name)
            r = requests.get(url + path, timeout=5)
            return r.status_code, r.json()
        except (requests.RequestException, SyncError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise SyncError(f"Called {path} on {namespace}/{name} for {timeout:.0f}s: no answer ({last}).",
                            ["Check the pod is Ready: `kubectl get pods -n " + namespace + "`.",
                             "Read the pod's log (labkit status shows the lab's log folder).",
                             "Re-deploy the app with the step above."])
        time.sleep(0.3)


def show(body: dict, reveal: bool = False) -> dict:
    """An endpoint's JSON with credentials masked."""
    return {k: (mask(v, reveal) if k == "password" else v) for k, v in body.items()}
