"""Stage 12 (notebook 12, beyond the tutorial): Troubleshooting, part 1: logins, policies and ownership.

Four drills (:mod:`labkit.drills`) in the namespace ``drills-access``, where teams sync the KV v2 secret
``static/drills/config`` with VaultStaticSecrets: a policy without KV v2's ``data/`` (``kv-data-path``), a role's
audience the VaultAuth does not request (``audience``), a reviewer JWT that may not review tokens (``reviewer-jwt``)
and a hand-made destination Secret (``not-owner``). Each drill's fix checker reads Vault and Kubernetes; it waits for
VSO only once the fix itself is in place, so on the broken state it fails at once.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check, exercises and diagnoses.
"""

from __future__ import annotations

from typing import Any

import hvac
from hvac import exceptions as hvexc
from kubernetes import client as kclient

from . import k8s, vault, vso
from ._poll import poll
from ._stage import Diagnosis, Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from .backends.contract import Lab
from .display import Check, Done, Steps

#: each drill's VaultStaticSecret, named as the Secret it writes
BILLING, SEARCH, REPORTS, LEGACY = "billing-config", "search-config", "reports-config", "legacy-config"
#: VSO retries a refused read or login with its back-off (at most 10 s on the lab): a fix shows within this
SYNC_WAIT = 30.0

Results = list[tuple[str, bool, str]]



def _vault_value(lab: Lab) -> str | None:
    n = lab.names
    return (vault.kv_get(lab, n.kv_mount, n.drills_kv_path).get("data") or {}).get("api_key")


def _vss(lab: Lab, name: str) -> dict | None:
    return vso.get(lab, "VaultStaticSecret", name, lab.names.drills_ns)


def _synced(lab: Lab, name: str) -> bool:
    """The VaultStaticSecret ``name`` is synced and its Secret holds Vault's current ``api_key``."""
    value = _vault_value(lab)
    data = k8s.secret_data(lab.kube, name, lab.names.drills_ns) or {}
    return vso.is_synced(_vss(lab, name)) and value is not None and data.get("api_key") == value


def _sync_result(lab: Lab, name: str, ready: bool) -> tuple[str, bool, str]:
    """Wait (only when the fix is in place) for VSO to sync ``name``; the check's last line."""
    ok = bool(poll(lambda: _synced(lab, name), SYNC_WAIT)) if ready else _synced(lab, name)
    hint = vso.hint_from_events(lab, "VaultStaticSecret", name, lab.names.drills_ns)
    return (f"VaultStaticSecret {name} synced Vault's api_key into the Secret {name}", ok, hint)


def _can_read(lab: Lab, policy: str, path: str) -> bool:
    """Whether a token with only ``policy`` may read ``path`` (``POST sys/capabilities`` with a 60 s token)."""
    c = vault.client(lab)
    token = c.auth.token.create(policies=[policy], no_default_policy=True, ttl="60s", renewable=False)["auth"]
    try:
        caps = (c.write("sys/capabilities", token=token["client_token"], paths=[path]) or {}).get("data") or {}
        return "read" in (caps.get(path) or caps.get("capabilities") or [])
    finally:
        vault_quiet(c.auth.token.revoke_accessor, token["accessor"])


_STATUS: dict[int, type[hvexc.VaultError]] = {400: hvexc.InvalidRequest, 401: hvexc.Unauthorized, 403: hvexc.Forbidden,
                                              404: hvexc.InvalidPath, 503: hvexc.VaultDown}


def _login_status(lab: Lab, role: str, audiences: list[str] | None = None) -> int:
    """Log in to the kubernetes auth method as ``drills-sa`` with ``role``, as VSO does (a TokenRequest, then
    ``PUT auth/<mount>/login``): 200, or Vault's status code. The token Vault issues is revoked at once."""
    n = lab.names
    spec = kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(
        audiences=audiences or [], expiration_seconds=600))
    made = kclient.CoreV1Api(lab.kube).create_namespaced_service_account_token(n.drills_sa, n.drills_ns, spec)
    assert made.status is not None  # the API server returns the token in the status
    jwt = made.status.token
    c = hvac.Client(url=lab.vault_addr)
    try:
        c.auth.kubernetes.login(role=role, jwt=jwt, mount_point=n.k8s_auth_mount)
    except hvexc.VaultError as exc:  # hvac's class is Vault's status code (VaultError.from_status)
        return next((code for code, cls in _STATUS.items() if isinstance(exc, cls)), 500)
    c.auth.token.revoke_self()
    return 200


