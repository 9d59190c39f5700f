"""Stage 1: connect VSO to Vault (VaultConnection) and Vault to Kubernetes
(the kubernetes auth method, with a token-reviewer service account)."""

from __future__ import annotations

from typing import Any

from kubernetes import client as kclient

from . import k8s, vault, vso
from .display import Check, Done, mask


def create_vault_namespace(lab: Any) -> Done:
    n = lab.names
    k8s.ensure_namespace(lab.kube, n.vault_ns)
    return Done(f"namespace {n.vault_ns} exists", f"kubectl create namespace {n.vault_ns}")


def create_vault_connection(lab: Any) -> Done:
    """A VaultConnection that tells VSO where Vault is."""
    n = lab.names
    obj = vso.vault_connection(n.vault_connection, n.vault_ns, lab.vault_addr_for_cluster)
    done = vso.apply(lab, obj)
    done.what = f"VaultConnection {n.vault_ns}/{n.vault_connection} points VSO at {lab.vault_addr_for_cluster}"
    return done


def connection_ref(lab: Any) -> str:
    n = lab.names
    return f"{n.vault_ns}/{n.vault_connection}"


def create_token_reviewer(lab: Any) -> Done:
    """The service account Vault uses to call TokenReview, its token Secret and its binding."""
    n = lab.names
    k8s.apply(lab.kube, [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n.reviewer_sa, "namespace": n.vault_ns}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {"name": n.reviewer_secret, "namespace": n.vault_ns,
                      "annotations": {"kubernetes.io/service-account.name": n.reviewer_sa}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": n.reviewer_binding},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": [{"kind": "ServiceAccount", "name": n.reviewer_sa, "namespace": n.vault_ns}]},
    ])
    k8s.wait_for("the token controller to fill vault-auth-secret",
                 lambda: (k8s.secret_data(lab.kube, n.reviewer_secret, n.vault_ns) or {}).get("token"), 60,
                 hint="kube-controller-manager's token controller fills service-account-token Secrets; run `labkit status`.")
    return Done(
        f"service account {n.vault_ns}/{n.reviewer_sa}, its token Secret {n.reviewer_secret}, and a binding to "
        "system:auth-delegator (so its token may call TokenReview)",
        f"kubectl create serviceaccount {n.reviewer_sa} -n {n.vault_ns}\n"
        f"kubectl apply -f - <<'EOF'\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {n.reviewer_secret}\n"
        f"  namespace: {n.vault_ns}\n  annotations:\n    kubernetes.io/service-account.name: {n.reviewer_sa}\n"
        f"type: kubernetes.io/service-account-token\nEOF\n"
        f"kubectl create clusterrolebinding {n.reviewer_binding} --clusterrole=system:auth-delegator "
        f"--serviceaccount={n.vault_ns}:{n.reviewer_sa}",
    )


def read_token_reviewer(lab: Any) -> dict[str, str]:
    """The decoded ``ca.crt`` and ``token`` of vault-auth-secret."""
    n = lab.names
    data = k8s.secret_data(lab.kube, n.reviewer_secret, n.vault_ns) or {}
    return {"ca.crt": data.get("ca.crt", ""), "token": data.get("token", ""), "namespace": data.get("namespace", "")}


def describe_token_reviewer(lab: Any, reveal: bool = False) -> Done:
    d = read_token_reviewer(lab)
    ca = d["ca.crt"].strip().splitlines()
    return Done(
        "decoded vault-auth-secret",
        "KUBE_CA_CERT=$(kubectl get secret vault-auth-secret -n vault -o jsonpath='{.data.ca\\.crt}' | base64 -d)\n"
        "TOKEN_REVIEW_JWT=$(kubectl get secret vault-auth-secret -n vault -o jsonpath='{.data.token}' | base64 -d)",
        {"ca.crt": f"{ca[0]} … {ca[-1]} ({len(ca)} lines, public: safe to show)" if ca else "(missing)",
         "token": mask(d["token"], reveal)},
    )


def enable_kubernetes_auth(lab: Any) -> Done:
    """Enable auth/kubernetes and point it at the cluster's API with the reviewer's token."""
    n = lab.names
    d = read_token_reviewer(lab)
    first = vault.enable_auth_method(lab, "kubernetes", n.k8s_auth_mount)
    second = vault.configure_kubernetes_auth(lab, lab.kube_api_for_vault, d["ca.crt"], d["token"], mount=n.k8s_auth_mount)
    return Done(f"{first.what}; {second.what}", f"{first.command}\n{second.command}")


def check(lab: Any) -> Check:
    n = lab.names
    conn = vso.get(lab, "VaultConnection", n.vault_connection, n.vault_ns)
    valid = bool(conn and (conn.get("status") or {}).get("valid"))
    d = read_token_reviewer(lab)
    binding_ok = False
    try:
        crb = kclient.RbacAuthorizationV1Api(lab.kube).read_cluster_role_binding(n.reviewer_binding)
        binding_ok = crb.role_ref.name == "system:auth-delegator"
    except Exception:  # noqa: BLE001
        binding_ok = False
    cfg: dict = {}
    try:
        r = vault.client(lab).read(f"auth/{n.k8s_auth_mount}/config")
        cfg = (r or {}).get("data", {})
    except Exception:  # noqa: BLE001
        cfg = {}
    return Check("VSO can reach Vault, and Vault can review Kubernetes tokens", [
        (f"VaultConnection {n.vault_ns}/{n.vault_connection} is valid", valid,
         "VSO could not reach Vault at that address: check spec.address and that Vault is up (`labkit status`)."),
        (f"Secret {n.vault_ns}/{n.reviewer_secret} holds a token and ca.crt", bool(d["token"] and d["ca.crt"]),
         "create the Secret with type kubernetes.io/service-account-token and the service-account.name annotation"),
        (f"ClusterRoleBinding {n.reviewer_binding} grants system:auth-delegator", binding_ok,
         "without it Vault's TokenReview calls get 403"),
        (f"auth/{n.k8s_auth_mount}/config points at {lab.kube_api_for_vault}",
         cfg.get("kubernetes_host") == lab.kube_api_for_vault,
         "run enable_kubernetes_auth(lab) to enable and configure the auth method"),
    ])
