"""Stage 7: delete what the lab created, revoke the leases, and prove nothing is left.

Each ``undo_*`` removes what one stage created, so ``labkit stage N`` can also
take a lab *back* to the start of notebook N.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

from hvac import exceptions as hvexc
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from . import k8s, pg, vault, vso
from ._exercise_registry import exercise
from .backends.contract import Lab, OperatorRelease
from .display import Check, Done, Steps


def _delete_namespace(lab: Lab, ns: str) -> None:
    """Empty the namespace first, then delete it.

    The namespace controller retries a namespace that still has content with a growing delay
    (about 10 s here); deleting the VSO resources, the Deployment and the pods first lets it finish
    on its first pass.
    """
    from kubernetes import client as kclient

    if k8s.namespace_gone(lab.kube, ns):
        return
    res = lambda kind: k8s.dynamic(lab.kube).resources.get(api_version=vso.API_VERSION, kind=kind)
    # Secrets first: VSO revokes a VaultDynamicSecret's lease with the client its VaultAuth gives it,
    # so the VaultAuth and VaultConnection must outlive them.
    for kinds in (("VaultDynamicSecret", "VaultStaticSecret"), ("VaultAuth", "VaultConnection")):
        for kind in kinds:
            for obj in res(kind).get(namespace=ns).items:
                vso.delete(lab, kind, obj.metadata.name, ns)
        def finalised(kinds: tuple[str, ...] = kinds) -> bool:
            return not any(res(kind).get(namespace=ns).items for kind in kinds)

        k8s.wait_for(f"VSO to finalise the {' and '.join(kinds)} resources in {ns}", finalised, 60,
                     hint="VSO removes its finalizers; check that VSO runs (`labkit status`)")
    apps, core = kclient.AppsV1Api(lab.kube), kclient.CoreV1Api(lab.kube)
    apps.delete_collection_namespaced_deployment(ns)
    apps.delete_collection_namespaced_replica_set(ns)
    k8s.wait_for(f"the pods in {ns} to stop", lambda: not core.list_namespaced_pod(ns).items, 60,
                 hint="the node agent stops pods; check `labkit status`")
    try:
        k8s.delete(lab.kube, "v1", "Namespace", ns)
    except ApiException as exc:
        if exc.status != 404:
            raise
    k8s.wait_for(f"namespace {ns} to be deleted", lambda: k8s.namespace_gone(lab.kube, ns), 120,
                 hint="a namespace waits for its pods and VSO resources; check `kubectl get all -n " + ns + "`")


def _vault_quiet(fn: Any, *a: Any, **kw: Any) -> None:
    with contextlib.suppress(hvexc.InvalidPath):
        fn(*a, **kw)


def undo_instant(lab: Lab) -> Done:
    """Back to a VaultStaticSecret without instant updates, and the plain read policy."""
    from . import static

    n = lab.names
    if vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns):
        vso.apply(lab, static.static_secret(lab))
    if vault.read_policy(lab, n.kv_policy):
        static.write_policy(lab)
    return Done("instant updates turned off", "")


def undo_cache(lab: Lab) -> Done:
    """Client-cache persistence off, then the transit engine, key, policy and role gone. On a shared VSO (the
    team's) only this attendee's Vault objects go: the operator, its settings and its cache Secrets stay."""
    n = lab.names
    shared = bool(getattr(lab, "shared_operator", False))
    if not shared and lab.operator_settings().get("client_cache_persistence_model") != "none":
        lab.restart_operator(client_cache_persistence_model="none")
    if not shared and not lab.helm_managed_operator:
        vso.delete(lab, "VaultAuth", n.transit_auth, n.operator_ns)
    c = vault.client(lab)
    _vault_quiet(c.auth.kubernetes.delete_role, n.transit_role, mount_point=n.k8s_auth_mount)
    _vault_quiet(c.sys.delete_policy, n.transit_policy)
    if f"{n.transit_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.transit_mount)
    from kubernetes import client as kclient

    core = kclient.CoreV1Api(lab.kube)
    for s in [] if shared else core.list_namespaced_secret(n.operator_ns).items:
        assert s.metadata is not None and s.metadata.name is not None  # the API server sets both
        if s.metadata.name.startswith("vso-cc-") and s.metadata.name != "vso-cc-storage-hmac-key":
            core.delete_namespaced_secret(s.metadata.name, n.operator_ns)
    return Done("client-cache persistence off; transit engine, key, policy and role removed",
                f"vault secrets disable {n.transit_mount}\nvault policy delete {n.transit_policy}")


def _leases(c: Any, prefix: str) -> list[str]:
    """Lease ids under ``prefix`` (``LIST sys/leases/lookup/<prefix>``); [] when there are none."""
    try:
        keys = c.sys.list_leases(prefix)["data"]["keys"]
    except hvexc.InvalidPath:  # 404: no lease under the prefix
        return []
    return [prefix.rstrip("/") + "/" + k for k in keys]


def undo_dynamic(lab: Lab, wait: float = 15.0) -> Done:
    """Delete the VaultDynamicSecret and watch VSO revoke its lease; then the app, the namespace and the Vault side.

    VSO revokes only the lease it holds, with the VaultAuth's token (``sys/leases/revoke`` in the policy). Leases
    from earlier rotations or spec changes stay valid until they expire: the sweep that follows revokes them with
    the admin token, and says how many there were.
    """
    n = lab.names
    c = vault.client(lab)
    prefix = f"{n.db_mount}/creds/{n.db_role}/"
    engine = f"{n.db_mount}/" in c.sys.list_mounted_secrets_engines()["data"]
    vds = vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    held = ((vds or {}).get("status", {}).get("secretLease") or {}).get("id", "")
    vso_said = "no VaultDynamicSecret to delete"
    if vds is not None:
        vso.delete(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
        if held and engine:
            deadline = time.monotonic() + wait
            while held in _leases(c, prefix) and time.monotonic() < deadline:
                time.sleep(0.3)
            refused = [m for kind, reason, m in vso.events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
                       if kind == "Warning" and reason == "SecretLeaseRevoke"]
            if held not in _leases(c, prefix):
                vso_said = "VSO revoked its lease"
            elif refused:
                vso_said = "VSO could not revoke its lease (" + " ".join(refused[-1].split())[:200] + ")"
            else:
                vso_said = f"VSO did not revoke its lease within {wait:.0f}s"
    _delete_namespace(lab, n.dynamic_ns)
    left = _leases(c, prefix) if engine else []
    if engine:
        c.sys.revoke_prefix(prefix.rstrip("/"))
        c.sys.disable_secrets_engine(n.db_mount)  # revokes every remaining lease of the engine
    _vault_quiet(c.auth.kubernetes.delete_role, n.dynamic_role, mount_point=n.k8s_auth_mount)
    _vault_quiet(c.sys.delete_policy, n.db_policy)
    swept = (f"the sweep revoked {len(left)} older lease{'s' if len(left) != 1 else ''} (earlier rotations or spec "
             "changes: VSO revokes only the one it holds)") if left else "the sweep found no lease left"
    return Done(f"deleted {n.dynamic_ns}; {vso_said}; {swept}; disabled {n.db_mount}/",
                f"kubectl delete vaultdynamicsecret {n.dynamic_vds} -n {n.dynamic_ns}\nkubectl delete namespace {n.dynamic_ns}\n"
                f"vault list sys/leases/lookup/{prefix}\nvault lease revoke -prefix {prefix}\nvault secrets disable {n.db_mount}")


def undo_static(lab: Lab) -> Done:
    n = lab.names
    _delete_namespace(lab, n.static_ns)
    c = vault.client(lab)
    _vault_quiet(c.auth.kubernetes.delete_role, n.static_role, mount_point=n.k8s_auth_mount)
    _vault_quiet(c.sys.delete_policy, n.kv_policy)
    if f"{n.kv_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.kv_mount)
    return Done(f"deleted {n.static_ns}, the role, the policy and the KV engine at {n.kv_mount}/",
                f"kubectl delete namespace {n.static_ns}\nvault secrets disable {n.kv_mount}")


def undo_connect(lab: Lab) -> Done:
    n = lab.names
    _delete_namespace(lab, n.vault_ns)
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


def install_operator(lab: Lab) -> Done:
    """Notebook 01's first step, for ``labkit stage N`` (N ≥ 2) on the local lab: VSO's Helm release, if missing."""
    if not isinstance(lab, OperatorRelease) or lab.operator_installed():
        return Done("VSO is installed", "")
    lab.install_operator()
    from .helm import INSTALL_COMMAND

    return Done("installed VSO's Helm release", INSTALL_COMMAND)


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


def undo_connect_and_operator(lab: Lab) -> Steps:
    """Stage 1's undo: notebook 01 connects VSO to Vault after installing it, so the connection goes first."""
    return Steps([undo_connect(lab), undo_operator(lab)])


def _strip_vso_finalizers(lab: Lab, ns: str) -> int:
    """With no operator running, nothing removes VSO's finalizers: remove them, so the namespace can go."""
    custom = kclient.CustomObjectsApi(lab.kube)
    count = 0
    for plural in ("vaultdynamicsecrets", "vaultstaticsecrets", "vaultauths", "vaultconnections"):
        # the client types a custom object list as `object`: it is the JSON dict
        objects = cast(dict[str, Any], custom.list_namespaced_custom_object("secrets.hashicorp.com", "v1beta1", ns, plural))
        for obj in objects.get("items", []):
            if obj["metadata"].get("finalizers"):
                custom.patch_namespaced_custom_object("secrets.hashicorp.com", "v1beta1", ns, plural,
                                                      obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                count += 1
    return count


def _operator_runs(lab: Lab) -> bool:
    return bool(k8s.ready_pods(lab.kube, lab.names.operator_ns, "control-plane=controller-manager"))


def sweep(lab: Lab) -> Done:
    """Find what notebook 07's steps (or a learner who skipped some) left behind; remove it and say what it was.

    Nothing is touched that is already gone, so after a complete clean-up the sweep reports that it found nothing.
    """
    n = lab.names
    found: list[str] = []
    shared = lab.env().get("VSOLAB_SHARED_OPERATOR") == "1"  # the team's operator: never uninstalled here
    for ns in (n.dynamic_ns, n.static_ns, n.vault_ns):
        if k8s.namespace_gone(lab.kube, ns):
            continue
        if not _operator_runs(lab) and _strip_vso_finalizers(lab, ns):
            found.append(f"VSO objects in {ns} with finalizers no operator would remove")
        _delete_namespace(lab, ns)
        found.append(f"namespace {ns}")
    if k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding) is not None:
        k8s.delete(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding)
        found.append(f"ClusterRoleBinding {n.reviewer_binding}")
    if not shared and isinstance(lab, OperatorRelease) and lab.operator_installed():
        lab.uninstall_operator()
        found.append("VSO's Helm release")
    if not shared and isinstance(lab, OperatorRelease) and not lab.operator_installed() and \
            not k8s.namespace_gone(lab.kube, n.operator_ns):
        # helm leaves the namespace --create-namespace made, and what VSO wrote there (its cache's HMAC key)
        _delete_namespace(lab, n.operator_ns)
        found.append(f"namespace {n.operator_ns}")
    c = vault.client(lab)
    mounts = c.sys.list_mounted_secrets_engines()["data"]
    if f"{n.db_mount}/" in mounts:
        leases = _leases(c, f"{n.db_mount}/creds/{n.db_role}/")
        if leases:
            c.sys.revoke_prefix(f"{n.db_mount}/creds/{n.db_role}")
            found.append(f"{len(leases)} lease(s) under {n.db_mount}/creds/{n.db_role}")
    for mount in (n.db_mount, n.kv_mount, n.transit_mount):
        if f"{mount}/" in mounts:
            c.sys.disable_secrets_engine(mount)
            found.append(f"secrets engine {mount}/")
    if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
        c.sys.disable_auth_method(n.k8s_auth_mount)
        found.append(f"auth method {n.k8s_auth_mount}/")
    for policy in (n.kv_policy, n.db_policy, n.transit_policy):
        if vault.read_policy(lab, policy):
            c.sys.delete_policy(policy)
            found.append(f"policy {policy}")
    roles = [r["role"] for r in pg.lab_roles(lab)]
    if roles:
        found.append(f"{len(roles)} PostgreSQL role(s) Vault made: {', '.join(roles)}")
    if not found:
        return Done("the sweep found nothing left over")
    return Done("the sweep found and removed what was left over: " + "; ".join(found),
                details={"left over": len(found)})


def check(lab: Lab) -> Check:
    n = lab.names
    roles = pg.lab_roles(lab)
    leases = vault.list_leases(lab, f"{n.db_mount}/creds/{n.db_role}")
    left = [ns for ns in (n.static_ns, n.dynamic_ns, n.vault_ns) if not k8s.namespace_gone(lab.kube, ns)]
    mounts = [m for m in (n.db_mount, n.kv_mount, n.transit_mount)
              if f"{m}/" in vault.client(lab).sys.list_mounted_secrets_engines()["data"]]
    return Check("clean-up: nothing the lab created is left", [
        ("no dynamic PostgreSQL role is left", not roles,
         f"{len(roles)} role(s) remain: revoke the leases (`vault lease revoke -prefix {n.db_mount}/creds/{n.db_role}`)"),
        ("Vault has no outstanding lease for the lab's database role", not leases,
         "revoke them by prefix, or disable the database engine"),
        ("the lab's namespaces are gone", not left, f"still there: {left}; a namespace waits for its pods to stop"),
        ("the lab's secrets engines are disabled", not mounts, f"still enabled: {mounts}: `vault secrets disable`"),
        (f"the ClusterRoleBinding {n.reviewer_binding} is gone",
         k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding) is None,
         f"kubectl delete clusterrolebinding {n.reviewer_binding}"),
    ])


