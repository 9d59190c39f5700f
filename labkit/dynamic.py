"""Stage 3: dynamic PostgreSQL credentials from Vault's database secrets engine,
synced by a VaultDynamicSecret that restarts the app when they rotate.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import time
from typing import Any

from . import app, k8s, pg, vault, vso
from ._duration import duration_seconds
from ._stage import Stage, exercise
from ._teardown import delete_namespace, leases, vault_quiet
from .backends.contract import Lab
from .display import Check, Done, mask, mask_mapping

CREATION = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
]
REVOCATION = [
    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{{name}}\";",
    "DROP ROLE IF EXISTS \"{{name}}\";",
]
DB_POLICY = """path "{mount}/creds/{role}" {{
  capabilities = ["read"]
}}

# VSO revokes the lease with this policy's own token when the VaultDynamicSecret is deleted (revoke: true).
# Without it Vault answers 403 and the credentials stay valid until max_ttl.
path "sys/leases/revoke" {{
  capabilities = ["update"]
}}
"""


def short_user(username: str) -> str:
    """A dynamic PostgreSQL role name, shortened so the full name is never printed."""
    return username[:16] + "…" if len(username) > 16 else mask(username)


def enable_database(lab: Lab) -> Done:
    return vault.enable_secrets_engine(lab, "database", lab.names.db_mount)


def configure_connection(lab: Lab) -> Done:
    n = lab.names
    host, port = lab.pg_address_for_vault
    return vault.configure_postgres_connection(
        lab, name=n.db_connection, host=host, port=port, username=lab.pg_admin_user, password=lab.pg_admin_password,
        allowed_roles=[n.db_role], mount=n.db_mount,
    )


def create_db_role(lab: Lab, default_ttl: str = "1m", max_ttl: str = "3m") -> Done:
    n = lab.names
    return vault.create_database_role(lab, n.db_role, db_name=n.db_connection, creation_statements=CREATION,
                                      revocation_statements=REVOCATION, default_ttl=default_ttl, max_ttl=max_ttl,
                                      mount=n.db_mount)


def generate_test_credentials(lab: Lab) -> Done:
    """Ask Vault for one set of credentials, show the role it created in PostgreSQL, and revoke it again."""
    n = lab.names
    creds = vault.generate_credentials(lab, n.db_role, mount=n.db_mount)
    roles = [r["role"] for r in pg.dynamic_roles(lab)]
    ok, who = pg.can_login(lab, creds["username"], creds["password"])
    vault.client(lab).sys.revoke_lease(creds["lease_id"])
    return Done(
        "Vault created a PostgreSQL role on demand, it could log in, and revoking its lease dropped it",
        f"vault read {n.db_mount}/creds/{n.db_role}",
        {"username": short_user(creds["username"]), "password": mask(creds["password"]),
         "lease": f"{creds['lease_id'].rsplit('/', 1)[0]}/… ({creds['lease_duration']}s, renewable={creds['renewable']})",
         "role in pg_roles": creds["username"] in roles, "login works": ok and who == creds["username"]},
    )


def db_policy(lab: Lab) -> str:
    n = lab.names
    return DB_POLICY.format(mount=n.db_mount, role=n.db_role)


def write_policy(lab: Lab) -> Done:
    return vault.write_policy(lab, lab.names.db_policy, db_policy(lab))


def create_role(lab: Lab) -> Done:
    n = lab.names
    return vault.create_kubernetes_role(
        lab, n.dynamic_role, bound_service_account_names=[n.dynamic_sa], bound_service_account_namespaces=[n.dynamic_ns],
        policies=[n.db_policy], ttl="24h", mount=n.k8s_auth_mount,
    )


def create_namespace(lab: Lab) -> Done:
    n = lab.names
    k8s.ensure_namespace(lab.kube, n.dynamic_ns)
    k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": n.dynamic_sa, "namespace": n.dynamic_ns}})
    return Done(f"namespace {n.dynamic_ns} with service account {n.dynamic_sa}",
                f"kubectl create namespace {n.dynamic_ns}\nkubectl create serviceaccount {n.dynamic_sa} -n {n.dynamic_ns}")


def create_vault_auth(lab: Lab) -> Done:
    n = lab.names
    return vso.apply(lab, vso.vault_auth(n.dynamic_auth, n.dynamic_ns, role=n.dynamic_role, service_account=n.dynamic_sa,
                                         connection_ref=n.connection_ref, mount=n.k8s_auth_mount))


def dynamic_secret(lab: Lab, renewal_percent: int = 67, ttl_label: str = "") -> dict:
    """The VaultDynamicSecret; ``ttl_label`` records the role's TTLs on the destination Secret.

    Changing the label changes the resource's spec, and VSO answers a spec change
    by fetching fresh credentials: that is how the rotation stage makes new TTLs
    take effect at once.
    """
    n = lab.names
    return vso.vault_dynamic_secret(
        n.dynamic_vds, n.dynamic_ns, mount=n.db_mount, path=f"creds/{n.db_role}", vault_auth_ref=n.dynamic_auth,
        destination=n.dynamic_secret, renewal_percent=renewal_percent,
        rollout_restart_targets=[{"kind": "Deployment", "name": n.app}],
        destination_labels={"vsolab.dev/ttl": ttl_label} if ttl_label else None,
    )


def create_dynamic_secret(lab: Lab, renewal_percent: int = 67) -> Done:
    n = lab.names
    done = vso.apply(lab, dynamic_secret(lab, renewal_percent))
    vso.wait_synced(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    done.what += f"; VSO wrote Secret {n.dynamic_ns}/{n.dynamic_secret}"
    return done


def read_secret(lab: Lab) -> dict[str, str]:
    n = lab.names
    return k8s.secret_data(lab.kube, n.dynamic_secret, n.dynamic_ns) or {}


def describe_secret(lab: Lab, reveal: bool = False) -> Done:
    n = lab.names
    data = read_secret(lab)
    shown = mask_mapping({k: v for k, v in data.items() if k != "_raw"}, reveal)
    if "username" in data and not reveal:
        shown["username"] = short_user(data["username"])
    return Done(f"Secret {n.dynamic_ns}/{n.dynamic_secret} has keys {sorted(data)}",
                f"kubectl get secret {n.dynamic_secret} -n {n.dynamic_ns} -o json | jq '.data | map_values(@base64d)'", shown)


def lease(lab: Lab) -> dict[str, Any]:
    """The VaultDynamicSecret's view of its lease: id, duration, last renewal."""
    n = lab.names
    obj = vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns) or {}
    st = obj.get("status") or {}
    return {"lease_id": (st.get("secretLease") or {}).get("id", ""), "duration": (st.get("secretLease") or {}).get("duration"),
            "last_renewal": st.get("lastRenewalTime"), "generation": st.get("lastGeneration")}


