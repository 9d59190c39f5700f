"""VSO on the local lab: the pod of a Helm release (labkit/helm.py) that the node agent runs.

Each function here is a method of ``LocalLab`` (``lab.py`` binds them: ``restart_operator = operator.restart_operator``):
the ``operator`` row of ``status()``, installing, uninstalling and restarting the release, its settings (``helm get
values``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import requests

from ... import _procs, install
from ...errors import ComponentError
from ..contract import Health
from .apiserver import APIServer

if TYPE_CHECKING:
    from .lab import LocalLab

OPERATOR_NAMESPACE = "vault-secrets-operator"
#: the operator release's objects, read over plain HTTPS (without the kubernetes client, which is slow to import)
RELEASE_CHECK = ("/api/v1/namespaces/vault-secrets-operator/secrets"
                 "?labelSelector=owner%3Dhelm,name%3Dvault-secrets-operator,status%3Ddeployed")
OPERATOR_PODS = "/api/v1/namespaces/vault-secrets-operator/pods?labelSelector=control-plane%3Dcontroller-manager"


def operator_installed(lab: LocalLab) -> bool:
    """VSO's Helm release is installed (``helm list`` would show it)."""
    return lab._release_installed()


def release_installed(lab: LocalLab) -> bool:
    """VSO's Helm release is deployed (its release Secret, read over plain HTTPS)."""
    api = lab.components["apiserver"]
    assert isinstance(api, APIServer)
    r = api._get(RELEASE_CHECK)
    r.raise_for_status()
    return bool(r.json().get("items"))


def operator_pods(lab: LocalLab) -> list[dict[str, Any]]:
    api = lab.components["apiserver"]
    assert isinstance(api, APIServer)
    r = api._get(OPERATOR_PODS)
    r.raise_for_status()
    return [p for p in r.json().get("items", []) if not p["metadata"].get("deletionTimestamp")]


