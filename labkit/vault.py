"""Vault operations the lab teaches, named by Vault's own verbs and endpoints.

Each function is idempotent, calls one Vault endpoint through ``hvac`` (the
docstring names it), and returns a :class:`~labkit.display.Done` that shows
what happened and the equivalent ``vault`` command (``bao`` takes the same
arguments on the local lab).
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import hvac
import requests
from hvac import exceptions as hvexc

from .backends.contract import Lab
from .display import Done, mask
from .errors import VaultError


def client(lab: Lab) -> hvac.Client:
    """An authenticated hvac client for the lab's Vault; fails with a clear message."""
    addr, token = lab.vault_addr, lab.vault_token
    c = hvac.Client(url=addr, token=token, timeout=10)
    try:
        ok = isinstance(c.lookup_token(), dict)  # auth/token/lookup-self; an answer that is not JSON: not Vault
    except requests.exceptions.SSLError as exc:
        raise VaultError(
            f"Checked that Vault answers at {addr}: something listens there, but the TLS handshake failed ({exc}).",
            ["Check the scheme in VAULT_ADDR: the local lab's OpenBao speaks plain http://, not https://.",
             "For your own Vault over https, give it the CA that signed its certificate (VAULT_CACERT).",
             "Run `labkit env` for the lab's address."],
        ) from None
    except requests.exceptions.ConnectionError:
        raise VaultError(
            f"Checked that Vault answers at {addr}: nothing is listening there.",
            ["Start the lab: `labkit up` (or run notebook 00).", "Run `labkit status` to see whether OpenBao is up.",
             "If you use your own Vault, check VAULT_ADDR."],
        ) from None
    except requests.exceptions.RequestException as exc:
        raise VaultError(f"Checked that Vault answers at {addr}: the request failed ({exc}).",
                         ["Check VAULT_ADDR: scheme (http/https), host and port.", "Run `labkit status`.",
                          "Check a proxy is not intercepting loopback traffic (NO_PROXY=127.0.0.1)."]) from None
    except hvexc.VaultError:
        ok = False  # a refused token, or sealed, not initialised, not Vault at all: _not_usable says which
    if not ok:
        raise _not_usable(addr) or VaultError(
            f"Checked the Vault token against {addr} (auth/token/lookup-self): Vault refused it.",
            ["Use the lab's token: `eval \"$(labkit env)\"` sets VAULT_TOKEN.",
             "If Vault was reset (`labkit down --purge`), restart the notebook kernel to pick up the new token.",
             "For your own Vault, log in again and export a fresh VAULT_TOKEN."],
        )
    return c


def _not_usable(addr: str) -> VaultError | None:
    """Why ``addr`` refuses a token other than the token itself: it is not Vault, or it is sealed; else None."""
    try:
        r = requests.get(f"{addr}/v1/sys/health", timeout=5)
        health = r.json()
    except (requests.RequestException, ValueError):
        r, health = None, None
    if not isinstance(health, dict) or "sealed" not in health:
        answer = f"HTTP {r.status_code}, {r.headers.get('Content-Type') or 'no content type'}" if r is not None else "no answer"
        return VaultError(
            f"Checked that {addr} is a Vault server (GET /v1/sys/health): something answers there, but it is not Vault "
            f"({answer}).",
            ["Check VAULT_ADDR (host and port): it points at another program.", "Run `labkit env` for the lab's address.",
             "Run `labkit status` to see the port OpenBao listens on."],
        )
    if health.get("sealed"):
        return VaultError(
            f"Checked Vault at {addr} (sys/health): it is sealed, so it refuses every request.",
            ["On the local lab run `labkit up`: it unseals OpenBao with the key in the state directory.",
             "For your own Vault, unseal it: `vault operator unseal`.", "Run `labkit status` to check it is healthy again."],
        )
    if not health.get("initialized", True):
        return VaultError(
            f"Checked Vault at {addr} (sys/health): it is not initialised yet.",
            ["On the local lab run `labkit up`: it initialises OpenBao.", "For your own Vault, run `vault operator init`.",
             "Check VAULT_ADDR points at the Vault you meant."],
        )
    return None


def _vault_error(exc: Exception, what: str, fixes: list[str]) -> VaultError:
    return VaultError(f"{what}: Vault said {type(exc).__name__}: {str(exc).strip() or 'no message'}", fixes)