def wait_steady(lab: Lab, quiet: float = 3.0, timeout: float = 90) -> None:
    """Wait until the lease has not changed for ``quiet`` seconds and the app runs exactly one Ready pod."""
    n = lab.names
    last, since = None, time.monotonic()

    def probe() -> bool:
        nonlocal last, since
        lid = lease(lab)["lease_id"]
        if lid != last:
            last, since = lid, time.monotonic()
        all_pods = k8s.pods(lab.kube, n.dynamic_ns, f"app={n.app}")
        ready = k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}")
        return time.monotonic() - since >= quiet and len(all_pods) == len(ready) <= 1

    k8s.wait_for("the dynamic secret and the app to settle", probe, timeout, interval=0.3)


def app_pods(lab: Lab) -> list[str]:
    """The names of the app's pods (a restart shows as a new name)."""
    n = lab.names
    return sorted(p.metadata.name for p in k8s.pods(lab.kube, n.dynamic_ns, f"app={n.app}"))


def restarted(lab: Lab, pods_before: list[str], timeout: float = 30) -> bool:
    """Whether a Ready app pod exists that was not there before (waits up to ``timeout`` for the rollout)."""
    n = lab.names
    deadline = time.monotonic() + timeout
    while True:
        ready = {p.metadata.name for p in k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}")}
        if ready - set(pods_before):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def deploy_app(lab: Lab) -> Done:
    n = lab.names
    return app.deploy(lab, n.dynamic_ns, n.dynamic_secret, n.app)


