"""Stage 10 (notebook 10, beyond the tutorial): Database static roles: one PostgreSQL user, its password rotated.

Vault's database engine owns the password of one existing PostgreSQL user and replaces it every ``rotation_period``;
a VaultDynamicSecret with ``allowStaticCreds: true`` syncs ``static-creds/<role>`` into a Secret and restarts the
app when the password changed. This module measures and checks; the notebook's step cells do the work.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from . import app, k8s, pg, vault, vso
from ._duration import duration_seconds
from ._lease import parse_time
from ._stage import Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from .backends.contract import Lab
from .display import Check, Done

#: the VaultDynamicSecret of exercise 2 (no ``allowStaticCreds``) and the Secret it writes
NO_FLAG_VDS, NO_FLAG_SECRET = "no-static-flag", "no-static-flag-creds"


def fingerprint(value: str) -> str:
    """The first 12 hex digits of a value's SHA-256: enough to tell two passwords apart, nothing to log in with."""
    return hashlib.sha256(value.encode()).hexdigest()[:12] if value else "(none)"


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "never"


def read_secret(lab: Lab, name: str | None = None) -> dict[str, str]:
    n = lab.names
    return k8s.secret_data(lab.kube, name or n.staticrole_secret, n.staticrole_ns) or {}


def vds_meta(lab: Lab, name: str | None = None) -> dict[str, Any]:
    """The VaultDynamicSecret's ``status.staticCredsMetaData`` (``lastVaultRotation``, ``rotationPeriod``, ``ttl``)."""
    n = lab.names
    obj = vso.get(lab, "VaultDynamicSecret", name or n.staticrole_vds, n.staticrole_ns) or {}
    return dict((obj.get("status") or {}).get("staticCredsMetaData") or {})


def vault_rotation(lab: Lab) -> tuple[float | None, int]:
    """Vault's own view, with the admin token: (``last_vault_rotation`` as unix time, ``ttl`` in seconds)."""
    n = lab.names
    data = (vault.client(lab).read(f"{n.staticrole_mount}/static-creds/{n.staticrole_db_role}") or {}).get("data") or {}
    return parse_time(data.get("last_vault_rotation")), int(data.get("ttl") or 0)


def app_pods(lab: Lab, ready: bool = False) -> list[str]:
    n = lab.names
    pods = (k8s.ready_pods if ready else k8s.pods)(lab.kube, n.staticrole_ns, f"app={n.app}")
    return sorted(p.metadata.name for p in pods)


def app_password(lab: Lab) -> str:
    """The password the app's process started with (its ``/secret``), kept in memory only."""
    n = lab.names
    code, body = app.call(lab, n.staticrole_ns, "/secret", n.app, timeout=10)
    return str(body.get("password") or "") if code == 200 else ""


@dataclass(frozen=True)
class Snapshot:
    """What is in use at one moment. The password stays in this kernel (``repr`` never shows it)."""

    rotation: float | None
    ttl: int
    pods: tuple[str, ...]
    password: str = field(repr=False)

    def __str__(self) -> str:
        return (f"Vault's last rotation {_clock(self.rotation)} (next in {self.ttl}s) · Secret password "
                f"sha256 {fingerprint(self.password)}… · app pods: {', '.join(p[-5:] for p in self.pods) or 'none'}")


def snapshot(lab: Lab) -> Snapshot:
    rotation, ttl = vault_rotation(lab)
    return Snapshot(rotation, ttl, tuple(app_pods(lab)), read_secret(lab).get("password", ""))


def rotation_wait(rotation_period: str, live_seconds: float = 0) -> float:
    """How long to wait for one rotation to go all the way through: two periods (Vault rotates up to a few seconds
    after the period ends; VSO reads ``ttl`` + 0.5 s after its last sync and retries for up to 10 s) and 20 s for
    the app's rollout, but never less than the notebook's ``LIVE_SECONDS``."""
    return max(float(live_seconds), 2 * duration_seconds(rotation_period) + 20)