# -- secrets engines and auth methods ---------------------------------------------------------------
def enable_secrets_engine(lab: Lab, backend_type: str, path: str, options: dict[str, str] | None = None) -> Done:
    """POST /sys/mounts/:path (skipped when already enabled with that type)."""
    c = client(lab)
    mounts = c.sys.list_mounted_secrets_engines()["data"]
    key = path.strip("/") + "/"
    cmd = f"vault secrets enable -path={path}" + (" -version=2" if (options or {}).get("version") == "2" else "") + f" {backend_type}"
    if key in mounts:
        if mounts[key]["type"] != backend_type:
            raise VaultError(f"Checked the mount {key}: it exists with type {mounts[key]['type']}, not {backend_type}.",
                             [f"Disable it first: vault secrets disable {path}", "Pick another path.",
                              "Run the clean-up notebook to reset the lab."])
        return Done(f"the {backend_type} secrets engine is already enabled at {key}", cmd)
    c.sys.enable_secrets_engine(backend_type, path=path, options=options)
    if (backend_type == "kv" and (options or {}).get("version") == "2") or backend_type == "kv-v2":
        _wait_kv_v2_ready(c, path.strip("/"))
    return Done(f"enabled the {backend_type} secrets engine at {key}", cmd)


def _wait_kv_v2_ready(c: hvac.Client, mount: str, timeout: float = 15.0) -> None:
    """A new KV v2 mount first upgrades its storage and answers 400 meanwhile; wait until its config reads."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.secrets.kv.v2.read_configuration(mount_point=mount)
            return
        except hvexc.InvalidRequest:
            if time.monotonic() > deadline:
                raise VaultError(f"Checked the new KV v2 mount {mount}/: it still upgraded its storage after {timeout:.0f}s.",
                                 ["Wait a moment and run the cell again.", "Run `labkit status` to check Vault.",
                                  "Read Vault's log in the lab's logs/ folder (openbao.log)."]) from None
            time.sleep(0.2)


def enable_auth_method(lab: Lab, method_type: str, path: str | None = None) -> Done:
    """POST /sys/auth/:path (skipped when already enabled)."""
    c = client(lab)
    path = path or method_type
    cmd = "vault auth enable" + (f" -path={path}" if path != method_type else "") + f" {method_type}"
    if path.strip("/") + "/" in c.sys.list_auth_methods()["data"]:
        return Done(f"the {method_type} auth method is already enabled at auth/{path}/", cmd)
    c.sys.enable_auth_method(method_type, path=path)
    return Done(f"enabled the {method_type} auth method at auth/{path}/", cmd)


def configure_kubernetes_auth(lab: Lab, kubernetes_host: str, kubernetes_ca_cert: str, token_reviewer_jwt: str,
                              mount: str = "kubernetes") -> Done:
    """POST /auth/:mount/config."""
    client(lab).write(f"auth/{mount}/config", kubernetes_host=kubernetes_host, kubernetes_ca_cert=kubernetes_ca_cert,
                      token_reviewer_jwt=token_reviewer_jwt, disable_local_ca_jwt=True)
    return Done(
        f"configured auth/{mount} to review tokens at {kubernetes_host} with the token-reviewer JWT {mask(token_reviewer_jwt)}",
        f'vault write auth/{mount}/config token_reviewer_jwt="$TOKEN_REVIEW_JWT" kubernetes_host={kubernetes_host} '
        f'kubernetes_ca_cert="$KUBE_CA_CERT" disable_local_ca_jwt=true',
    )


def create_kubernetes_role(lab: Lab, name: str, *, bound_service_account_names: list[str],
                           bound_service_account_namespaces: list[str], policies: list[str], ttl: str = "24h",
                           audience: str | None = None, mount: str = "kubernetes", token_period: str | None = None) -> Done:
    """POST /auth/:mount/role/:name."""
    params: dict[str, Any] = {
        "bound_service_account_names": bound_service_account_names,
        "bound_service_account_namespaces": bound_service_account_namespaces,
        "token_policies": policies, "token_ttl": ttl,
    }
    if audience:
        params["audience"] = audience
    if token_period:
        params["token_period"] = token_period
    client(lab).write(f"auth/{mount}/role/{name}", **params)
    cmd = (f"vault write auth/{mount}/role/{name} bound_service_account_names={','.join(bound_service_account_names)} "
           f"bound_service_account_namespaces={','.join(bound_service_account_namespaces)} "
           f"token_policies={','.join(policies)} token_ttl={ttl}" + (f" audience={audience}" if audience else "")
           + (f" token_period={token_period}" if token_period else ""))
    return Done(f"wrote the kubernetes auth role {name} (policies: {', '.join(policies)})", cmd)


def read_kubernetes_role(lab: Lab, name: str, mount: str = "kubernetes") -> dict[str, Any]:
    """GET /auth/:mount/role/:name."""
    r = client(lab).read(f"auth/{mount}/role/{name}")
    return r["data"] if r else {}


def kubernetes_login(lab: Lab, role: str, jwt: str, mount: str = "kubernetes") -> dict[str, Any]:
    """POST /auth/:mount/login; raises :class:`VaultError` when Vault refuses."""
    c = hvac.Client(url=lab.vault_addr)
    try:
        return c.auth.kubernetes.login(role=role, jwt=jwt, mount_point=mount)["auth"]
    except hvexc.VaultError as exc:
        raise _vault_error(exc, f"Logged in to auth/{mount} with role {role}", [
            "Check the role's bound_service_account_names and bound_service_account_namespaces.",
            "Check the JWT belongs to that service account (`kubectl create token <sa> -n <ns>`).",
            "Check auth/kubernetes/config points at this cluster's API and CA."]) from None


# -- policies --------------------------------------------------------------------------------------------
def write_policy(lab: Lab, name: str, policy: str) -> Done:
    """PUT /sys/policies/acl/:name."""
    client(lab).sys.create_or_update_acl_policy(name=name, policy=policy)
    return Done(f"wrote the policy {name}", f"vault policy write {name} - <<EOF\n{policy.strip()}\nEOF")


def read_policy(lab: Lab, name: str) -> str:
    """GET /sys/policies/acl/:name."""
    try:
        return client(lab).sys.read_acl_policy(name)["data"]["policy"]
    except hvexc.InvalidPath:
        return ""


# -- KV v2 ------------------------------------------------------------------------------------------------
def kv_put(lab: Lab, mount: str, path: str, data: dict[str, str]) -> Done:
    """POST /:mount/data/:path (a new version)."""
    r = client(lab).secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)
    shown = " ".join(f"{k}={mask(v)}" for k, v in data.items())
    return Done(f"wrote version {r['data']['version']} of {mount}/{path}: {shown}",
                f"vault kv put {mount}/{path} " + " ".join(f"{k}=<{k}>" for k in data))


def kv_get(lab: Lab, mount: str, path: str) -> dict[str, Any]:
    """GET /:mount/data/:path; returns {} when missing."""
    try:
        return client(lab).secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)["data"]
    except hvexc.InvalidPath:
        return {}


# -- database secrets engine --------------------------------------------------------------------------------
def configure_postgres_connection(lab: Lab, *, name: str, host: str, port: int, username: str, password: str,
                                  allowed_roles: list[str], mount: str = "database") -> Done:
    """POST /:mount/config/:name with the postgresql-database-plugin."""
    url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/postgres?sslmode=disable"
    try:
        client(lab).write(f"{mount}/config/{name}", plugin_name="postgresql-database-plugin", connection_url=url,
                          username=username, password=password, allowed_roles=allowed_roles, verify_connection=True)
    except hvexc.VaultError as exc:
        raise _vault_error(exc, f"Configured {mount}/config/{name} to reach PostgreSQL at {host}:{port}", [
            "Check PostgreSQL is running: `labkit status`.", "Check the host and port Vault uses to reach it.",
            "Check the PostgreSQL admin user and password."]) from None
    return Done(f"configured {mount}/config/{name}: postgresql-database-plugin at {host}:{port} as {username}",
                f"vault write {mount}/config/{name} plugin_name=postgresql-database-plugin "
                f"connection_url='postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/postgres?sslmode=disable' "
                f"username={username} password=\"$PGPASSWORD\" allowed_roles={','.join(allowed_roles)}")


def create_database_role(lab: Lab, name: str, *, db_name: str, creation_statements: list[str],
                         revocation_statements: list[str], default_ttl: str, max_ttl: str, mount: str = "database") -> Done:
    """POST /:mount/roles/:name."""
    client(lab).write(f"{mount}/roles/{name}", db_name=db_name, creation_statements=creation_statements,
                      revocation_statements=revocation_statements, default_ttl=default_ttl, max_ttl=max_ttl)
    # The statements inline (each a separate value, as the API takes a list), so the command runs as shown.
    quoted = [f"creation_statements={shlex.quote(st)}" for st in creation_statements]
    quoted += [f"revocation_statements={shlex.quote(st)}" for st in revocation_statements]
    return Done(f"wrote the database role {name} (default_ttl={default_ttl}, max_ttl={max_ttl})",
                f"vault write {mount}/roles/{name} db_name={db_name} \\\n    " + " \\\n    ".join(quoted)
                + f" \\\n    default_ttl={default_ttl} max_ttl={max_ttl}")


def read_database_role(lab: Lab, name: str, mount: str = "database") -> dict[str, Any]:
    r = client(lab).read(f"{mount}/roles/{name}")
    return r["data"] if r else {}


def generate_credentials(lab: Lab, role: str, mount: str = "database") -> dict[str, Any]:
    """GET /:mount/creds/:role: a new PostgreSQL role and its lease."""
    r = client(lab).secrets.database.generate_credentials(name=role, mount_point=mount)
    return {"username": r["data"]["username"], "password": r["data"]["password"], "lease_id": r["lease_id"],
            "lease_duration": r["lease_duration"], "renewable": r["renewable"]}


# -- leases ---------------------------------------------------------------------------------------------------
def list_leases(lab: Lab, prefix: str) -> list[str]:
    """LIST /sys/leases/lookup/:prefix (lease ids under it)."""
    try:
        r = client(lab).list(f"sys/leases/lookup/{prefix.strip('/')}/")
    except hvexc.InvalidPath:
        return []
    return [f"{prefix.strip('/')}/{k}" for k in (r or {}).get("data", {}).get("keys", [])]


def read_lease(lab: Lab, lease_id: str) -> dict[str, Any]:
    """PUT /sys/leases/lookup."""
    return client(lab).sys.read_lease(lease_id)["data"]


def revoke_prefix(lab: Lab, prefix: str) -> Done:
    """PUT /sys/leases/revoke-prefix/:prefix."""
    n = len(list_leases(lab, prefix))
    client(lab).sys.revoke_prefix(prefix)
    return Done(f"revoked {n} lease(s) under {prefix}", f"vault lease revoke -prefix {prefix}")


# -- transit -----------------------------------------------------------------------------------------------------
def create_transit_key(lab: Lab, name: str, mount: str = "transit") -> Done:
    """POST /:mount/keys/:name."""
    client(lab).secrets.transit.create_key(name=name, mount_point=mount)
    return Done(f"created the transit key {name} in {mount}/", f"vault write -f {mount}/keys/{name}")


# -- events (instant updates) ---------------------------------------------------------------------------------------
def server_info(lab: Lab) -> dict[str, Any]:
    """GET /sys/health and /sys/license/status: product, version, enterprise."""
    health = requests.get(f"{lab.vault_addr}/v1/sys/health", timeout=5).json()
    version = str(health.get("version", ""))
    product = "openbao" if "openbao" in json.dumps(health).lower() or _is_openbao(lab) else "vault"
    enterprise = "+ent" in version or version.endswith("-ent") or "ent" in version.split("+")[-1:]
    return {"product": product, "version": version, "enterprise": bool(enterprise) and product == "vault"}


def _is_openbao(lab: Lab) -> bool:
    """OpenBao's ``sys/seal-status`` names its build time ``commit_date`` where Vault's says ``build_date``: that
    field, not the address or the backend, tells them apart (the external backend may sit on either)."""
    try:
        r = requests.get(f"{lab.vault_addr}/v1/sys/seal-status", timeout=5).json()
        return ("commit_date" in r and "build_date" not in r) or lab.backend == "local"
    except (requests.RequestException, ValueError):
        return False


def _version_tuple(v: str) -> tuple[int, ...]:
    core = v.lstrip("v").split("+")[0].split("-")[0]
    return tuple(int(x) for x in core.split(".")[:3] if x.isdigit())


def events_supported(lab: Lab) -> tuple[bool, str]:
    """Whether this Vault can push event notifications to VSO, and why (not)."""
    info = server_info(lab)
    if info["product"] == "openbao":
        return False, (f"This Vault API is OpenBao {info['version']}, which has no event notifications "
                       "(sys/events/subscribe); VSO's instant updates need Vault Enterprise 1.16.3 or later.")
    if not info["enterprise"]:
        return False, (f"This is Vault Community {info['version']}; event notifications need Vault Enterprise "
                       "1.16.3 or later.")
    if _version_tuple(info["version"]) < (1, 16, 3):
        return False, f"This is Vault Enterprise {info['version']}; instant updates need 1.16.3 or later."
    return True, f"Vault Enterprise {info['version']} supports event notifications."