# -- drill 1: kv-data-path -------------------------------------------------------------------------------------

KV_DATA_PATH = Diagnosis(
    "kv-data-path",
    "Team billing applied its VaultStaticSecret billing-config. The Secret billing-config never appears, yet "
    "`vault kv get` shows the secret in Vault.",
    {"a": "The VaultStaticSecret's path is wrong: there is no secret where VSO looks.",
     "b": "The team's policy names the secret without KV v2's data/ segment, so it allows nothing VSO reads.",
     "c": "VSO cannot log in: the role does not bind the team's service account.",
     "d": "VSO cannot reach Vault: the VaultConnection is wrong."},
    "b",
    "VSO logged in and read GET …/v1/static/data/drills/config: Vault answered 403 permission denied. The policy "
    "lists static/drills/config, and `vault kv get -output-policy` shows that a read needs static/data/drills/config.",
    {"a": "a missing KV v2 secret is no 403: VSO reports `empty response from Vault` for it; here Vault answered "
          "403 to a path that exists (`vault kv get` reads it)",
     "c": "a refused login is a PUT to auth/…/login (VaultClientConfigError, `Failed to get Vault auth login`); the "
          "failing request is the GET of the secret (VaultClientError), so VSO had logged in",
     "d": "Vault answered with a status code (Code: 403): VSO reached it, and the VaultConnection is valid"},
)


@exercise(
    "kv-data-path",
    "Fix team billing's policy so that VSO syncs static/drills/config into the Secret billing-config.",
    ["`kubectl describe vaultstaticsecret billing-config -n ${PREFIX}drills-access`: which URL did VSO read? Compare "
     "it with `vault policy read ${PREFIX}billing-kv-read`.",
     "KV v2 serves a secret's data at <mount>/data/<path>; `vault kv get -output-policy ${PREFIX}static/drills/config` "
     "prints the policy a read needs.",
     'vault policy write ${PREFIX}billing-kv-read - <<EOF\npath "${PREFIX}static/data/drills/config" {\n'
     '  capabilities = ["read"]\n}\nEOF\n(VSO retries on its own within seconds.)'])
def _kv_data_path(lab: Lab, namespace: dict[str, Any]) -> Results:
    """The billing policy allows reading the KV v2 data path, and VSO synced the secret with it."""
    n = lab.names
    path = f"{n.kv_mount}/data/{n.drills_kv_path}"
    allowed = bool(vault.read_policy(lab, n.billing_policy)) and _can_read(lab, n.billing_policy, path)
    return [
        (f"VaultStaticSecret {BILLING} exists", _vss(lab, BILLING) is not None, "run the drill's break cell first"),
        (f"policy {n.billing_policy} allows reading {path}", allowed,
         f"`vault policy read {n.billing_policy}` lists another path: KV v2 reads <mount>/data/<path>"),
        _sync_result(lab, BILLING, allowed),
    ]


# -- drill 2: audience -----------------------------------------------------------------------------------------

AUDIENCE = Diagnosis(
    "audience",
    "Team search's VaultAuth search-auth shows Valid: true, but its Secret search-config never appears. The other "
    "teams' secrets keep syncing.",
    {"a": "The role's bound_service_account_names or namespaces do not match the VaultAuth's service account.",
     "b": "The role's policy does not allow reading the secret.",
     "c": "The role requires an audience that the token VSO requests does not carry.",
     "d": "The VaultAuth is misconfigured; its Valid flag is stale."},
    "c",
    "Vault refused the login (PUT …/auth/…/login) with `invalid audience (aud) claim`. The role's audience is "
    "`vault`; the VaultAuth requests no audiences, so the token carries the API server's default "
    "(https://kubernetes.default.svc.cluster.local).",
    {"a": "an unbound service account or namespace is refused with `service account name not authorized` (or "
          "`namespace not authorized`); Vault's error names the audience",
     "b": "a policy is checked only after a login, on the read; this login itself was refused",
     "d": "VSO checks a VaultAuth's fields and references, not a login (status.valid is true, events say Accepted); "
          "it logs in only when a secret needs the VaultAuth, and that login's error is on the VaultStaticSecret"},
)


