"""Stage 2: a static KV v2 secret synced by a VaultStaticSecret into a native
Kubernetes Secret, read by the app as env vars.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import secrets as _secrets
from typing import Any

from . import app, k8s, vault, vso
from ._poll import poll, refresh_wait
from ._stage import Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from .backends.contract import Lab
from .display import Check, Done

KV_POLICY = """path "{mount}/data/{path}" {{
  capabilities = ["read"]
}}
"""


def enable_kv(lab: Lab) -> Done:
    return vault.enable_secrets_engine(lab, "kv", lab.names.kv_mount, options={"version": "2"})


def write_creds(lab: Lab, username: str = "static-user", password: str | None = None) -> Done:
    """Put ``username`` and ``password`` at static/exampleapp/creds (a random password unless given)."""
    n = lab.names
    return vault.kv_put(lab, n.kv_mount, n.kv_path, {"username": username,
                                                      "password": password or _secrets.token_urlsafe(12)})


def kv_policy(lab: Lab) -> str:
    n = lab.names
    return KV_POLICY.format(mount=n.kv_mount, path=n.kv_path)


def write_policy(lab: Lab) -> Done:
    return vault.write_policy(lab, lab.names.kv_policy, kv_policy(lab))


def create_role(lab: Lab) -> Done:
    n = lab.names
    return vault.create_kubernetes_role(
        lab, n.static_role, bound_service_account_names=[n.static_sa], bound_service_account_namespaces=[n.static_ns],
        policies=[n.kv_policy], ttl="24h", mount=n.k8s_auth_mount,
    )


def create_namespace(lab: Lab) -> Done:
    n = lab.names
    k8s.ensure_namespace(lab.kube, n.static_ns)
    k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n.static_sa, "namespace": n.static_ns}})
    return Done(f"namespace {n.static_ns} with service account {n.static_sa}",
                f"kubectl create namespace {n.static_ns}\nkubectl create serviceaccount {n.static_sa} -n {n.static_ns}")


def vault_auth(lab: Lab, role: str | None = None) -> dict:
    n = lab.names
    return vso.vault_auth(n.static_auth, n.static_ns, role=role or n.static_role, service_account=n.static_sa,
                          connection_ref=n.connection_ref, mount=n.k8s_auth_mount)


def create_vault_auth(lab: Lab) -> Done:
    return vso.apply(lab, vault_auth(lab))


def static_secret(lab: Lab, refresh_after: str = "10s", instant_updates: bool = False, path: str | None = None) -> dict:
    n = lab.names
    return vso.vault_static_secret(n.static_vss, n.static_ns, mount=n.kv_mount, path=path or n.kv_path,
                                   vault_auth_ref=n.static_auth, destination=n.static_secret,
                                   refresh_after=refresh_after, instant_updates=instant_updates)


def create_static_secret(lab: Lab, refresh_after: str = "10s") -> Done:
    n = lab.names
    done = vso.apply(lab, static_secret(lab, refresh_after))
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    done.what += f"; VSO synced it into Secret {n.static_ns}/{n.static_secret}"
    return done


def read_secret(lab: Lab) -> dict[str, str]:
    n = lab.names
    return k8s.secret_data(lab.kube, n.static_secret, n.static_ns) or {}


def deploy_app(lab: Lab) -> Done:
    n = lab.names
    return app.deploy(lab, n.static_ns, n.static_secret, n.app)


def remove_app(lab: Lab) -> Done:
    n = lab.names
    return app.remove(lab, n.static_ns, n.app)


def check(lab: Lab, *, app_expected: bool = False) -> Check:
    n = lab.names
    kv = vault.kv_get(lab, n.kv_mount, n.kv_path).get("data") or {}
    sec = read_secret(lab)
    vss = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    va = vso.get(lab, "VaultAuth", n.static_auth, n.static_ns)
    results = [
        (f"Vault holds {n.kv_mount}/{n.kv_path} with username and password", {"username", "password"} <= set(kv),
         f"run the `vault kv put {n.kv_mount}/{n.kv_path} username=… password=…` cell again"),
        (f"VaultAuth {n.static_ns}/{n.static_auth} is valid", bool(va and (va.get("status") or {}).get("valid")),
         vso.hint_from_events(lab, "VaultAuth", n.static_auth, n.static_ns) if va else "apply the VaultAuth first"),
        (f"VaultStaticSecret {n.static_ns}/{n.static_vss} is synced", vso.is_synced(vss),
         vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)),
        (f"Secret {n.static_ns}/{n.static_secret} matches Vault", bool(kv) and all(sec.get(k) == v for k, v in kv.items()),
         "the Secret is missing or stale: VSO refreshes it every refreshAfter; check the VaultStaticSecret's events"),
    ]
    if app_expected:
        try:
            code, body = app.call(lab, n.static_ns, "/secret", n.app, timeout=5)
            ok = code == 200 and body.get("username") == sec.get("username") and body.get("password") == sec.get("password")
        except Exception:
            ok = False
        results.append(("the app's /secret shows the Secret's values", ok,
                        "run the Deployment cell after the Secret exists (a pod reads env vars only when it starts); "
                        f"`kubectl get pods -n {n.static_ns}` and `kubectl describe pod … -n {n.static_ns}` say why a pod is not Ready"))
    return Check("static secret: Vault → VSO → Kubernetes Secret", results)


API_PATH = "exampleapp/api"
API_VSS = "vault-static-secret-api"
API_SECRET = "vso-static-api"



@exercise(
    "api-key",
    "Add api_key to static/exampleapp/creds without losing username and password; watch it reach the Secret.",
    ["`vault kv put` replaces the whole secret (a new version with only the keys you give). "
     "`vault kv patch` writes a new version with your keys changed and the others kept.",
     'vault kv patch ${PREFIX}static/exampleapp/creds api_key="$(openssl rand -hex 16)"',
     "VSO copies it at its next refresh (up to refreshAfter). The app does not see it: its pod read its "
     "environment when it started, and only the keys its Deployment names (DB_USERNAME, DB_PASSWORD)."])
def _api_key(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Vault's secret has api_key beside username and password, and VSO copied it into the Kubernetes Secret."""
    n = lab.names
    kv = vault.kv_get(lab, n.kv_mount, n.kv_path).get("data") or {}

    def copied() -> dict[str, str] | None:
        sec = read_secret(lab)
        return sec if sec.get("api_key") == kv["api_key"] else None

    sec = (poll(copied, refresh_wait(namespace.get("REFRESH_AFTER"))) if "api_key" in kv else None) or read_secret(lab)
    return [
        (f"Vault's {n.kv_mount}/{n.kv_path} has api_key", "api_key" in kv,
         f"vault kv ____ {n.kv_mount}/{n.kv_path} api_key=…"),
        ("username and password are still there", {"username", "password"} <= set(kv),
         "`vault kv put` replaced the whole secret: run the notebook's `vault kv put` cell again, then use `kv patch`"),
        (f"the Secret {n.static_secret} has api_key, equal to Vault's",
         "api_key" in kv and sec.get("api_key") == kv["api_key"],
         f"VSO copies it within refreshAfter; `kubectl describe vaultstaticsecret {n.static_vss} -n {n.static_ns}`"),
    ]