def _rotated(lab: Lab, before: Snapshot) -> dict[str, Any]:
    """The parts of a rotation seen so far since ``before``."""
    rotation, _ = vault_rotation(lab)
    meta, secret = vds_meta(lab), read_secret(lab).get("password", "")
    new_pods = set(app_pods(lab, ready=True)) - set(before.pods)
    return {"vault": rotation if rotation and before.rotation and rotation > before.rotation else None,
            "vso": float(meta.get("lastVaultRotation") or 0) > (before.rotation or 0) + 0.999,
            "secret": bool(secret) and secret != before.password, "pod": bool(new_pods)}


def wait_rotation(lab: Lab, before: Snapshot, timeout: float) -> Done:
    """Wait until Vault rotated after ``before``, VSO wrote the new password and a new app pod is Ready; say when."""
    start = time.time()
    seen: dict[str, float | None] = {"secret": None, "pod": None}
    state: dict[str, Any] = {}

    def probe() -> bool:
        nonlocal state
        state = _rotated(lab, before)
        for part in seen:
            if state[part] and seen[part] is None:
                seen[part] = time.time()
        return bool(state["vault"] and state["vso"] and state["secret"] and state["pod"])

    k8s.wait_for("a rotation to reach Vault, VSO's Secret and the app", probe, timeout, interval=0.3,
                 hint="check the VaultDynamicSecret's events (`kubectl describe vaultdynamicsecret "
                      f"{lab.names.staticrole_vds} -n {lab.names.staticrole_ns}`) and the static role's rotation_period")
    at = state["vault"]
    rel = lambda t: f"{max(0.0, t - at):.1f}s after Vault's rotation" if t and t >= start - 0.5 else "before this cell ran"
    n = lab.names
    return Done(f"Vault rotated the password at {_clock(at)}, {at - start:+.0f}s from when this cell started waiting",
                f"kubectl get vaultdynamicsecret {n.staticrole_vds} -n {n.staticrole_ns} "
                "-o jsonpath='{.status.staticCredsMetaData}'",
                {"Secret rewritten by VSO": rel(seen["secret"]), "new app pod Ready": rel(seen["pod"])})


def compare_logins(lab: Lab, before: Snapshot) -> Done:
    """Log in with the password the Secret held before and with the one it holds now (neither is printed)."""
    n = lab.names
    user, now = n.staticrole_db_user, read_secret(lab).get("password", "")
    old_ok, _ = pg.can_login(lab, user, before.password) if before.password else (False, "")
    new_ok, who = pg.can_login(lab, user, now) if now else (False, "")
    return Done(f"PostgreSQL logins as {user}", "", {
        "the password the Secret held before": "accepted (no rotation yet)" if old_ok else "refused",
        "the password the Secret holds now": f"accepted, logged in as {who}" if new_ok else "refused"})


def app_status(lab: Lab) -> Done:
    n = lab.names
    code, body = app.call(lab, n.staticrole_ns, "/status", n.app)
    shown = {k: body[k] for k in ("status", "connected_as") if k in body} or {"error": body.get("error", "")}
    return Done(f"/status answered {code}", f"curl -s {lab.app_url(n.staticrole_ns, n.app)}/status"
                if lab.backend == "local" else f"kubectl port-forward -n {n.staticrole_ns} deploy/{n.app} 8080:8080", shown)


def check(lab: Lab, before: Snapshot | None = None, settle: float = 15.0) -> Check:
    """The chain Vault → PostgreSQL → VSO → Secret → app, and (given ``before``) that a rotation went through it.

    A check that lands on a rotation (Vault rotated, VSO reads about a second later, the app restarts) is read again
    for up to ``settle`` seconds: VSO follows Vault within its 10 s retry window."""
    deadline = time.monotonic() + settle
    while True:
        result = _check(lab, before)
        if result.passed or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