def app_status(lab: Lab) -> Done:
    n = lab.names
    code, body = app.call(lab, n.dynamic_ns, "/status", n.app)
    body = dict(body)
    if "connected_as" in body:
        body["connected_as"] = short_user(body["connected_as"])
    if lab.backend == "local":  # pods are local processes: the pod's own loopback port, no port-forward
        cmd = f"curl -s {lab.app_url(n.dynamic_ns, n.app)}/status"
    else:
        cmd = f"kubectl port-forward -n {n.dynamic_ns} deploy/{n.app} 8080:8080 & sleep 2; curl -s localhost:8080/status; kill %1"
    return Done(f"/status answered {code}", cmd, body)


def check(lab: Lab) -> Check:
    n = lab.names
    vds = vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    sec = read_secret(lab)
    login_ok, _ = pg.can_login(lab, sec["username"], sec["password"]) if sec.get("username") else (False, "")
    try:
        code, body = app.call(lab, n.dynamic_ns, "/status", n.app, timeout=10)
        app_ok = code == 200 and body.get("connected_as") == sec.get("username")
    except Exception:
        app_ok = False
    return Check("dynamic secret: Vault → PostgreSQL role → VSO → Secret → app", [
        (f"VaultDynamicSecret {n.dynamic_ns}/{n.dynamic_vds} is synced", vso.is_synced(vds),
         vso.hint_from_events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)),
        (f"Secret {n.dynamic_ns}/{n.dynamic_secret} holds a working PostgreSQL login", login_ok,
         "the credentials in the Secret cannot log in: the lease may have expired, or the database role's statements failed"),
        ("the app's /status connects with those credentials", app_ok,
         "deploy the app (deploy_app) after the VaultDynamicSecret; check DB_HOST/DB_PORT and the pod's log"),
    ])


# -- exercises (notebook 03) ------------------------------------------------------------------------------------------

def _recorded(ns: dict[str, Any], *names: str) -> tuple[bool, str]:
    missing = [x for x in names if not ns.get(x)]
    return not missing, f"run the cell that records {', '.join(missing)} first (just above the exercise)" if missing else ""


@exercise(
    "secret-label",
    "Add the label team=hashicups to VSO's Secret through the VaultDynamicSecret's spec.destination.labels; "
    "predict the side effects (a new lease? a restart?).",
    ["`kubectl patch vaultdynamicsecret vault-dynamic-secret -n ${PREFIX}dynamic-exampleapp --type merge -p '…'` "
     "changes one field; re-applying the whole manifest with the label added works too.",
     'The patch is {"spec":{"destination":{"labels":{"team":"hashicups"}}}}.',
     "Any spec change bumps metadata.generation; VSO then syncs with reason ResourceUpdated: a new lease, the Secret "
     "rewritten, the app restarted. The old lease is not revoked: `vault list sys/leases/lookup/${PREFIX}database/"
     "creds/vault-role-dynamic-exampleapp/` shows both until the old one's TTL ends."])