@exercise(
    "audience",
    "Make team search's login succeed, keeping the role's audience: the VaultAuth must request the token for it.",
    ["`kubectl describe vaultstaticsecret search-config -n ${PREFIX}drills-access`: which request did Vault refuse, "
     "and why? Then `vault read -field=audience auth/${PREFIX}kubernetes/role/vault-role-search`.",
     "The VaultAuth's spec.kubernetes.audiences sets the audiences of the token VSO requests (a TokenRequest). With "
     "none, the token carries the API server's default audience.",
     "Apply the VaultAuth search-auth again with `audiences: [vault]` under spec.kubernetes (its other fields as in "
     "the break cell). A changed VaultAuth makes VSO log in again at once."])
def _audience(lab: Lab, namespace: dict[str, Any]) -> Results:
    """The VaultAuth requests the role's audience (or the role has none), and the secret synced."""
    n = lab.names
    role = vault.read_kubernetes_role(lab, n.search_role, mount=n.k8s_auth_mount)
    wanted = str(role.get("audience") or "")
    auth = vso.get(lab, "VaultAuth", "search-auth", n.drills_ns)
    asked = list((((auth or {}).get("spec") or {}).get("kubernetes") or {}).get("audiences") or [])
    matches = bool(role) and auth is not None and (not wanted or wanted in asked)
    return [
        (f"role {n.search_role} and VaultAuth search-auth exist", bool(role) and auth is not None,
         "run the drill's break cell first"),
        ("the VaultAuth requests the audience the role requires", matches,
         f"the role requires {wanted or '(none)'}; the VaultAuth requests {asked or '(none: the API default)'}"),
        _sync_result(lab, SEARCH, matches),
    ]


# -- drill 3: reviewer-jwt -------------------------------------------------------------------------------------

REVIEWER_JWT = Diagnosis(
    "reviewer-jwt",
    "After the platform team re-ran Vault's Kubernetes auth configuration, team reports' new Secret reports-config "
    "never appears. The tutorial's Secret from notebook 02 still syncs.",
    {"a": "Team reports' VaultAuth names a role that does not bind its service account.",
     "b": "Vault now calls TokenReview with a JWT that may not review tokens, so it can verify no one's login.",
     "c": "Vault's kubernetes auth no longer reaches the Kubernetes API: kubernetes_host is wrong.",
     "d": "Kubernetes auth works (notebook 02's secret syncs); only team reports' VaultAuth is broken."},
    "b",
    "Vault refused the login with a bare 403 permission denied, and `kubectl auth can-i create tokenreviews` says "
    "`no` for drills-sa (the account whose token the config now holds) and `yes` for the reviewer vault-to-k8s-sa.",
    {"a": "an unbound service account is refused with `service account name not authorized`; here the role "
          "vault-role-drills binds drills-sa (`vault read` it), and Vault says only `permission denied`",
     "c": "`vault read auth/…/config` shows kubernetes_host equal to $KUBE_API_FOR_VAULT, the address notebook 01 "
          "wrote; what changed is whose token Vault presents to the API server",
     "d": "notebook 02's VaultAuth logged in before the change: VSO keeps its token and renews it without logging in "
          "again, so it proves nothing. Every new login fails the same way"},
)


@exercise(
    "reviewer-jwt",
    "Write the token reviewer's JWT back into auth/${PREFIX}kubernetes/config, so that logins succeed again.",
    ["`kubectl auth can-i create tokenreviews --as=system:serviceaccount:${PREFIX}drills-access:drills-sa` and "
     "the same for system:serviceaccount:${PREFIX}vault:vault-to-k8s-sa: whose token may review?",
     "Notebook 01's cell reads the reviewer's token from the Secret vault-auth-secret in ${PREFIX}vault, with the "
     "cluster's CA.",
     "Run notebook 01's `vault write auth/${PREFIX}kubernetes/config token_reviewer_jwt=\"$TOKEN_REVIEW_JWT\" "
     "kubernetes_host=\"$KUBE_API_FOR_VAULT\" kubernetes_ca_cert=\"$KUBE_CA_CERT\"` with TOKEN_REVIEW_JWT and "
     "KUBE_CA_CERT read from vault-auth-secret (`kubectl get secret … -o jsonpath='{.data.token}' | base64 -d`)."])
