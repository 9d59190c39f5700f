"""VSO installed the tutorial's way on the local lab: ``helm install`` from the lab's chart repository.

The release's manager pod runs on the node agent like any pod (images → the binaries ``labkit install`` built,
see :data:`labkit._containers.IMAGES`), with its service account's token (:mod:`labkit._satoken`). What the
local lab must add to the chart's defaults is all in two visible places, both shown by the notebook:

* ``values.yaml`` (:func:`values`): ``controller.strategy: Recreate`` (pods share the host's network, so a new
  pod cannot listen beside the old one as a rolling update would have it); through
  ``controller.manager.extraArgs`` (after the chart's fixed flags, and the last flag wins) the manager's
  addresses on the lab's recorded loopback ports and leader election off (controller-runtime finds the lease's
  namespace only in the service-account volume); the same settings as the host-process VSO of ``labkit up``
  (client-cache model, back-off, log level); ``OPERATOR_NAMESPACE`` (in a real pod VSO reads its namespace from
  the service-account volume, which local processes cannot have); and the pod annotation ``vsolab.dev/ports``
  that tells the node agent which local port stands for each containerPort;
* the post-renderer :mod:`labkit.helm_postrender` for kube-rbac-proxy, whose addresses the chart fixes with no
  value, and which finds the API server only through ``--kubeconfig`` (it ignores ``KUBECONFIG``).

This module is the separate entry point ``LocalLab.install_operator()`` / ``labkit operator install``; ``labkit up``
still runs VSO as a host process, which :func:`install` stops (and :func:`uninstall` brings back), so that never two
operators reconcile at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import install
from .errors import LabkitError, ParameterError

if TYPE_CHECKING:
    from .local import LocalLab

RELEASE = "vault-secrets-operator"
NAMESPACE = "vault-secrets-operator"
REPO = "vsolab"
CHART = f"{REPO}/vault-secrets-operator"
DEPLOYMENT = f"{RELEASE}-controller-manager"
POST_RENDERER = Path(__file__).with_name("helm_postrender.py")
#: ``labkit up``'s host-process VSO holds these names; the release creates its own (see :func:`release_identity`).
HOST_IDENTITY = [
    ("v1", "ServiceAccount", "vault-secrets-operator-controller-manager", NAMESPACE),
    ("v1", "Secret", "vault-secrets-operator-controller-manager-token", NAMESPACE),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "vault-secrets-operator-manager-rolebinding", None),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "vault-secrets-operator-manager-role", None),
]


class HelmError(LabkitError):
    """A helm command failed."""


def helm_home(lab: LocalLab) -> dict[str, str]:
    """Helm's config, cache and data dirs in the lab's state: two labs' ``vsolab`` repos never mix."""
    base = lab.state.path("helm")
    return {"HELM_CONFIG_HOME": str(base / "config"), "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_DATA_HOME": str(base / "data")}


def repo_url(lab: LocalLab) -> str:
    return f"http://127.0.0.1:{lab.ports['charts']}"


def values(lab: LocalLab, client_cache_persistence_model: str | None = None) -> dict[str, Any]:
    """The lab's values for the chart (see the module docstring for why each is there)."""
    p = lab.ports
    model = client_cache_persistence_model or lab.operator_settings().get("client_cache_persistence_model", "none")
    cache: dict[str, Any] = {"persistenceModel": model}
    if model == "direct-encrypted":  # the chart then renders the transit VaultAuth: stage 5's values (labkit.cache)
        from .cache import helm_values

        cache = yaml.safe_load(helm_values(lab))["controller"]["manager"]["clientCache"]
    return {
        "controller": {
            # The lab's pods share the host's network, so a second operator pod cannot listen on the same ports
            # while the first still runs: replace the pod (Recreate) instead of rolling (surge, then remove).
            "strategy": {"type": "Recreate"},
            "annotations": {"vsolab.dev/ports": json.dumps({"8081": p["operator_probe"], "8443": p["operator_https"]})},
            "manager": {
                "clientCache": cache,
                "backoffOnSecretSourceError": {"initialInterval": "1s", "maxInterval": "10s"},
                "logging": {"level": "info"},
                "extraEnv": [{"name": "OPERATOR_NAMESPACE", "value": NAMESPACE}],
                "extraArgs": [f"--health-probe-bind-address=127.0.0.1:{p['operator_probe']}",
                              f"--metrics-bind-address=127.0.0.1:{p['operator_metrics']}",
                              # controller-runtime finds the lease's namespace only in the service-account volume
                              # (there is no flag for it); one replica, replaced (Recreate), needs no election.
                              "--leader-elect=false"],
            },
        },
    }


def post_renderer_args(lab: LocalLab) -> list[str]:
    """kube-rbac-proxy's addresses on the lab's loopback ports (the chart fixes them; see helm_postrender)."""
    p = lab.ports
    return [f"--secure-listen-address=127.0.0.1:{p['operator_https']}",
            f"--upstream=http://127.0.0.1:{p['operator_metrics']}/", "+--kubeconfig=$(KUBECONFIG)"]


def write_values(lab: LocalLab, client_cache_persistence_model: str | None = None) -> Path:
    text = ("# The local lab's values for the VSO chart: written by labkit (labkit/helm.py explains each).\n"
            + yaml.safe_dump(values(lab, client_cache_persistence_model), sort_keys=False))
    return lab.state.write_private("helm/values.yaml", text)


def command(lab: LocalLab, *args: str) -> list[str]:
    return [str(install.tools()["helm"]), *args]


