"""What ``helm install vault-secrets-operator`` would put in the cluster, for the
local lab: the CRDs, the operator namespace, its service account, the chart's
manager ClusterRole bound to it, and a kubeconfig that authenticates as it."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import yaml
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from . import k8s
from .local import OPERATOR_NAMESPACE, OPERATOR_SA, TOKEN_SECRET, _kubeconfig

if TYPE_CHECKING:
    from .local import LocalLab

ROLE_NAME = "vault-secrets-operator-manager-role"


def _crds(lab: LocalLab) -> list[dict]:
    out = []
    for f in sorted(lab.bin["vso-crds"].glob("*.yaml")):
        out += k8s.load_yaml(f.read_text())
    return out


def cluster(lab: LocalLab) -> None:
    """Install VSO's CRDs and identity; idempotent and cheap when already done."""
    api = k8s.api_client(lab.kubeconfig)
    marker = lab.state.read().get("bootstrapped")
    if marker == lab.state.lab_id and lab.state.path("kube", "vso.kubeconfig").exists():
        try:
            kclient.CoreV1Api(api).read_namespaced_secret(TOKEN_SECRET, OPERATOR_NAMESPACE)
            kclient.ApiextensionsV1Api(api).read_custom_resource_definition("vaultstaticsecrets.secrets.hashicorp.com")
            return
        except ApiException:
            pass
    k8s.apply(api, _crds(lab))
    role = yaml.safe_load(lab.bin["vso-role"].read_text())
    role["metadata"] = {"name": ROLE_NAME, "labels": {"app.kubernetes.io/name": "vault-secrets-operator"}}
    k8s.apply(api, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {"name": TOKEN_SECRET, "namespace": OPERATOR_NAMESPACE,
                      "annotations": {"kubernetes.io/service-account.name": OPERATOR_SA}}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "vault-secrets-operator-manager-rolebinding"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}]},
    ])

    def token() -> str | None:
        sec = k8s.secret(api, TOKEN_SECRET, OPERATOR_NAMESPACE)
        return sec.data.get("token") if sec and sec.data else None

    tok = k8s.wait_for(
        "the token controller to fill VSO's service-account token Secret", token, 60,
        hint="kube-controller-manager's serviceaccount-token-controller fills it: check `labkit status` and logs/kcm.log.",
    )
    text = _kubeconfig(
        lab.kube_api, "vsolab", OPERATOR_SA, user={"token": base64.b64decode(tok).decode()},
        ca_file=str(lab.state.path("pki", "ca.crt")),
    )
    lab.state.write_private("kube/vso.kubeconfig", text)
    lab.state.update(bootstrapped=lab.state.lab_id)
