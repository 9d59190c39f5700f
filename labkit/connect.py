"""Stage 1: connect VSO to Vault (VaultConnection) and Vault to Kubernetes
(the kubernetes auth method, with a token-reviewer service account).

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from . import k8s, vault, vso
from ._stage import Stage, exercise
from ._teardown import delete_namespace
from .backends.contract import Lab, OperatorRelease
from .display import Check, Done, Steps

OPERATOR_RELEASE = "vault-secrets-operator"


def create_vault_namespace(lab: Lab) -> Done:
    n = lab.names
    k8s.ensure_namespace(lab.kube, n.vault_ns)
    return Done(f"namespace {n.vault_ns} exists", f"kubectl create namespace {n.vault_ns}")


def create_vault_connection(lab: Lab) -> Done:
    """A VaultConnection that tells VSO where Vault is."""
    n = lab.names
    obj = vso.vault_connection(n.vault_connection, n.vault_ns, lab.vault_addr_for_cluster)
    done = vso.apply(lab, obj)
    done.what = f"VaultConnection {n.vault_ns}/{n.vault_connection} points VSO at {lab.vault_addr_for_cluster}"
    return done


def connection_ref(lab: Lab) -> str:
    return str(lab.names.connection_ref)


def create_token_reviewer(lab: Lab) -> Done:
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


def read_token_reviewer(lab: Lab) -> dict[str, str]:
    """The decoded ``ca.crt`` and ``token`` of vault-auth-secret."""
    n = lab.names
    data = k8s.secret_data(lab.kube, n.reviewer_secret, n.vault_ns) or {}
    return {"ca.crt": data.get("ca.crt", ""), "token": data.get("token", ""), "namespace": data.get("namespace", "")}


def enable_kubernetes_auth(lab: Lab) -> Done:
    """Enable auth/kubernetes and point it at the cluster's API with the reviewer's token."""
    n = lab.names
    d = read_token_reviewer(lab)
    first = vault.enable_auth_method(lab, "kubernetes", n.k8s_auth_mount)
    second = vault.configure_kubernetes_auth(lab, lab.kube_api_for_vault, d["ca.crt"], d["token"], mount=n.k8s_auth_mount)
    return Done(f"{first.what}; {second.what}", f"{first.command}\n{second.command}")


def check(lab: Lab) -> Check:
    n = lab.names
    conn = vso.get(lab, "VaultConnection", n.vault_connection, n.vault_ns)
    valid = bool(conn and (conn.get("status") or {}).get("valid"))
    d = read_token_reviewer(lab)
    binding_ok = False
    try:
        crb = kclient.RbacAuthorizationV1Api(lab.kube).read_cluster_role_binding(n.reviewer_binding)
        binding_ok = crb.role_ref.name == "system:auth-delegator"
    except Exception:
        binding_ok = False
    cfg: dict = {}
    try:
        r = vault.client(lab).read(f"auth/{n.k8s_auth_mount}/config")
        cfg = (r or {}).get("data", {})
    except Exception:
        cfg = {}
    return Check("VSO can reach Vault, and Vault can review Kubernetes tokens", [
        (f"VaultConnection {n.vault_ns}/{n.vault_connection} is valid", valid,
         "VSO could not reach Vault at that address: check spec.address (`kubectl describe vaultconnection "
         f"{n.vault_connection} -n {n.vault_ns}` shows VSO's reason) and that Vault is up (`labkit status`)."),
        (f"Secret {n.vault_ns}/{n.reviewer_secret} holds a token and ca.crt", bool(d["token"] and d["ca.crt"]),
         "apply the token-reviewer cell again: the Secret needs type kubernetes.io/service-account-token and the "
         "kubernetes.io/service-account.name annotation"),
        (f"ClusterRoleBinding {n.reviewer_binding} grants system:auth-delegator", binding_ok,
         "without it Vault's TokenReview calls get 403"),
        (f"auth/{n.k8s_auth_mount}/config points at {lab.kube_api_for_vault}",
         cfg.get("kubernetes_host") == lab.kube_api_for_vault,
         f"run the `vault auth enable` and `vault write auth/{n.k8s_auth_mount}/config` cells again "
         "(kubernetes_host=\"$KUBE_API_FOR_VAULT\")"),
    ])


TYPO_CONNECTION = "vault-connection-typo"


@exercise(
    "connection-typo",
    "Apply a second VaultConnection, vault-connection-typo, whose address has a wrong port, and find VSO's reason.",
    ["Copy the VaultConnection cell's manifest; change metadata.name to vault-connection-typo and spec.address to "
     "http://127.0.0.1:1.",
     "kubectl apply accepts it: the API server checks the manifest's shape, not whether Vault answers there. "
     "VSO checks that, a moment later.",
     "`kubectl describe vaultconnection vault-connection-typo -n ${PREFIX}vault`: status.valid is false, and the "
     "events at the bottom carry VSO's reason (VaultClientError: Failed to check Vault seal status …)."])
def _connection_typo(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The learner's VaultConnection exists with another address than the lab's, and VSO has judged it invalid."""
    n = lab.names
    deadline = time.monotonic() + 15  # VSO reconciles a new VaultConnection within a second or two
    while True:
        obj = vso.get(lab, "VaultConnection", TYPO_CONNECTION, n.vault_ns)
        status = (obj or {}).get("status") or {}
        ping = vso.conditions(obj).get("VaultPing") or {}
        if obj is None or ping or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    address = ((obj or {}).get("spec") or {}).get("address", "")
    return [
        (f"VaultConnection {n.vault_ns}/{TYPO_CONNECTION} exists", obj is not None,
         "apply it with kubectl, in the ${PREFIX}vault namespace"),
        ("its address is not Vault's", bool(address) and address.rstrip("/") != lab.vault_addr_for_cluster.rstrip("/"),
         f"give it a wrong port, e.g. http://127.0.0.1:1 (Vault is at {lab.vault_addr_for_cluster})"),
        ("VSO tried it and set status.valid to false", obj is not None and status.get("valid") is False
         and ping.get("status") == "False",
         "wait a few seconds for VSO, then `kubectl describe vaultconnection " + TYPO_CONNECTION + " -n " + n.vault_ns + "`"),
    ]