def run(lab: LocalLab, *args: str, timeout: float = 300) -> str:
    """Run helm against the lab (its admin kubeconfig, its own helm dirs); return stdout or raise HelmError."""
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig), **helm_home(lab),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    try:
        res = subprocess.run(command(lab, *args), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HelmError(f"Ran `helm {' '.join(args[:2])}` against the lab: it did not finish in {timeout:.0f}s.",
                        ["Check the operator's pods: `kubectl get pods -n vault-secrets-operator`.",
                         "Read their events: `kubectl get events -n vault-secrets-operator`.",
                         "Run `labkit status` to check the node agent and kube-controller-manager."]) from None
    if res.returncode != 0:
        raise HelmError(f"Ran `helm {' '.join(args[:2])}` against the lab: it failed (exit {res.returncode}).",
                        ["Read helm's message above.", "Run `labkit status` to check the lab is up.",
                         "Check the operator's pods: `kubectl get pods -n vault-secrets-operator`."],
                        detail=res.stderr.strip()[-2000:])
    return res.stdout


def add_repo(lab: LocalLab) -> None:
    run(lab, "repo", "add", REPO, repo_url(lab), "--force-update")
    run(lab, "repo", "update", REPO)


def release_identity(lab: LocalLab) -> None:
    """Delete the service account, token and RBAC that ``labkit up`` made for the host-process VSO under the
    names the chart uses, so that the release creates (and owns) its own."""
    from . import k8s

    for api_version, kind, name, ns in HOST_IDENTITY:
        obj = k8s.get(lab.kube, api_version, kind, name, ns)
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        if obj is not None and labels.get("app.kubernetes.io/managed-by") != "Helm":
            k8s.delete(lab.kube, api_version, kind, name, ns)


def install_or_upgrade(lab: LocalLab, verb: str, *, client_cache_persistence_model: str | None = None,
                       extra: tuple[str, ...] = ()) -> str:
    if client_cache_persistence_model is not None:
        from .local import CACHE_MODELS

        if client_cache_persistence_model not in CACHE_MODELS:
            raise ParameterError(
                f"Checked the client-cache persistence model {client_cache_persistence_model!r}: VSO knows {CACHE_MODELS}.",
                ["Use 'direct-encrypted' for the encrypted cache.", "Use 'none' for VSO's default.",
                 "Use 'direct-unencrypted' only to experiment."])
    vals = write_values(lab, client_cache_persistence_model)
    args = [verb, RELEASE, CHART, "--version", install.VSO_VERSION, "-n", NAMESPACE, "-f", str(vals),
            "--post-renderer", str(POST_RENDERER)]
    for a in post_renderer_args(lab):
        args += ["--post-renderer-args", a]
    if verb == "install":
        args.append("--create-namespace")
    return run(lab, *args, "--wait", "--timeout", "3m", *extra)


def install_release(lab: LocalLab, *, client_cache_persistence_model: str | None = None) -> str:
    """``helm install`` VSO from the lab's repository; stops the host-process VSO first. Re-running upgrades."""
    lab.components["vso"].stop()
    lab.state.update(operator="helm")
    add_repo(lab)
    release_identity(lab)
    verb = "upgrade" if installed(lab) else "install"
    out = install_or_upgrade(lab, verb, client_cache_persistence_model=client_cache_persistence_model)
    if client_cache_persistence_model is not None:
        lab.state.update(vso={**lab.state.read().get("vso", {}),
                              "client_cache_persistence_model": client_cache_persistence_model})
    return out


def installed(lab: LocalLab) -> bool:
    return bool(json.loads(run(lab, "list", "-n", NAMESPACE, "-o", "json", "--filter", f"^{RELEASE}$") or "[]"))


def uninstall_release(lab: LocalLab, *, restore_host_operator: bool = True) -> str:
    """``helm uninstall`` (its pre-delete hook Job runs as a pod), wait for the operator's pods to go; then give
    ``labkit up``'s VSO back its identity and start it again.

    Not ``--wait``: the chart's pre-delete hook removes VSO's finalizers while the manager still runs, so the
    manager can put one back on the chart's own transit VaultAuth; Helm deletes that VaultAuth after the manager's
    RBAC and service account, so nothing may remove the finalizer until an operator runs again. The host-process
    VSO started here finishes that deletion, and this function waits for it."""
    from . import k8s

    out = run(lab, "uninstall", RELEASE, "-n", NAMESPACE) if installed(lab) else ""
    k8s.wait_for("the operator's pods to be gone after `helm uninstall`",
                 lambda: not k8s.pods(lab.kube, NAMESPACE, "control-plane=controller-manager") or None, 120,
                 interval=0.5, hint="Check the node agent: `labkit status`; and `kubectl get pods -n vault-secrets-operator`.")
    lab.state.update(operator="host")
    if restore_host_operator:
        from . import _bootstrap

        _bootstrap.cluster(lab)
        lab.components["vso"].ensure()
        k8s.wait_for("the release's VaultAuths to be deleted", lambda: not _release_vault_auths(lab) or None, 120,
                     interval=0.5, hint="Check VSO's log: `labkit status` and <state>/logs/vso.log.")
    return out


def _release_vault_auths(lab: LocalLab) -> list[Any]:
    from kubernetes import client as kclient

    res = kclient.CustomObjectsApi(lab.kube).list_namespaced_custom_object(
        "secrets.hashicorp.com", "v1beta1", NAMESPACE, "vaultauths", label_selector=f"app.kubernetes.io/instance={RELEASE}")
    return list(res.get("items") or [])
