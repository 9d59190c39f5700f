"""Stage 2: a static KV v2 secret synced by a VaultStaticSecret into a native
Kubernetes Secret, read by the app as env vars."""

from __future__ import annotations

import secrets as _secrets
from typing import Any

from . import app, k8s, vault, vso
from .connect import connection_ref
from .display import Check, Done, mask_mapping

KV_POLICY = """path "{mount}/data/{path}" {{
  capabilities = ["read"]
}}
"""


def enable_kv(lab: Any) -> Done:
    return vault.enable_secrets_engine(lab, "kv", lab.names.kv_mount, options={"version": "2"})


def write_creds(lab: Any, username: str = "static-user", password: str | None = None) -> Done:
    """Put ``username`` and ``password`` at static/exampleapp/creds (a random password unless given)."""
    n = lab.names
    return vault.kv_put(lab, n.kv_mount, n.kv_path, {"username": username,
                                                      "password": password or _secrets.token_urlsafe(12)})


def kv_policy(lab: Any) -> str:
    n = lab.names
    return KV_POLICY.format(mount=n.kv_mount, path=n.kv_path)


def write_policy(lab: Any) -> Done:
    return vault.write_policy(lab, lab.names.kv_policy, kv_policy(lab))


def create_role(lab: Any) -> Done:
    n = lab.names
    return vault.create_kubernetes_role(
        lab, n.static_role, bound_service_account_names=[n.static_sa], bound_service_account_namespaces=[n.static_ns],
        policies=[n.kv_policy], ttl="24h", mount=n.k8s_auth_mount,
    )


def create_namespace(lab: Any) -> Done:
    n = lab.names
    k8s.ensure_namespace(lab.kube, n.static_ns)
    k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n.static_sa, "namespace": n.static_ns}})
    return Done(f"namespace {n.static_ns} with service account {n.static_sa}",
                f"kubectl create namespace {n.static_ns}\nkubectl create serviceaccount {n.static_sa} -n {n.static_ns}")


def vault_auth(lab: Any, role: str | None = None) -> dict:
    n = lab.names
    return vso.vault_auth(n.static_auth, n.static_ns, role=role or n.static_role, service_account=n.static_sa,
                          connection_ref=connection_ref(lab), mount=n.k8s_auth_mount)


def create_vault_auth(lab: Any) -> Done:
    return vso.apply(lab, vault_auth(lab))


def static_secret(lab: Any, refresh_after: str = "10s", instant_updates: bool = False, path: str | None = None) -> dict:
    n = lab.names
    return vso.vault_static_secret(n.static_vss, n.static_ns, mount=n.kv_mount, path=path or n.kv_path,
                                   vault_auth_ref=n.static_auth, destination=n.static_secret,
                                   refresh_after=refresh_after, instant_updates=instant_updates)


def create_static_secret(lab: Any, refresh_after: str = "10s") -> Done:
    n = lab.names
    done = vso.apply(lab, static_secret(lab, refresh_after))
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    done.what += f"; VSO synced it into Secret {n.static_ns}/{n.static_secret}"
    return done


def read_secret(lab: Any) -> dict[str, str]:
    n = lab.names
    return k8s.secret_data(lab.kube, n.static_secret, n.static_ns) or {}


def describe_secret(lab: Any, reveal: bool = False) -> Done:
    n = lab.names
    data = read_secret(lab)
    return Done(f"Secret {n.static_ns}/{n.static_secret} has keys {sorted(data)}",
                f"kubectl get secret {n.static_secret} -n {n.static_ns} -o json | jq '.data | map_values(@base64d)'",
                mask_mapping({k: v for k, v in data.items() if k != "_raw"}, reveal))


def deploy_app(lab: Any) -> Done:
    n = lab.names
    return app.deploy(lab, n.static_ns, n.static_secret, n.app)


def remove_app(lab: Any) -> Done:
    n = lab.names
    return app.remove(lab, n.static_ns, n.app)


def check(lab: Any, *, app_expected: bool = False) -> Check:
    n = lab.names
    kv = vault.kv_get(lab, n.kv_mount, n.kv_path).get("data") or {}
    sec = read_secret(lab)
    vss = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    va = vso.get(lab, "VaultAuth", n.static_auth, n.static_ns)
    results = [
        (f"Vault holds {n.kv_mount}/{n.kv_path} with username and password", {"username", "password"} <= set(kv),
         "write the secret with write_creds(lab) (vault kv put static/exampleapp/creds ...)"),
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
        except Exception:  # noqa: BLE001
            ok = False
        results.append(("the app's /secret shows the Secret's values", ok,
                        "deploy the app after the Secret exists; a pod reads env vars only when it starts"))
    return Check("static secret: Vault → VSO → Kubernetes Secret", results)