def _check(lab: Lab, before: Snapshot | None) -> Check:
    n = lab.names
    vds = vso.get(lab, "VaultDynamicSecret", n.staticrole_vds, n.staticrole_ns)
    sec = read_secret(lab)
    rotation, _ = vault_rotation(lab)
    meta = vds_meta(lab)
    login_ok, _ = pg.can_login(lab, n.staticrole_db_user, sec["password"]) if sec.get("password") else (False, "")
    try:
        app_ok = bool(sec.get("password")) and app_password(lab) == sec["password"]
    except Exception:
        app_ok = False
    results = [
        (f"VaultDynamicSecret {n.staticrole_ns}/{n.staticrole_vds} is synced with allowStaticCreds",
         vso.is_synced(vds) and bool(((vds or {}).get("spec") or {}).get("allowStaticCreds")),
         vso.hint_from_events(lab, "VaultDynamicSecret", n.staticrole_vds, n.staticrole_ns)
         or "apply the VaultDynamicSecret with allowStaticCreds: true"),
        ("VSO has seen Vault's latest rotation", bool(rotation) and int(meta.get("lastVaultRotation") or 0) == int(rotation or 0),
         "VSO reads again ttl + 0.5 s after its last sync; wait for it, or look at the VaultDynamicSecret's events"),
        (f"the Secret's password logs in to PostgreSQL as {n.staticrole_db_user}", login_ok,
         "the Secret is older than Vault's last rotation, or the static role's user does not exist"),
        ("the app runs with the Secret's current password (its /secret)", app_ok,
         "rolloutRestartTargets must name the Deployment; VSO restarts it only when the password changed"),
    ]
    if before is not None:
        old_ok, _ = pg.can_login(lab, n.staticrole_db_user, before.password) if before.password else (True, "")
        results += [
            ("Vault rotated the password since the snapshot, and PostgreSQL refuses the old one",
             bool(rotation and before.rotation and rotation > before.rotation) and not old_ok,
             "wait for a rotation (wait_rotation above) before checking"),
            ("the app restarted after the rotation (a Ready pod that was not there before)",
             bool(set(app_pods(lab, ready=True)) - set(before.pods)),
             "VSO restarts the Deployment after it writes a new password; check RolloutRestart events"),
        ]
    return Check("static role: Vault → PostgreSQL user → VSO (allowStaticCreds) → Secret → app", results)


# -- exercises (notebook 10) ------------------------------------------------------------------------------------------

def _snap(ns: dict[str, Any], name: str) -> tuple[Snapshot | None, str]:
    s = ns.get(name)
    return (s, "") if isinstance(s, Snapshot) else (None, f"run the cell that records {name} first (just above the exercise)")


@exercise(
    "rotate-now",
    "Rotate the static role's password now with rotate-role, and time how long VSO takes to pick it up.",
    ["`vault write -f ${PREFIX}database-static/rotate-role/exampleapp-static` rotates at once (-f: no body).",
     "Poll `kubectl get vaultdynamicsecret vault-static-role-secret -n ${PREFIX}static-role-exampleapp -o jsonpath="
     "'{.status.staticCredsMetaData.lastVaultRotation}'` until it changes.",
     "VSO does not watch Vault: it reads again ttl + 0.5 s after its last sync, so a manual rotation is seen at that "
     "already scheduled read, up to one ttl later. Vault's next rotation then counts from your manual one."])
