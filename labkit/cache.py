"""Stage 5: a persistent, transit-encrypted VSO client cache, so leases
survive operator restarts.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client as kclient

from . import app, dynamic, k8s, vault, vso
from ._stage import Stage, exercise
from ._teardown import vault_quiet
from .backends.contract import Lab
from .display import Check, Done

if TYPE_CHECKING:
    from .backends.cluster import ClusterLab

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


def helm_values(lab: Lab) -> str:
    n = lab.names
    return HELM_VALUES.format(connection=n.connection_ref, key=n.transit_key, mount=n.transit_mount,
                              auth_mount=n.k8s_auth_mount, role=n.transit_role, sa=n.operator_sa)


def shared(lab: Lab) -> bool:
    """VSO belongs to the team (``VSOLAB_SHARED_OPERATOR=1``): the notebook's Helm cell only shows the release,
    and nothing here restarts it."""
    return bool(getattr(lab, "shared_operator", False))


def cache_secrets(lab: Lab) -> list[dict[str, Any]]:
    """The ``vso-cc-*`` Secrets VSO keeps in its namespace, with their labels."""
    items = kclient.CoreV1Api(lab.kube).list_namespaced_secret(lab.names.operator_ns).items
    out: list[dict[str, Any]] = []
    for s in items:
        assert s.metadata is not None and s.metadata.name is not None  # the API server sets both
        if s.metadata.name.startswith("vso-cc-") and s.metadata.name != "vso-cc-storage-hmac-key":
            out.append({"name": s.metadata.name, "labels": dict(s.metadata.labels or {})})
    return out


def wait_for_cache(lab: Lab, timeout: float = 90) -> list[dict[str, Any]]:
    """Wait for VSO's encrypted ``vso-cc-*`` Secrets; on a shared VSO, only look (its settings are the team's)."""
    if shared(lab):
        return [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"]
    return k8s.wait_for("VSO to store its client cache as vso-cc-* Secrets",
                        lambda: [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"], timeout,
                        hint="check the transit VaultAuth (`kubectl get vaultauth -n vault-secrets-operator`) and the VSO log")


def _seconds_to_rotation(lab: Lab) -> float | None:
    """How long the VaultDynamicSecret's lease has before Vault cuts it short at the role's ``max_ttl``."""
    n = lab.names
    lid = dynamic.lease(lab)["lease_id"]
    if not lid:
        return None
    import datetime as dt

    issued = vault.read_lease(lab, lid).get("issue_time", "")
    max_ttl = int(vault.read_database_role(lab, n.db_role, mount=n.db_mount).get("max_ttl") or 0)
    if not issued or not max_ttl:
        return None
    start = dt.datetime.strptime(issued[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return start.timestamp() + max_ttl - time.time()


def _wait_for_room(lab: Lab, room: float) -> None:
    """Wait until the lease has ``room`` seconds before its ``max_ttl`` rotation (a rotation first, if need be)."""
    left = _seconds_to_rotation(lab)
    if left is None or left >= room:
        return
    before = dynamic.lease(lab)["lease_id"]
    k8s.wait_for("the lease's scheduled rotation, so that it cannot fall inside the restart experiment",
                 lambda: dynamic.lease(lab)["lease_id"] != before, left + 60, interval=0.5,
                 hint="check the VaultDynamicSecret's events: `kubectl describe vaultdynamicsecret ...`")
    dynamic.wait_steady(lab)


def restart_experiment(lab: Lab, *, settle: float = 8.0, room: float = 30.0) -> dict[str, Any]:
    """Restart VSO's pod (``kubectl rollout restart``) with its current settings; report whether the lease and the
    app pods survived. Starts only with ``room`` seconds before the lease's ``max_ttl`` rotation, so that a
    scheduled rotation is not counted as the restart's doing.

    On a shared VSO nothing is restarted: the result says so (``restarted`` False, the other fields None)."""
    n = lab.names
    if shared(lab):
        return {"persistence": lab.operator_settings()["client_cache_persistence_model"], "restarted": False,
                "lease_kept": None, "app_restarted": None, "seconds": 0.0}
    dynamic.wait_steady(lab)
    _wait_for_room(lab, room)
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


def operator_pod(lab: Lab) -> str:
    """The name of the operator's running pod ("" when none runs)."""
    pods = k8s.ready_pods(lab.kube, lab.names.operator_ns, "control-plane=controller-manager")
    return pods[0].metadata.name if pods else ""