def _reviewer_jwt(lab: Lab, namespace: dict[str, Any]) -> Results:
    """A login as drills-sa with vault-role-drills succeeds again, and team reports' secret synced."""
    n = lab.names
    if _vss(lab, REPORTS) is None:  # nothing to log in as before the notebook's setup and the drill's break cell
        return [(f"VaultStaticSecret {REPORTS} exists", False, "run the notebook's setup cell, then the drill's break cell")]
    status = _login_status(lab, n.drills_role)
    return [
        (f"VaultStaticSecret {REPORTS} exists", True, ""),
        (f"Vault accepts a login to auth/{n.k8s_auth_mount} (role {n.drills_role}, service account {n.drills_sa})",
         status == 200, f"Vault answered {status}: its TokenReview call needs the reviewer's JWT (see the hints)"),
        _sync_result(lab, REPORTS, status == 200),
    ]


# -- drill 4: not-owner ----------------------------------------------------------------------------------------

NOT_OWNER = Diagnosis(
    "not-owner",
    "Team legacy moves its hand-made Secret legacy-config to VSO with a VaultStaticSecret of the same name. The "
    "Secret keeps its old value, and `kubectl describe` shows the VaultStaticSecret without any status.",
    {"a": "VSO cannot read the secret in Vault.",
     "b": "VSO may not update Secrets in this namespace (RBAC).",
     "c": "VSO refuses to write a Secret it did not create: the hand-made one lacks VSO's owner labels and "
          "ownerReference.",
     "d": "Nothing is wrong yet: VSO writes the Secret at the next refreshAfter."},
    "c",
    "VSO read Vault, then failed to write (SecretSyncError `Failed to update k8s secret`): its message lists the "
    "missing owner labels, `has no ownerReferences` and `not the owner of the destination Secret`.",
    {"a": "a refused read is a VaultClientError (`Failed to read Vault secret`); this error comes after the read, "
          "when VSO writes the Secret",
     "b": "Kubernetes would answer 403 Forbidden; VSO's own check refused before any write, naming labels and "
          "ownerReferences",
     "d": "the same warning repeats every few seconds (VSO retries after an error), while refreshAfter has passed"},
)


@exercise(
    "not-owner",
    "Let VSO take over the Secret legacy-config: either allow it to overwrite (destination.overwrite: true) or "
    "delete the hand-made Secret.",
    ["`kubectl get events -n ${PREFIX}drills-access --field-selector involvedObject.name=legacy-config`, then "
     "`kubectl get secret legacy-config -n ${PREFIX}drills-access -o jsonpath='{.metadata.labels}'`: whose Secret is it?",
     "VSO writes a destination it finds only when the Secret carries its owner labels and an ownerReference to this "
     "VaultStaticSecret, or when spec.destination.overwrite is true (and the Secret carries no VSO owner labels).",
     "Either apply the VaultStaticSecret again with `overwrite: true` under destination, or "
     "`kubectl delete secret legacy-config -n ${PREFIX}drills-access` and let VSO create its own."])
def _not_owner(lab: Lab, namespace: dict[str, Any]) -> Results:
    """VSO owns the Secret legacy-config (an ownerReference to the VaultStaticSecret) and synced Vault's value."""
    n = lab.names
    obj = _vss(lab, LEGACY)
    uid = ((obj or {}).get("metadata") or {}).get("uid")
    overwrite = bool((((obj or {}).get("spec") or {}).get("destination") or {}).get("overwrite"))

    def owned() -> bool:
        sec = k8s.secret(lab.kube, LEGACY, n.drills_ns)
        refs = (sec.metadata.owner_references or []) if sec is not None else []
        return uid is not None and any(r.uid == uid for r in refs)

    hand_made = k8s.secret(lab.kube, LEGACY, n.drills_ns) is not None and not owned()
    ready = obj is not None and (overwrite or not hand_made)
    return [
        (f"VaultStaticSecret {LEGACY} exists", obj is not None, "run the drill's break cell first"),
        ("VSO may write the destination: overwrite is true, or no hand-made Secret is in the way", ready,
         "the Secret legacy-config was made by hand (no VSO owner labels, no ownerReference): see the hints"),
        (f"VSO owns the Secret {LEGACY} (an ownerReference to the VaultStaticSecret)",
         bool(poll(owned, SYNC_WAIT)) if ready else owned(), "VSO sets it when it writes the Secret"),
        _sync_result(lab, LEGACY, ready),
    ]