def _rotate_now(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    deadline = time.monotonic() + 12  # a check that lands on Vault's next rotation waits for VSO to follow it
    while True:
        results = _rotate_now_once(lab, ns)
        if all(ok for _, ok, _ in results) or time.monotonic() > deadline:
            return results
        time.sleep(1.0)


def _rotate_now_once(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    before, note = _snap(ns, "rotate_before")
    rotation, _ = vault_rotation(lab)
    meta, sec = vds_meta(lab), read_secret(lab).get("password", "")
    n = lab.names
    rotated = before is not None and bool(rotation and before.rotation and rotation > before.rotation)
    picked = rotated and int(meta.get("lastVaultRotation") or 0) == int(rotation or 0) and sec != (before.password if before else "")
    login_ok, _ = pg.can_login(lab, n.staticrole_db_user, sec) if sec else (False, "")
    restarted = before is not None and bool(set(app_pods(lab, ready=True)) - set(before.pods))
    return [
        ("Vault rotated the password after rotate_before was recorded", rotated,
         note or "vault write -f ${PREFIX}database-static/rotate-role/exampleapp-static"),
        ("VSO picked the new password up (lastVaultRotation and the Secret follow Vault)", picked and login_ok,
         note or "wait for VSO's next scheduled read: up to the ttl it saw at its last sync, plus 0.5 s"),
        ("the app restarted with it", restarted, note or "kubectl rollout status deployment/hashicups-exampleapp -n …"),
    ]


@exercise(
    "no-static-flag",
    "Sync the same path with a VaultDynamicSecret without allowStaticCreds; see that it syncs once and goes stale.",
    ["Copy the VaultDynamicSecret manifest, name it no-static-flag, set destination.name: no-static-flag-creds, and "
     "leave out allowStaticCreds and rolloutRestartTargets.",
     "Its SecretSynced event says horizon=0s: the answer has no lease duration and the resource no refreshAfter, so "
     "VSO schedules no next read. Its status's staticCredsMetaData stays all zeros.",
     "Wait for one rotation (`vault read …/static-creds/exampleapp-static` shows ttl), then compare "
     "`kubectl get secret … -o jsonpath='{.data.password}' | sha256sum` for both Secrets."])
def _no_static_flag(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    obj = vso.get(lab, "VaultDynamicSecret", NO_FLAG_VDS, n.staticrole_ns)
    spec = (obj or {}).get("spec") or {}
    stale = read_secret(lab, NO_FLAG_SECRET)
    synced_at = float(((obj or {}).get("status") or {}).get("lastRenewalTime") or 0)
    rotation, _ = vault_rotation(lab)
    old_ok, _ = pg.can_login(lab, n.staticrole_db_user, stale["password"]) if stale.get("password") else (True, "")
    no_meta = not int(vds_meta(lab, NO_FLAG_VDS).get("lastVaultRotation") or 0)  # VSO writes the struct, all zeros
    return [
        (f"VaultDynamicSecret {NO_FLAG_VDS} reads {spec.get('path', 'static-creds/…')} without allowStaticCreds",
         obj is not None and not spec.get("allowStaticCreds") and str(spec.get("path", "")).startswith("static-creds/"),
         f"apply a VaultDynamicSecret named {NO_FLAG_VDS} in {n.staticrole_ns}, path static-creds/exampleapp-static"),
        ("it synced once, and VSO recorded no static-creds metadata", vso.is_synced(obj) and bool(stale)
         and no_meta, vso.hint_from_events(lab, "VaultDynamicSecret", NO_FLAG_VDS, n.staticrole_ns)
         or f"destination.name: {NO_FLAG_SECRET}, create: true"),
        ("Vault rotated after that sync, and its Secret was not updated: PostgreSQL refuses its password",
         bool(rotation and synced_at and rotation > synced_at) and not old_ok,
         "wait for the next rotation (up to one rotation_period), then check again"),
    ]


# -- undo ---------------------------------------------------------------------------------------------------------

def undo(lab: Lab) -> Done:
    """Remove the namespace (VSO's resources first), the auth role, the policy, the static role and its mount, and
    the PostgreSQL user. Deleting the static role first stops Vault's rotations; its user is dropped last."""
    n = lab.names
    c = vault.client(lab)
    delete_namespace(lab, n.staticrole_ns)
    vault_quiet(c.auth.kubernetes.delete_role, n.staticrole_auth_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.staticrole_policy)
    if f"{n.staticrole_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        vault_quiet(c.delete, f"{n.staticrole_mount}/static-roles/{n.staticrole_db_role}")
        c.sys.disable_secrets_engine(n.staticrole_mount)
    pg.drop_user(lab, n.staticrole_db_user)
    q = '"' + n.staticrole_db_user + '"'
    return Done(f"deleted {n.staticrole_ns}, the static role, {n.staticrole_mount}/ and the PostgreSQL user "
                f"{n.staticrole_db_user}",
                f"kubectl delete namespace {n.staticrole_ns}\n"
                f"vault delete {n.staticrole_mount}/static-roles/{n.staticrole_db_role}\n"
                f"vault secrets disable {n.staticrole_mount}\n"
                f"psql -c 'REASSIGN OWNED BY {q} TO CURRENT_USER; DROP OWNED BY {q}; DROP ROLE {q}'")


STAGE = Stage(10, "10-database-static-roles", "Database static roles: one PostgreSQL user, its password rotated",
              undo=undo, check=check, exercises=(_rotate_now, _no_static_flag), requires=(1,))
