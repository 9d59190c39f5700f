"""Stage 11 (notebook 11, beyond the tutorial): VaultAuthGlobal: one login recipe for many teams.

A platform team keeps how VSO logs in (method, mount, audiences, connection) in one VaultAuthGlobal in its own
namespace; each team's VaultAuth points at it with ``vaultAuthGlobalRef`` and sets only its role and service account.
VSO merges the two whenever it needs the VaultAuth (``common.MergeInVaultAuthGlobal``) and refuses a team whose
namespace the VaultAuthGlobal's ``allowedNamespaces`` leaves out: the VaultAuth's condition ``Available`` turns
False with the reason ``VaultAuthGlobalRef``, and ``status.valid`` is false.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import k8s, vault, vso
from ._poll import poll, refresh_wait
from ._stage import Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from .backends.contract import Lab
from .display import Check, Done

#: the reason VSO gives the VaultAuth's ``Available`` condition when it has a vaultAuthGlobalRef, merged or not
#: (controllers/vaultauth_controller.go); the condition's status says which
REF_REASON = "VaultAuthGlobalRef"
#: how often VSO retries a VaultAuth it refused: requeueDurationOnError (5 s, minus jitter), plus margin
RETRY_SECONDS = 15.0




def auth_global(lab: Lab) -> dict | None:
    n = lab.names
    return vso.get(lab, "VaultAuthGlobal", n.auth_global, n.platform_ns)


def vault_auth(lab: Lab, namespace: str) -> dict | None:
    return vso.get(lab, "VaultAuth", lab.names.team_auth, namespace)


def allows(global_obj: dict | None, namespace: str) -> bool:
    """Whether VSO lets a VaultAuth in ``namespace`` use ``global_obj`` (``common.isAllowedNamespace``): its own
    namespace always; otherwise ``allowedNamespaces`` must list the namespace, or be exactly ``["*"]``."""
    if not global_obj:
        return False
    meta = global_obj.get("metadata") or {}
    if meta.get("namespace") == namespace:
        return True
    allowed = list((global_obj.get("spec") or {}).get("allowedNamespaces") or [])
    return allowed == ["*"] or namespace in allowed


def ref_condition(obj: dict | None) -> dict[str, Any]:
    """The VaultAuth's ``Available`` condition about its vaultAuthGlobalRef, for its current generation ({} if none)."""
    cond = vso.conditions(obj).get("Available") or {}
    generation = ((obj or {}).get("metadata") or {}).get("generation")
    if cond.get("reason") != REF_REASON or cond.get("observedGeneration") not in (None, generation):
        return {}
    return cond


def merged(obj: dict | None) -> bool:
    """VSO merged the VaultAuthGlobal into this VaultAuth and found it valid."""
    return ref_condition(obj).get("status") == "True" and bool((obj or {}).get("status", {}).get("valid"))


def refused(obj: dict | None) -> bool:
    """VSO refused this VaultAuth's vaultAuthGlobalRef (condition Available=False, reason VaultAuthGlobalRef)."""
    return ref_condition(obj).get("status") == "False" and not (obj or {}).get("status", {}).get("valid")


def why_refused(lab: Lab, namespace: str) -> str:
    """What a learner can do about a VaultAuth in ``namespace`` that is not merged, from real state."""
    n = lab.names
    obj, glob = vault_auth(lab, namespace), auth_global(lab)
    if obj is None:
        return f"there is no VaultAuth {namespace}/{n.team_auth}: run its cell"
    ref = (obj.get("spec") or {}).get("vaultAuthGlobalRef") or {}
    if (ref.get("name"), ref.get("namespace")) != (n.auth_global, n.platform_ns):
        return f"its vaultAuthGlobalRef must name {n.auth_global} in namespace {n.platform_ns}"
    if glob is None:
        return f"the VaultAuthGlobal {n.platform_ns}/{n.auth_global} does not exist: run the platform team's cell"
    if not allows(glob, namespace):
        return (f"the VaultAuthGlobal's allowedNamespaces does not list {namespace}: "
                f"`kubectl describe vaultauth {n.team_auth} -n {namespace}` shows VSO's refusal")
    if not ref_condition(obj):
        return "VSO has not reported on it yet: it retries a refused VaultAuth about every 5 s; run the check again"
    return f"VSO's message: {ref_condition(obj).get('message', '')[:200]}"