# -- check, undo -------------------------------------------------------------------------------------------------

def check(lab: Lab) -> Check:
    """Every drill fixed: the four teams' secrets synced, and the tutorial's own still syncs."""
    n = lab.names
    tutorial = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    results = [(f"drill {d}: VaultStaticSecret {name} is synced", _synced(lab, name),
                f"finish drill {d} (its check cell says what is missing)")
               for d, name in (("kv-data-path", BILLING), ("audience", SEARCH), ("reviewer-jwt", REPORTS),
                               ("not-owner", LEGACY))]
    results.append((f"Vault accepts new logins to auth/{n.k8s_auth_mount}",
                    vso.get(lab, "VaultAuth", n.drills_auth, n.drills_ns) is not None
                    and _login_status(lab, n.drills_role) == 200,
                    "run the setup cell, then fix drill reviewer-jwt"))
    results.append((f"the tutorial's VaultStaticSecret {n.static_ns}/{n.static_vss} still syncs",
                    vso.is_synced(tutorial), vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)))
    return Check("Troubleshooting, part 1: logins, policies and ownership", results)


def restore_reviewer(lab: Lab) -> Done:
    """Notebook 01's ``auth-config`` step again: the reviewer's JWT, the API's address and its CA."""
    n = lab.names
    c = vault.client(lab)
    data = k8s.secret_data(lab.kube, n.reviewer_secret, n.vault_ns) or {}
    if f"{n.k8s_auth_mount}/" not in c.sys.list_auth_methods()["data"] or not data.get("token"):
        return Done(f"auth/{n.k8s_auth_mount} is not set up (notebook 01): nothing to restore")
    c.write(f"auth/{n.k8s_auth_mount}/config", token_reviewer_jwt=data["token"],
            kubernetes_host=lab.kube_api_for_vault, kubernetes_ca_cert=data.get("ca.crt", ""))
    read = f"kubectl get secret {n.reviewer_secret} -n {n.vault_ns} -o jsonpath="
    return Done(f"wrote the reviewer's JWT back into auth/{n.k8s_auth_mount}/config",
                f"KUBE_CA_CERT=$({read}'{{.data.ca\\.crt}}' | base64 -d)\n"
                f"TOKEN_REVIEW_JWT=$({read}'{{.data.token}}' | base64 -d)\n"
                f'vault write auth/{n.k8s_auth_mount}/config token_reviewer_jwt="$TOKEN_REVIEW_JWT" '
                f'kubernetes_host="$KUBE_API_FOR_VAULT" kubernetes_ca_cert="$KUBE_CA_CERT"')


def undo(lab: Lab) -> Steps:
    """The drills' namespace (VaultAuths, VaultStaticSecrets, Secrets), roles, policies and KV secret; the
    kubernetes auth config as notebook 01 wrote it (drill reviewer-jwt replaces it)."""
    n = lab.names
    delete_namespace(lab, n.drills_ns)
    c = vault.client(lab)
    steps = [Done(f"deleted namespace {n.drills_ns}", f"kubectl delete namespace {n.drills_ns}")]
    if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
        for role in (n.drills_role, n.billing_role, n.search_role):
            vault_quiet(c.auth.kubernetes.delete_role, role, mount_point=n.k8s_auth_mount)
        steps.append(restore_reviewer(lab))
    for policy in (n.drills_policy, n.billing_policy):
        vault_quiet(c.sys.delete_policy, policy)
    if f"{n.kv_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        vault_quiet(c.secrets.kv.v2.delete_metadata_and_all_versions, n.drills_kv_path, mount_point=n.kv_mount)
    return Steps(steps)


STAGE = Stage(12, "12-troubleshooting-access", "Troubleshooting, part 1: logins, policies and ownership",
              undo=undo, check=check, requires=(1, 2),
              exercises=(_kv_data_path, _audience, _reviewer_jwt, _not_owner),
              diagnoses=(KV_DATA_PATH, AUDIENCE, REVIEWER_JWT, NOT_OWNER))
