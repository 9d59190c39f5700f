"""Stage 7: delete what the lab created, revoke the leases, and prove nothing is left.

Notebook 07's steps are the lesson; :func:`sweep` finds what they (or a learner who skipped some) left behind,
:func:`check` proves nothing is left. What the lab creates is listed once, by :meth:`labkit.names.Names.made_by`;
each stage's own undo (for ``labkit stage N``) lives with that stage's record (``static.STAGE.undo`` …).
The stage's record, :data:`STAGE` (at the end), names its notebook, check and exercises.
"""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client as kclient

from . import k8s, pg, vault
from ._stage import Stage, exercise, nothing_to_undo
from ._teardown import delete_namespace, leases
from .backends.contract import Lab, OperatorRelease
from .display import Check, Done


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
    made = n.made
    for ns in made.namespaces:
        if k8s.namespace_gone(lab.kube, ns):
            continue
        if not _operator_runs(lab) and _strip_vso_finalizers(lab, ns):
            found.append(f"VSO objects in {ns} with finalizers no operator would remove")
        delete_namespace(lab, ns)
        found.append(f"namespace {ns}")
    for crb in made.cluster_role_bindings:
        if k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", crb) is not None:
            k8s.delete(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", crb)
            found.append(f"ClusterRoleBinding {crb}")
    if not shared and isinstance(lab, OperatorRelease) and lab.operator_installed():
        lab.uninstall_operator()
        found.append("VSO's Helm release")
    if not shared and isinstance(lab, OperatorRelease) and not lab.operator_installed() and \
            not k8s.namespace_gone(lab.kube, n.operator_ns):
        # helm leaves the namespace --create-namespace made, and what VSO wrote there (its cache's HMAC key)
        delete_namespace(lab, n.operator_ns)
        found.append(f"namespace {n.operator_ns}")
    c = vault.client(lab)
    mounts = c.sys.list_mounted_secrets_engines()["data"]
    for prefix in made.lease_prefixes:
        if f"{prefix.split('/')[0]}/" in mounts:
            left = leases(c, f"{prefix}/")
            if left:
                c.sys.revoke_prefix(prefix)
                found.append(f"{len(left)} lease(s) under {prefix}")
    for mount in made.secrets_engines:
        if f"{mount}/" in mounts:
            c.sys.disable_secrets_engine(mount)
            found.append(f"secrets engine {mount}/")
    for auth in made.auth_methods:
        if f"{auth}/" in c.sys.list_auth_methods()["data"]:
            c.sys.disable_auth_method(auth)
            found.append(f"auth method {auth}/")
    for policy in made.policies:
        if vault.read_policy(lab, policy):
            c.sys.delete_policy(policy)
            found.append(f"policy {policy}")
    for user in made.database_users:  # a static role's user (notebook 10): Vault only rotated its password
        if pg.drop_user(lab, user):
            found.append(f"PostgreSQL user {user}")
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
    made = n.made
    outstanding = [lease for prefix in made.lease_prefixes for lease in vault.list_leases(lab, prefix)]
    left = [ns for ns in made.namespaces if not k8s.namespace_gone(lab.kube, ns)]
    enabled = vault.client(lab).sys.list_mounted_secrets_engines()["data"]
    mounts = [m for m in made.secrets_engines if f"{m}/" in enabled]
    return Check("clean-up: nothing the lab created is left", [
        ("no dynamic PostgreSQL role is left", not roles,
         f"{len(roles)} role(s) remain: revoke the leases (`vault lease revoke -prefix {n.db_mount}/creds/{n.db_role}`)"),
        ("Vault has no outstanding lease for the lab's database role", not outstanding,
         "revoke them by prefix, or disable the database engine"),
        ("the lab's namespaces are gone", not left, f"still there: {left}; a namespace waits for its pods to stop"),
        ("the lab's secrets engines are disabled", not mounts, f"still enabled: {mounts}: `vault secrets disable`"),
        ("the PostgreSQL users the notebooks made are gone", not (users := [u for u in made.database_users
                                                                           if pg.user_exists(lab, u)]),
         f"still there: {users}: `psql -c 'DROP OWNED BY \"<user>\"; DROP ROLE \"<user>\"'`"),
        (f"the ClusterRoleBinding {n.reviewer_binding} is gone",
         k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding) is None,
         f"kubectl delete clusterrolebinding {n.reviewer_binding}"),
    ])


@exercise(
    "transit-gone", "Disable the client cache's transit engine and delete its policy.",
    ["Engines go with `vault secrets disable <path>`, policies with `vault policy delete <name>`.",
     "vault secrets disable ${PREFIX}demo-transit; vault policy delete ${PREFIX}vso-transit-policy"])
def _transit_gone(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    mounts = vault.client(lab).sys.list_mounted_secrets_engines()["data"]
    return [(f"the transit engine {n.transit_mount}/ is disabled", f"{n.transit_mount}/" not in mounts,
             f"vault secrets disable {n.transit_mount}"),
            (f"the policy {n.transit_policy} is deleted", not vault.read_policy(lab, n.transit_policy),
             f"vault policy delete {n.transit_policy}")]


@exercise(
    "binding-gone", "Delete the token reviewer's ClusterRoleBinding, which outlived its namespace.",
    ["ClusterRoleBindings are cluster-scoped: `kubectl get clusterrolebindings` (no -n).",
     "Its name ends in vault-to-k8s-sa-auth-delegator (notebook 01).",
     "kubectl delete clusterrolebinding ${PREFIX}vault-to-k8s-sa-auth-delegator"])
def _binding_gone(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    crb = k8s.get(lab.kube, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", n.reviewer_binding)
    return [(f"the ClusterRoleBinding {n.reviewer_binding} is gone", crb is None,
             f"kubectl delete clusterrolebinding {n.reviewer_binding}"),
            (f"the namespace {n.vault_ns} is gone too", k8s.namespace_gone(lab.kube, n.vault_ns),
             f"kubectl delete namespace {n.vault_ns} (section 2)")]


STAGE = Stage(7, "07-clean-up", "Clean up: delete, revoke, and prove nothing is left",
              # its steps remove; they make nothing that a later stage would have to undo
              undo=nothing_to_undo, check=check, exercises=(_transit_gone, _binding_gone))