def _scaled_to_zero(lab: LocalLab) -> bool:
    """The release's Deployment asks for 0 replicas (someone ran `kubectl scale … --replicas=0`)."""
    from ... import helm

    api = lab.components["apiserver"]
    assert isinstance(api, APIServer)
    r = api._get(f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments/{helm.DEPLOYMENT}")
    return r.status_code == 200 and (r.json().get("spec") or {}).get("replicas") == 0


def ensure_operator(lab: LocalLab, say: Callable[[str], None], *, install_missing: bool) -> str:
    """The release's pod Ready (the agent restarts it; helm is not run again), or the release installed."""
    from ... import helm

    if not install.TOOLS["helm"].built():  # `up --no-operator` before `labkit install` built helm
        return ""
    changed = helm.write_lab_files(lab)  # $LAB_HELM_VALUES and $LAB_HELM_POSTRENDERER, for the lab's ports
    t0 = time.monotonic()
    if not lab._release_installed():
        if not install_missing:
            return ""
        helm.install_release(lab)
        say(f"  operator   installed (helm upgrade --install) in {time.monotonic() - t0:.1f}s")
        return "installed"
    if changed:  # the lab's ports (or its post-renderer) changed since the install: the same values, re-rendered
        helm.install_release(lab)
        say(f"  operator   upgraded in {time.monotonic() - t0:.1f}s (the lab's Helm values or post-renderer changed)")
        return "upgraded"
    if not lab._operator_pods() and _scaled_to_zero(lab):  # e.g. notebook 13's drill operator-down, left broken
        from kubernetes import client as kclient

        kclient.AppsV1Api(lab.kube).patch_namespaced_deployment_scale(helm.DEPLOYMENT, OPERATOR_NAMESPACE,
                                                                      {"spec": {"replicas": 1}})
        say("  operator   its Deployment was scaled to 0 replicas: scaled back to 1")
    deadline = time.monotonic() + 120
    while not any(_pod_serving(lab, p) for p in lab._operator_pods()):
        if lab._abort.is_set() or time.monotonic() > deadline:
            raise ComponentError(
                "Checked VSO's Helm release after starting the lab: its manager pod did not become Ready in 120s.",
                [f"Read the manager's log: `kubectl logs -n {OPERATOR_NAMESPACE} deploy/{helm.DEPLOYMENT} -c manager`.",
                 f"Read the pod's events: `kubectl describe pod -n {OPERATOR_NAMESPACE} -l {helm.SELECTOR}`.",
                 "Run `labkit up` again; or reinstall: `labkit operator uninstall`, then `labkit operator install`."])
        time.sleep(0.2)
    return "reused"


def operator_health(lab: LocalLab) -> Health:
    from ... import helm

    try:
        if not lab._release_installed():
            return Health("operator", None, "", True, "", "not installed (notebook 01 installs it)")
        pods = lab._operator_pods()
    except requests.RequestException as exc:
        return Health("operator", None, "", False, "", f"unknown ({type(exc).__name__})")
    if not pods:
        return Health("operator", None, f"{OPERATOR_NAMESPACE}/{helm.DEPLOYMENT}", False, "",
                      "release installed, no pod (check the Deployment's events)")
    pod = pods[0]
    st = pod.get("status") or {}
    restarts = sum(int(c.get("restartCount", 0)) for c in st.get("containerStatuses") or [])
    ready = _pod_serving(lab, pod)
    manager: dict[str, Any] = next((c for c in pod["spec"]["containers"] if c["name"] == "manager"), {})
    version = str(manager.get("image", "")).rsplit(":", 1)[-1]
    detail = f"{st.get('phase', 'Pending')}, {'Ready' if ready else 'not Ready'}, restarts {restarts}"
    return Health("operator", _pod_pid(lab, pod["metadata"]["uid"]), f"{OPERATOR_NAMESPACE}/{pod['metadata']['name']}",
                  ready, version, detail)


def restart_operator(lab: LocalLab, *, client_cache_persistence_model: str | None = None) -> None:
    """Restart the VSO manager: ``helm upgrade`` with the client-cache model when it changes, else a rollout
    restart (``kubectl rollout restart``: a new pod, the same values); waits for the new pod to be Ready."""
    from ... import helm, k8s

    helm._check_model(client_cache_persistence_model)
    with lab.state.lock("restart the VSO manager"):
        if not lab._release_installed():
            helm.install_release(lab, client_cache_persistence_model=client_cache_persistence_model)
            return
        if client_cache_persistence_model is not None and \
                client_cache_persistence_model != helm.persistence_model(helm.release_values(lab)):
            helm.install_release(lab, client_cache_persistence_model=client_cache_persistence_model)
            return
        old = {p["metadata"]["uid"] for p in lab._operator_pods()}
        k8s.rollout_restart(lab.kube, OPERATOR_NAMESPACE, helm.DEPLOYMENT)
        k8s.wait_for("the operator's new pod to be Ready", lambda: [
            p for p in lab._operator_pods() if _pod_ready(p) and p["metadata"]["uid"] not in old] or None, 180,
            interval=0.3, hint=f"`kubectl describe pod -n {OPERATOR_NAMESPACE} -l {helm.SELECTOR}`")


def install_operator(lab: LocalLab, *, client_cache_persistence_model: str | None = None) -> str:
    """``helm upgrade --install`` VSO's release from the lab's chart repository with the notebook's files
    (labkit/helm.py); re-running upgrades it (keeping its values, with the given client-cache model)."""
    from ... import helm

    with lab.state.lock("install the VSO release"):
        return helm.install_release(lab, client_cache_persistence_model=client_cache_persistence_model)


def uninstall_operator(lab: LocalLab) -> list[str]:
    """``helm uninstall`` the release, leaving no operator pod and no stuck object (labkit/helm.py)."""
    from ... import helm

    with lab.state.lock("uninstall the VSO release"):
        return helm.uninstall_release(lab)


def operator_settings(lab: LocalLab) -> dict[str, Any]:
    """The release's client-cache model, from its values (``helm get values``); "none" when not installed."""
    from ... import helm

    try:
        installed = lab._release_installed()
    except requests.RequestException:
        installed = False
    return {"client_cache_persistence_model": helm.persistence_model(helm.release_values(lab)) if installed else "none"}


def manager_pid(lab: LocalLab) -> int | None:
    pods = [p for p in lab._operator_pods() if p.get("status", {}).get("phase") == "Running"]
    return _pod_pid(lab, pods[0]["metadata"]["uid"]) if pods else None


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _pod_serving(lab: LocalLab, pod: dict[str, Any]) -> bool:
    """Ready, and about the manager process that runs now: after a crash of the whole lab the API server still
    holds the old pod status (Ready, with the dead process's containerID) until the node agent has restarted it."""
    if not _pod_ready(pod):
        return False
    st: dict[str, Any] = next((c for c in (pod.get("status") or {}).get("containerStatuses") or []
                               if c.get("name") == "manager"), {})
    cid = str(st.get("containerID") or "")
    if not cid.startswith("local://") or not cid[8:].isdigit():
        return False
    return int(cid[8:]) in {p.pid for p in _procs.tagged(f"{lab.state.lab_id}:pod:{pod['metadata']['uid']}")}


def _pod_pid(lab: LocalLab, uid: str, program: str = "vso-manager") -> int | None:
    """The pid of a pod's process running ``program`` (the node agent tags them ``<lab id>:pod:<uid>``)."""
    for proc in _procs.tagged(f"{lab.state.lab_id}:pod:{uid}"):
        with contextlib.suppress(psutil.Error, IndexError):
            if Path(proc.cmdline()[0]).name == program:
                return proc.pid
    return None