def check(lab: Lab) -> Check:
    n = lab.names
    glob = auth_global(lab)
    spec = (glob or {}).get("spec") or {}
    team_a, team_b = vault_auth(lab, n.team_a_ns), vault_auth(lab, n.team_b_ns)
    a_spec = (team_a or {}).get("spec") or {}
    kv = vault.kv_get(lab, n.teams_mount, n.team_a_path).get("data") or {}
    vss = vso.get(lab, "VaultStaticSecret", n.team_a_vss, n.team_a_ns)
    sec = k8s.secret_data(lab.kube, n.team_a_secret, n.team_a_ns) or {}
    return Check("VaultAuthGlobal: one login recipe for many teams", [
        (f"VaultAuthGlobal {n.platform_ns}/{n.auth_global} logs in with kubernetes at {n.k8s_auth_mount}",
         spec.get("defaultAuthMethod") == "kubernetes" and (spec.get("kubernetes") or {}).get("mount") == n.k8s_auth_mount,
         "run the platform team's cell (the VaultAuthGlobal)"),
        (f"its allowedNamespaces lets {n.team_a_ns} in and leaves {n.team_b_ns} out",
         allows(glob, n.team_a_ns) and not allows(glob, n.team_b_ns),
         f"allowedNamespaces should be [{n.team_a_ns}]: run the platform team's cell again"),
        (f"team A's VaultAuth sets no method or mount: they come from {n.auth_global}",
         team_a is not None and not a_spec.get("method") and not a_spec.get("mount")
         and bool(a_spec.get("vaultAuthGlobalRef")), f"run team A's cell ({n.team_a_ns}) again"),
        ("VSO merged the VaultAuthGlobal into team A's VaultAuth (Available, VaultAuthGlobalRef)", merged(team_a),
         why_refused(lab, n.team_a_ns)),
        (f"VaultStaticSecret {n.team_a_ns}/{n.team_a_vss} is synced", vso.is_synced(vss),
         vso.hint_from_events(lab, "VaultStaticSecret", n.team_a_vss, n.team_a_ns)),
        (f"Secret {n.team_a_ns}/{n.team_a_secret} matches Vault's {n.teams_mount}/{n.team_a_path}",
         bool(kv) and all(sec.get(k) == v for k, v in kv.items()),
         f"run the cell that writes {n.teams_mount}/{n.team_a_path}, then wait one refreshAfter"),
        ("VSO refused team B's VaultAuth (Available=False, reason VaultAuthGlobalRef): not in allowedNamespaces",
         refused(team_b) and not allows(glob, n.team_b_ns),
         f"team B is allowed now ({n.team_b_ns} is in allowedNamespaces): run the platform team's cell again"
         if allows(glob, n.team_b_ns) else why_refused(lab, n.team_b_ns)),
    ])


# -- exercises (notebook 11) ------------------------------------------------------------------------------------------

@exercise(
    "let-team-b-in",
    "As the platform team, let team B use the VaultAuthGlobal, and watch team B's VaultAuth become valid.",
    ["Only the VaultAuthGlobal's spec.allowedNamespaces decides; team B's VaultAuth needs no change.",
     'kubectl patch vaultauthglobal team-login -n ${PREFIX}vso-platform --type merge '
     '-p "spec: {allowedNamespaces: [${PREFIX}team-a, ${PREFIX}team-b]}"   (a merge patch replaces the whole '
     "list: name both teams)",
     "VSO retries the refused VaultAuth on its own about every 5 s. `[\"*\"]` would let every namespace in: "
     "list the team instead."])