@exercise(
    "transit-gone", 7, "Disable the client cache's transit engine and delete its policy.",
    ["Engines go with `vault secrets disable <path>`, policies with `vault policy delete <name>`.",
     "vault secrets disable ${PREFIX}demo-transit; vault policy delete ${PREFIX}vso-transit-policy"])
def _check_transit_gone(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    mounts = vault.client(lab).sys.list_mounted_secrets_engines()["data"]
    return [(f"the transit engine {n.transit_mount}/ is disabled", f"{n.transit_mount}/" not in mounts,
             f"vault secrets disable {n.transit_mount}"),
            (f"the policy {n.transit_policy} is deleted", not vault.read_policy(lab, n.transit_policy),
             f"vault policy delete {n.transit_policy}")]


@exercise(
    "binding-gone", 7, "Delete the token reviewer's ClusterRoleBinding, which outlived its namespace.",
    ["ClusterRoleBindings are cluster-scoped: `kubectl get clusterrolebindings` (no -n).",
     "Its name ends in vault-to-k8s-sa-auth-delegator (notebook 01).",
     "kubectl delete clusterrolebinding ${PREFIX}vault-to-k8s-sa-auth-delegator"])
def _check_binding_gone(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    crb = k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding)
    return [(f"the ClusterRoleBinding {n.reviewer_binding} is gone", crb is None,
             f"kubectl delete clusterrolebinding {n.reviewer_binding}"),
            (f"the namespace {n.vault_ns} is gone too", k8s.namespace_gone(lab.kube, n.vault_ns),
             f"kubectl delete namespace {n.vault_ns} (section 2)")]