def snapshot(lab: Lab, room: float = 28.0) -> dict[str, str]:
    """What exercise ``restart-kept`` compares against: the operator's pod and the VaultDynamicSecret's lease.

    Recorded with ``room`` seconds before the lease's scheduled rotation (waiting for that rotation first if it is
    closer), so that a restart typed right after does not race it."""
    if not shared(lab):
        _wait_for_room(lab, room)
    return {"operator_pod": operator_pod(lab), "lease_id": dynamic.lease(lab)["lease_id"]}


def rotated_on_schedule(lab: Lab, lease_id: str) -> bool:
    """Whether Vault's record of a replaced lease says it reached the role's ``max_ttl`` (its last renewal was cut
    short: VSO's scheduled rotation), rather than being dropped early (e.g. by a restart that lost VSO's client)."""
    import datetime as dt

    from hvac import exceptions as hvexc

    try:
        info = vault.read_lease(lab, lease_id)
    except hvexc.InvalidRequest:  # revoked or expired: Vault no longer knows it
        return False
    n = lab.names
    max_ttl = int(vault.read_database_role(lab, n.db_role, mount=n.db_mount).get("max_ttl") or 0)

    def when(v: str) -> float:
        return dt.datetime.strptime(v[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()

    if not info.get("issue_time") or not info.get("expire_time") or not max_ttl:
        return False
    return abs(when(info["expire_time"]) - (when(info["issue_time"]) + max_ttl)) <= 2


def _shared_check(lab: Lab) -> Check:
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
    return Check("client cache, on the team's VSO (the Helm cell looked and did not change it)", [
        (f"the transit key {n.transit_mount}/{n.transit_key} exists", key,
         "run the cells that enable the transit engine and create the key"),
        (f"the policy {n.transit_policy} allows encrypt and decrypt with it",
         f"{n.transit_mount}/encrypt/{n.transit_key}" in policy, "run the `vault policy write` cell"),
        (f"the role {n.transit_role} binds {n.operator_sa} in {n.operator_ns}",
         n.operator_sa in (role or {}).get("bound_service_account_names", []), "run the operator's role cell"),
        # a shared VSO is a cluster backend's: ClusterLab.operator() finds its Deployment
        ("the team's VSO is ready", cast("ClusterLab", lab).operator().ready,
         "ask the instructor: `kubectl get pods -n vault-secrets-operator`"),
    ])


def check(lab: Lab) -> Check:
    if shared(lab):
        return _shared_check(lab)
    n = lab.names
    encrypted = [s for s in cache_secrets(lab) if s["labels"].get("encrypted") == "true"]
    va = vso.get(lab, "VaultAuth", n.transit_auth, n.operator_ns)
    return Check("persistent, encrypted client cache", [
        ("VSO runs with client-cache persistence direct-encrypted",
         lab.operator_settings()["client_cache_persistence_model"] == "direct-encrypted",
         "run the Helm upgrade cell (persistenceModel: direct-encrypted), then `kubectl rollout status`"),
        (f"the transit VaultAuth {n.operator_ns}/{n.transit_auth} is valid", bool(va and (va.get("status") or {}).get("valid")),
         f"check the role {n.transit_role} binds {n.operator_sa} in {n.operator_ns}, and the transit policy "
         f"(`kubectl describe vaultauth {n.transit_auth} -n {n.operator_ns}`)"),
        ("VSO stored encrypted vso-cc-* Secrets", bool(encrypted),
         "VSO writes them once it has authenticated for a VaultStaticSecret/VaultDynamicSecret; wait a little"),
    ])


@exercise(
    "restart-kept",
    "Restart the operator with kubectl rollout restart and show that the dynamic secret's lease survives.",
    ["`kubectl rollout restart deployment/<name> -n <namespace>` gives the Deployment a new pod.",
     "`kubectl rollout status deployment/vault-secrets-operator-controller-manager -n vault-secrets-operator` "
     "waits for it.",
     "Run the cell that records `before_restart` first, then restart; the checker compares with it."])
def _restart_kept(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    before = ns.get("before_restart") or {}
    now = snapshot(lab)
    if shared(lab):  # the team's VSO: nobody restarts it for an exercise; the lease must simply still be there
        return [
            ("the recording cell ran (before_restart)", bool(before.get("operator_pod")),
             "run the cell with `before_restart = cache.snapshot(lab)` first"),
            ("the team's VSO was not restarted (VSOLAB_SHARED_OPERATOR=1)", now["operator_pod"] == before.get("operator_pod"),
             "the operator is the team's: ask the instructor before restarting it"),
            ("the VaultDynamicSecret holds the same lease as before", bool(before.get("lease_id")) and
             now["lease_id"] == before.get("lease_id"), "a scheduled rotation at max_ttl changes it: record again"),
        ]
    return [
        ("the recording cell ran (before_restart)", bool(before.get("operator_pod")),
         "run the cell with `before_restart = cache.snapshot(lab)` first"),
        ("a new operator pod runs", bool(before) and bool(now["operator_pod"]) and
         now["operator_pod"] != before.get("operator_pod"),
         "kubectl rollout restart deployment/vault-secrets-operator-controller-manager -n vault-secrets-operator"),
        ("the VaultDynamicSecret holds the same lease as before (or Vault's record of it shows VSO's scheduled "
         "rotation at max_ttl, not the restart, replaced it)", bool(before.get("lease_id")) and
         (now["lease_id"] == before.get("lease_id") or rotated_on_schedule(lab, before["lease_id"])),
         "the cache keeps the lease only with persistenceModel direct-encrypted (section 5): check the Deployment's "
         "args and `kubectl get secrets -n vault-secrets-operator -l app.kubernetes.io/component=client-cache-storage`"),
    ]


@exercise(
    "rotate-key",
    "Rotate the transit key vso-client-cache (a new key version), and check VSO still syncs.",
    ["Transit keys rotate with `vault write -f <mount>/keys/<name>/rotate`.",
     "The mount is ${PREFIX}demo-transit and the key vso-client-cache.",
     "`vault read -field=latest_version ${PREFIX}demo-transit/keys/vso-client-cache` shows the version."])
def _rotate_key(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    from hvac import exceptions as hvexc

    try:
        key = vault.client(lab).secrets.transit.read_key(n.transit_key, mount_point=n.transit_mount)["data"]
    except hvexc.InvalidPath:
        key = {}
    return [
        ("the transit key has a second version", int(key.get("latest_version", 0)) >= 2,
         f"vault write -f {n.transit_mount}/keys/{n.transit_key}/rotate"),
        ("the VaultDynamicSecret is still synced",
         vso.is_synced(vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)),
         "VSO decrypts older cache entries with the older key version; check the manager's log"),
    ]


def undo(lab: Lab) -> Done:
    """Client-cache persistence off, then the transit engine, key, policy and role gone. On a shared VSO (the
    team's) only this attendee's Vault objects go: the operator, its settings and its cache Secrets stay."""
    n = lab.names
    if not shared(lab) and lab.operator_settings().get("client_cache_persistence_model") != "none":
        lab.restart_operator(client_cache_persistence_model="none")
    if not shared(lab) and not lab.helm_managed_operator:
        vso.delete(lab, "VaultAuth", n.transit_auth, n.operator_ns)
    c = vault.client(lab)
    vault_quiet(c.auth.kubernetes.delete_role, n.transit_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.transit_policy)
    if f"{n.transit_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.transit_mount)
    core = kclient.CoreV1Api(lab.kube)
    for s in [] if shared(lab) else core.list_namespaced_secret(n.operator_ns).items:
        assert s.metadata is not None and s.metadata.name is not None  # the API server sets both
        if s.metadata.name.startswith("vso-cc-") and s.metadata.name != "vso-cc-storage-hmac-key":
            core.delete_namespaced_secret(s.metadata.name, n.operator_ns)
    return Done("client-cache persistence off; transit engine, key, policy and role removed",
                f"vault secrets disable {n.transit_mount}\nvault policy delete {n.transit_policy}")


STAGE = Stage(5, "05-client-cache", "A persistent, encrypted client cache", undo=undo, check=check,
              exercises=(_restart_kept, _rotate_key))