def _let_team_b_in(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Team B is listed (not by a wildcard), VSO merged its VaultAuth, and team A still works."""
    n = lab.names
    glob = auth_global(lab)
    allowed = list(((glob or {}).get("spec") or {}).get("allowedNamespaces") or [])
    team_b = poll(lambda: (lambda o: o if merged(o) else None)(vault_auth(lab, n.team_b_ns)),
                   RETRY_SECONDS if n.team_b_ns in allowed else 0) or vault_auth(lab, n.team_b_ns)
    return [
        (f"allowedNamespaces lists {n.team_b_ns}", n.team_b_ns in allowed,
         "add team B's namespace to the VaultAuthGlobal's allowedNamespaces" +
         (' ("*" lets every namespace in: list the team instead)' if "*" in allowed else "")),
        (f"allowedNamespaces still lists {n.team_a_ns}", n.team_a_ns in allowed,
         "a patch that replaces the list drops team A: list both"),
        ("VSO merged the VaultAuthGlobal into team B's VaultAuth", merged(team_b), why_refused(lab, n.team_b_ns)),
        ("team A's VaultAuth is still merged", merged(vault_auth(lab, n.team_a_ns)), why_refused(lab, n.team_a_ns)),
    ]


@exercise(
    "local-audience",
    "Override the token audience in team A's VaultAuth only (team-a), see which value VSO uses, then make Vault's "
    "role accept it so that team A syncs again.",
    ["Add `audiences: [team-a]` under spec.kubernetes of team A's VaultAuth (`kubectl patch … --type merge`). "
     "Leave the VaultAuthGlobal alone.",
     "A field set in the VaultAuth wins over the VaultAuthGlobal's. The VaultStaticSecret's events then show Vault's "
     "403 on auth/…/login: 'invalid audience (aud) claim'. The role still expects `vault`.",
     "vault write auth/${PREFIX}kubernetes/role/team-a audience=team-a   (a role update keeps the fields you "
     "do not give)"])
def _local_audience(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Team A's VaultAuth carries its own audience, the platform's is unchanged, Vault's role expects team A's, and
    the secret syncs with it."""
    n = lab.names
    team_a = vault_auth(lab, n.team_a_ns)
    local = list((((team_a or {}).get("spec") or {}).get("kubernetes") or {}).get("audiences") or [])
    platform = list((((auth_global(lab) or {}).get("spec") or {}).get("kubernetes") or {}).get("audiences") or [])
    role = vault.client(lab).read(f"auth/{n.k8s_auth_mount}/role/{n.team_a_role}") or {}
    expected = (role.get("data") or {}).get("audience")
    consistent = local == ["team-a"] and expected == "team-a"
    # 15 s over refreshAfter: the VaultStaticSecret failed its logins before the fix, so VSO may be backing off
    wait = refresh_wait(namespace.get("REFRESH_AFTER"), 15) if consistent else 0
    vss = poll(lambda: (lambda o: o if vso.is_synced(o) else None)(
        vso.get(lab, "VaultStaticSecret", n.team_a_vss, n.team_a_ns)), wait)
    return [
        ("team A's VaultAuth sets audiences: [team-a]", local == ["team-a"],
         f"kubectl patch vaultauth {n.team_auth} -n {n.team_a_ns} --type merge "
         "-p '{\"spec\":{\"kubernetes\":{\"audiences\":[\"team-a\"]}}}'"),
        ("the VaultAuthGlobal still says audiences: [vault] (the override is team A's only)", platform == ["vault"],
         "run the platform team's cell again: the other teams keep the platform's audience"),
        (f"Vault's role {n.team_a_role} expects the audience team-a", expected == "team-a",
         vso.hint_from_events(lab, "VaultStaticSecret", n.team_a_vss, n.team_a_ns)),
        (f"VaultStaticSecret {n.team_a_ns}/{n.team_a_vss} syncs with the new audience", consistent and vso.is_synced(vss),
         vso.hint_from_events(lab, "VaultStaticSecret", n.team_a_vss, n.team_a_ns)),
    ]


def undo(lab: Lab) -> Done:
    """The three namespaces (the teams' first: their VaultAuths reference the platform's), the roles, the policies and
    the KV engine."""
    n = lab.names
    # The namespace controller takes about 5 s per namespace here: delete the three at once. Discovery first, so that
    # the threads share a warm dynamic client.
    for kind in ("VaultStaticSecret", "VaultAuth", "VaultDynamicSecret", "VaultConnection"):
        k8s.dynamic(lab.kube).resources.get(api_version=vso.API_VERSION, kind=kind)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda ns: delete_namespace(lab, ns), (n.team_b_ns, n.team_a_ns, n.platform_ns)))
    c = vault.client(lab)
    for role in (n.team_a_role, n.team_b_role):
        vault_quiet(c.auth.kubernetes.delete_role, role, mount_point=n.k8s_auth_mount)
    for policy in (n.team_a_policy, n.team_b_policy):
        vault_quiet(c.sys.delete_policy, policy)
    if f"{n.teams_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.teams_mount)
    return Done(f"deleted {n.team_b_ns}, {n.team_a_ns}, {n.platform_ns}, the roles, the policies and the KV engine at "
                f"{n.teams_mount}/",
                f"kubectl delete namespace {n.team_b_ns} {n.team_a_ns} {n.platform_ns}\n"
                f"vault secrets disable {n.teams_mount}")


STAGE = Stage(11, "11-vault-auth-global", "VaultAuthGlobal: one login recipe for many teams",
              undo=undo, check=check, exercises=(_let_team_b_in, _local_audience), requires=(1,))