@exercise(
    "second-secret",
    "Sync static/exampleapp/api into the Secret vso-static-api with a second VaultStaticSecret; find why it does "
    "not sync, and fix it.",
    ["`kubectl describe vaultstaticsecret vault-static-secret-api -n ${PREFIX}static-exampleapp`: the events at the "
     "bottom carry Vault's answer. Which status code?",
     "403 permission denied: static-auth logs in with the role vault-role-static-exampleapp, whose policy "
     "exampleapp-kv-read allows only static/data/exampleapp/creds.",
     "Write the policy again with both paths (`vault policy write` replaces it, so keep the creds path): "
     'path "${PREFIX}static/data/exampleapp/api" { capabilities = ["read"] }. VSO retries on its own.'])
def _second_secret(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The second VaultStaticSecret syncs api_key, and the app's secret still syncs."""
    n = lab.names
    kv = vault.kv_get(lab, n.kv_mount, API_PATH).get("data") or {}
    vss = vso.get(lab, "VaultStaticSecret", API_VSS, n.static_ns)
    policy = vault.read_policy(lab, n.kv_policy) or ""
    allowed = f"{n.kv_mount}/data/{API_PATH}" in policy
    # VSO retries a refused read with its back-off (up to about 10 s on the lab): wait for it once the fix is in.

    def copied() -> dict[str, str] | None:
        sec = k8s.secret_data(lab.kube, API_SECRET, n.static_ns) or {}
        return sec if sec.get("api_key") == kv["api_key"] else None

    sec = (poll(copied, 30) if vss and allowed and "api_key" in kv else None) or \
        k8s.secret_data(lab.kube, API_SECRET, n.static_ns) or {}
    main = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    return [
        (f"Vault has {n.kv_mount}/{API_PATH} with api_key", "api_key" in kv,
         f'vault kv put {n.kv_mount}/{API_PATH} api_key="$(openssl rand -hex 16)"'),
        (f"VaultStaticSecret {n.static_ns}/{API_VSS} exists", vss is not None, "apply it (see the scaffold)"),
        (f"policy {n.kv_policy} allows reading {n.kv_mount}/data/{API_PATH}", allowed,
         vso.hint_from_events(lab, "VaultStaticSecret", API_VSS, n.static_ns) if vss else "see the hints"),
        (f"the Secret {API_SECRET} holds Vault's api_key", bool(kv) and sec.get("api_key") == kv.get("api_key"),
         f"`kubectl describe vaultstaticsecret {API_VSS} -n {n.static_ns}`"),
        (f"the policy still allows {n.kv_mount}/data/{n.kv_path} (the app's secret)",
         f"{n.kv_mount}/data/{n.kv_path}" in policy and vso.is_synced(main),
         "`vault policy write` replaces the whole policy: list both paths"),
    ]


def undo(lab: Lab) -> Done:
    """The namespace (VaultAuth, VaultStaticSecret, the app), the auth role, the policy and the KV engine."""
    n = lab.names
    delete_namespace(lab, n.static_ns)
    c = vault.client(lab)
    vault_quiet(c.auth.kubernetes.delete_role, n.static_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.kv_policy)
    if f"{n.kv_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.kv_mount)
    return Done(f"deleted {n.static_ns}, the role, the policy and the KV engine at {n.kv_mount}/",
                f"kubectl delete namespace {n.static_ns}\nvault secrets disable {n.kv_mount}")


def in_place(lab: Lab) -> bool:
    """Notebook 02's work is there as its steps leave it (``labkit stage`` then skips them; notebooks 08-13 start
    from it): the KV engine, a VaultStaticSecret without a later notebook's instant updates or restart targets, no
    app Deployment (the last step removes it), and the stage's check passes."""
    n = lab.names
    if f"{n.kv_mount}/" not in vault.client(lab).sys.list_mounted_secrets_engines()["data"]:
        return False
    spec = (vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns) or {}).get("spec")
    if not spec or (spec.get("syncConfig") or {}).get("instantUpdates") or spec.get("rolloutRestartTargets"):
        return False
    if k8s.get(lab.kube, "apps/v1", "Deployment", n.app, n.static_ns) is not None:
        return False
    return check(lab).passed


STAGE = Stage(2, "02-static-secrets", "Static secrets: KV v2 → VaultStaticSecret → Secret", undo=undo, check=check,
              exercises=(_api_key, _second_secret), in_place=in_place)
