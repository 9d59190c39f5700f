"""Stage 5: a persistent, transit-encrypted VSO client cache, so leases
survive operator restarts."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client as kclient

from . import app, dynamic, k8s, vault, vso
from .connect import connection_ref
from .display import Check, Done

TRANSIT_POLICY = """path "{mount}/encrypt/{key}" {{
  capabilities = ["create", "update"]
}}
path "{mount}/decrypt/{key}" {{
  capabilities = ["create", "update"]
}}
"""
HELM_VALUES = """controller:
  manager:
    clientCache:
      persistenceModel: direct-encrypted
      storageEncryption:
        enabled: true
        vaultConnectionRef: {connection}
        keyName: {key}
        transitMount: {mount}
        method: kubernetes
        mount: {auth_mount}
        kubernetes:
          role: {role}
          serviceAccount: {sa}
"""


def enable_transit(lab: Any) -> Done:
    return vault.enable_secrets_engine(lab, "transit", lab.names.transit_mount)


def create_key(lab: Any) -> Done:
    return vault.create_transit_key(lab, lab.names.transit_key, mount=lab.names.transit_mount)


def transit_policy(lab: Any) -> str:
    n = lab.names
    return TRANSIT_POLICY.format(mount=n.transit_mount, key=n.transit_key)


def write_policy(lab: Any) -> Done:
    return vault.write_policy(lab, lab.names.transit_policy, transit_policy(lab))


def create_role(lab: Any) -> Done:
    n = lab.names
    return vault.create_kubernetes_role(lab, n.transit_role, bound_service_account_names=[n.operator_sa],
                                        bound_service_account_namespaces=[n.operator_ns], policies=[n.transit_policy],
                                        ttl="1h", mount=n.k8s_auth_mount, token_period="1h")


def helm_values(lab: Any) -> str:
    n = lab.names
    return HELM_VALUES.format(connection=connection_ref(lab), key=n.transit_key, mount=n.transit_mount,
                              auth_mount=n.k8s_auth_mount, role=n.transit_role, sa=n.operator_sa)


def transit_vault_auth(lab: Any) -> dict:
    """The labelled VaultAuth the Helm chart renders for direct-encrypted persistence."""
    n = lab.names
    return vso.vault_auth(n.transit_auth, n.operator_ns, role=n.transit_role, service_account=n.operator_sa,
                          connection_ref=connection_ref(lab), mount=n.k8s_auth_mount,
                          storage_encryption={"mount": n.transit_mount, "keyName": n.transit_key},
                          labels={"cacheStorageEncryption": "true"})


def shared(lab: Any) -> bool:
    """VSO belongs to the team (``VSOLAB_SHARED_OPERATOR=1``): this stage shows the Helm upgrade and changes nothing."""
    return bool(getattr(lab, "shared_operator", False))


def _looked(lab: Any, command: str) -> Done:
    model = lab.operator_settings()["client_cache_persistence_model"]
    return Done(f"VSO is the team's (shared): not changed; it runs with client-cache persistence {model}. The "
                "instructor runs this once for everybody", command)


def enable_persistence(lab: Any) -> Done:
    """Turn on ``direct-encrypted`` client-cache persistence and restart VSO with it."""
    if shared(lab):
        return _looked(lab, ENABLE_COMMAND + helm_values(lab).rstrip())
    if not getattr(lab, "helm_managed_operator", False):
        vso.apply(lab, transit_vault_auth(lab))
    lab.restart_operator(client_cache_persistence_model="direct-encrypted")
    return Done("VSO restarted with --client-cache-persistence-model=direct-encrypted (transit key "
                f"{lab.names.transit_mount}/{lab.names.transit_key})", ENABLE_COMMAND + helm_values(lab).rstrip())


ENABLE_COMMAND = ("helm upgrade vault-secrets-operator hashicorp/vault-secrets-operator -n vault-secrets-operator "
                  "--reuse-values -f vso-values.yaml\n# vso-values.yaml:\n")
DISABLE_COMMAND = ("helm upgrade vault-secrets-operator hashicorp/vault-secrets-operator -n vault-secrets-operator "
                   "--reuse-values --set controller.manager.clientCache.persistenceModel=none")


def disable_persistence(lab: Any) -> Done:
    if shared(lab):
        return _looked(lab, DISABLE_COMMAND)
    lab.restart_operator(client_cache_persistence_model="none")
    return Done("VSO restarted with client-cache persistence off (the default)", DISABLE_COMMAND)


def cache_secrets(lab: Any) -> list[dict[str, Any]]:
    """The ``vso-cc-*`` Secrets VSO keeps in its namespace, with their labels."""
    items = kclient.CoreV1Api(lab.kube).list_namespaced_secret(lab.names.operator_ns).items
    return [{"name": s.metadata.name, "labels": dict(s.metadata.labels or {})}
            for s in items if s.metadata.name.startswith("vso-cc-") and s.metadata.name != "vso-cc-storage-hmac-key"]


def wait_for_cache(lab: Any, timeout: float = 90) -> list[dict[str, Any]]:
    if shared(lab):  # the team's VSO: its cache is whatever the team configured; nothing to wait for
        return [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"]
    return k8s.wait_for("VSO to store its client cache as vso-cc-* Secrets",
                        lambda: [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"], timeout,
                        hint="check the transit VaultAuth (`kubectl get vaultauth -n vault-secrets-operator`) and the VSO log")


def restart_experiment(lab: Any, *, settle: float = 8.0) -> dict[str, Any]:
    """Restart VSO with its current settings; report whether the lease and the app pods survived.

    On a shared VSO nothing is restarted: the result says so (``restarted`` False, the other fields None)."""
    n = lab.names
    if shared(lab):
        return {"persistence": lab.operator_settings()["client_cache_persistence_model"], "restarted": False,
                "lease_kept": None, "app_restarted": None, "seconds": 0.0}
    dynamic.wait_steady(lab)
    lease_before = dynamic.lease(lab)["lease_id"]
    pods_before = sorted(p.metadata.name for p in k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}"))
    t0 = time.monotonic()
    lab.restart_operator()
    # Give VSO time to reconcile every VaultDynamicSecret after its restart.
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if dynamic.lease(lab)["lease_id"] != lease_before:
            break
        time.sleep(0.5)
    lease_after = dynamic.lease(lab)["lease_id"]
    if lease_after != lease_before:
        app.wait_ready(lab, n.dynamic_ns, n.app)
        k8s.wait_for("the old app pods to go", lambda: not set(pods_before) & set(
            p.metadata.name for p in k8s.pods(lab.kube, n.dynamic_ns, f"app={n.app}")), 60)
    pods_after = sorted(p.metadata.name for p in k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}"))
    return {
        "persistence": lab.operator_settings()["client_cache_persistence_model"], "restarted": True,
        "lease_kept": lease_after == lease_before,
        "app_restarted": pods_after != pods_before,
        "seconds": round(time.monotonic() - t0, 1),
    }


def _shared_check(lab: Any) -> Check:
    """On a shared VSO: this attendee's half of the stage (transit key, policy, role) is in place and VSO answers."""
    from hvac import exceptions as hvexc

    n, c = lab.names, vault.client(lab)
    try:
        key = bool(c.secrets.transit.read_key(n.transit_key, mount_point=n.transit_mount)["data"])
    except hvexc.InvalidPath:
        key = False
    try:
        role = c.auth.kubernetes.read_role(n.transit_role, mount_point=n.k8s_auth_mount)
    except hvexc.InvalidPath:
        role = {}
    policy = vault.read_policy(lab, n.transit_policy) or ""
    return Check("client cache, on the team's VSO (the stage looks and does not restart it)", [
        (f"the transit key {n.transit_mount}/{n.transit_key} exists", key, "run enable_transit and create_key"),
        (f"the policy {n.transit_policy} allows encrypt and decrypt with it", f"{n.transit_mount}/encrypt/{n.transit_key}" in policy,
         "run write_policy(lab)"),
        (f"the role {n.transit_role} binds {n.operator_sa} in {n.operator_ns}",
         n.operator_sa in (role or {}).get("bound_service_account_names", []), "run create_role(lab)"),
        ("the team's VSO is ready", lab.operator().ready, "ask the instructor: `kubectl get pods -n vault-secrets-operator`"),
    ])


def check(lab: Any) -> Check:
    if shared(lab):
        return _shared_check(lab)
    n = lab.names
    encrypted = [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"]
    va = vso.get(lab, "VaultAuth", n.transit_auth, n.operator_ns)
    return Check("persistent, encrypted client cache", [
        ("VSO runs with client-cache persistence direct-encrypted",
         lab.operator_settings()["client_cache_persistence_model"] == "direct-encrypted",
         "run enable_persistence(lab) (on minikube: helm upgrade with the cache values)"),
        (f"the transit VaultAuth {n.operator_ns}/{n.transit_auth} is valid", bool(va and (va.get("status") or {}).get("valid")),
         f"check the role {n.transit_role} binds {n.operator_sa} in {n.operator_ns}, and the transit policy"),
        ("VSO stored encrypted vso-cc-* Secrets", bool(encrypted),
         "VSO writes them once it has authenticated for a VaultStaticSecret/VaultDynamicSecret; wait a little"),
    ])