def _secret_label(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    from kubernetes import client as kclient
    from kubernetes.client.exceptions import ApiException

    n = lab.names
    try:
        meta = kclient.CoreV1Api(lab.kube).read_namespaced_secret(n.dynamic_secret, n.dynamic_ns).metadata
        assert meta is not None  # the API server sets it
        labels = meta.labels or {}
    except ApiException as exc:
        if exc.status != 404:
            raise
        labels = {}
    ok, note = _recorded(ns, "lease_before", "pods_before")
    now = lease(lab)["lease_id"]
    return [
        (f"the Secret {n.dynamic_secret} carries the label team=hashicups", labels.get("team") == "hashicups",
         "set spec.destination.labels in the VaultDynamicSecret: VSO copies them onto the Secret it writes"),
        ("VSO fetched a new lease for the changed spec", ok and bool(now) and now != ns["lease_before"],
         note or "a spec change makes VSO sync anew; check `kubectl describe vaultdynamicsecret …` for SecretSynced"),
        ("the app restarted (a new Ready pod)", ok and restarted(lab, ns["pods_before"]),
         note or "rolloutRestartTargets names the Deployment; look for RolloutRestart events"),
    ]


@exercise(
    "role-ttl",
    "Give the database role a default_ttl of 2m, keeping its statements and max_ttl; predict how long a new "
    "credential lasts and what VSO's current lease gets at its next renewal.",
    ["`vault write ${PREFIX}database/roles/vault-role-dynamic-exampleapp …` replaces the whole role: copy the command "
     "from the role section and change default_ttl.",
     "Keep max_ttl=$MAX_TTL. A credential lasts min(default_ttl, max_ttl): read one with "
     "`vault read -format=json …/creds/… | python3 -c '…[\"lease_duration\"]'` (never print the password).",
     "VSO's lease keeps its duration at renewals (VSO asks for the duration it has); the new default_ttl applies from "
     "VSO's next new lease."])
def _role_ttl(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    role = vault.read_database_role(lab, n.db_role, mount=n.db_mount)
    create = " ".join(role.get("creation_statements") or []).upper()
    revoke = " ".join(role.get("revocation_statements") or []).upper()
    max_ttl = duration_seconds(str(ns.get("MAX_TTL", "3m")))
    return [
        ("default_ttl is 2m (120 s)", int(role.get("default_ttl") or 0) == 120,
         "vault write …/roles/vault-role-dynamic-exampleapp … default_ttl=2m"),
        (f"max_ttl is still {ns.get('MAX_TTL', '3m')} ({max_ttl:.0f} s)", int(role.get("max_ttl") or 0) == int(max_ttl),
         "pass max_ttl=$MAX_TTL again: writing a role replaces every field"),
        ("the creation statements still create a login and grant SELECT", "CREATE ROLE" in create and "GRANT SELECT" in create,
         "pass both creation_statements=… arguments again"),
        ("the revocation statements still drop the login", "DROP ROLE" in revoke,
         "pass both revocation_statements=… arguments again"),
    ]


# -- undo ---------------------------------------------------------------------------------------------------------

def undo(lab: Lab, wait: float = 15.0) -> Done:
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
            while held in leases(c, prefix) and time.monotonic() < deadline:
                time.sleep(0.3)
            refused = [m for kind, reason, m in vso.events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
                       if kind == "Warning" and reason == "SecretLeaseRevoke"]
            if held not in leases(c, prefix):
                vso_said = "VSO revoked its lease"
            elif refused:
                vso_said = "VSO could not revoke its lease (" + " ".join(refused[-1].split())[:200] + ")"
            else:
                vso_said = f"VSO did not revoke its lease within {wait:.0f}s"
    delete_namespace(lab, n.dynamic_ns)
    left = leases(c, prefix) if engine else []
    if engine:
        c.sys.revoke_prefix(prefix.rstrip("/"))
        c.sys.disable_secrets_engine(n.db_mount)  # revokes every remaining lease of the engine
    vault_quiet(c.auth.kubernetes.delete_role, n.dynamic_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.db_policy)
    swept = (f"the sweep revoked {len(left)} older lease{'s' if len(left) != 1 else ''} (earlier rotations or spec "
             "changes: VSO revokes only the one it holds)") if left else "the sweep found no lease left"
    return Done(f"deleted {n.dynamic_ns}; {vso_said}; {swept}; disabled {n.db_mount}/",
                f"kubectl delete vaultdynamicsecret {n.dynamic_vds} -n {n.dynamic_ns}\nkubectl delete namespace {n.dynamic_ns}\n"
                f"vault list sys/leases/lookup/{prefix}\nvault lease revoke -prefix {prefix}\nvault secrets disable {n.db_mount}")


STAGE = Stage(3, "03-dynamic-secrets", "Dynamic secrets: PostgreSQL credentials → VaultDynamicSecret → app",
              undo=undo, check=check, exercises=(_secret_label, _role_ttl))