@exercise(
    "operator-debug-log",
    "Upgrade the Helm release so that VSO logs at the debug level; predict what happens to its pod.",
    ["The chart's values: `helm show values hashicorp/vault-secrets-operator --version 1.5.0 | grep -n -A8 ' logging:'`"
     " — the key is under controller.manager.",
     "`--set controller.manager.logging.level=debug` with `--reuse-values` keeps your other values; pass "
     "-f \"$LAB_HELM_VALUES\" and --post-renderer \"$LAB_HELM_POSTRENDERER\" again (Helm does not store the "
     "post-renderer).",
     "The chart turns the value into the manager's flag --zap-log-level=debug: a new pod template, so Kubernetes "
     "replaces the pod (new name, age a few seconds). `kubectl logs … -c manager` then shows debug lines."])
def _operator_debug_log(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The release's Deployment runs the manager with --zap-log-level=debug, and it is available again."""
    from kubernetes import client as kclient
    from kubernetes.client.exceptions import ApiException

    n = lab.names
    try:
        dep = kclient.AppsV1Api(lab.kube).read_namespaced_deployment(f"{OPERATOR_RELEASE}-controller-manager", n.operator_ns)
    except ApiException as exc:
        if exc.status != 404:
            raise
        dep = None
    manager, ready = None, False
    if dep:
        # the API server returns a Deployment with these set
        assert dep.spec is not None and dep.spec.template.spec is not None
        assert dep.status is not None and dep.metadata is not None
        manager = next((c for c in dep.spec.template.spec.containers if c.name == "manager"), None)
        ready = bool((dep.status.available_replicas or 0) >= 1 and (dep.status.updated_replicas or 0) >= 1
                     and dep.status.observed_generation == dep.metadata.generation)
    args = list((manager.args or []) if manager else [])
    if getattr(lab, "shared_operator", False):  # the team's VSO: the exercise is to look, not to upgrade it
        return [("VSO's Deployment exists (the team's Helm release)", dep is not None, "ask the instructor"),
                ("it runs, untouched by this exercise (VSOLAB_SHARED_OPERATOR=1)", ready,
                 "`kubectl rollout status deploy/vault-secrets-operator-controller-manager -n vault-secrets-operator`")]
    return [
        ("VSO's Deployment exists (the Helm release)", dep is not None, "install VSO with the Helm cell at the top first"),
        ("its manager runs with --zap-log-level=debug", "--zap-log-level=debug" in args,
         "set controller.manager.logging.level=debug in a `helm upgrade`; see the hints"),
        ("the new operator pod is available", ready, "`helm upgrade … --wait` waits for it; or "
         "`kubectl rollout status deploy/vault-secrets-operator-controller-manager -n vault-secrets-operator`"),
    ]


# -- undo ---------------------------------------------------------------------------------------------------------

def undo_connection(lab: Lab) -> Done:
    """The VaultConnection and the token reviewer (their namespace), its binding, and auth/kubernetes."""
    n = lab.names
    delete_namespace(lab, n.vault_ns)
    try:
        k8s.delete(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding)
    except ApiException as exc:
        if exc.status != 404:
            raise
    c = vault.client(lab)
    if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
        c.sys.disable_auth_method(n.k8s_auth_mount)
    return Done(f"deleted namespace {n.vault_ns} (VaultConnection, reviewer account) and disabled auth/{n.k8s_auth_mount}",
                f"kubectl delete namespace {n.vault_ns}\nkubectl delete clusterrolebinding {n.reviewer_binding}\n"
                f"vault auth disable {n.k8s_auth_mount}")


def undo_operator(lab: Lab) -> Done:
    """Back to before notebook 01 on the local lab: VSO's Helm release uninstalled (notebook 01 installs it).

    The release's own VaultAuths and VaultConnections are deleted first, while the manager still runs to remove
    their finalizers; ``helm uninstall`` alone would leave them stuck (see :func:`labkit.helm.uninstall_release`).
    Other backends keep their operator (``labkit up`` installs it there)."""
    if not isinstance(lab, OperatorRelease):
        return Done("VSO kept (this backend's `labkit up` installs it)", "")
    from .helm import UNINSTALL_COMMAND

    steps = lab.uninstall_operator()
    return Done("; ".join(steps) or "VSO's Helm release was not installed", UNINSTALL_COMMAND if steps else "")


def undo(lab: Lab) -> Steps:
    """Stage 1's undo: notebook 01 connects VSO to Vault after installing it, so the connection goes first."""
    return Steps([undo_connection(lab), undo_operator(lab)])


def in_place(lab: Lab) -> bool:
    """Notebook 01's work is there: the operator runs and its check passes (``labkit stage`` then skips its steps)."""
    return bool(k8s.ready_pods(lab.kube, lab.names.operator_ns, "control-plane=controller-manager")) and check(lab).passed


STAGE = Stage(1, "01-install-vso-and-connect", "Install VSO and connect it to Vault", undo=undo, check=check,
              exercises=(_connection_typo, _operator_debug_log), in_place=in_place)
