"""Stage 4: watch VSO renew a lease at ``renewalPercent``, rotate it at the first
renewal Vault cuts short (before ``max_ttl``), restart the app with the new
credentials, and Vault drop the old PostgreSQL role at ``max_ttl``.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import app, dynamic, k8s, pg, vault, vso
from ._lease import FIRST, ROTATION, Event, LeaseTracker, Sighting, parse_time
from ._livemodel import ROLE_NUMBERS, renewal_window
from ._stage import Stage, exercise, nothing_to_undo
from .backends.contract import Lab
from .display import Check, Done


def use_short_ttls(lab: Lab, default_ttl: str, max_ttl: str, renewal_percent: int = 67) -> Done:
    """Shorten the database role's TTLs, then re-apply the VaultDynamicSecret so VSO
    fetches fresh credentials under them (a spec change makes VSO sync anew)."""
    n = lab.names
    first = dynamic.create_db_role(lab, default_ttl, max_ttl)
    before = dynamic.lease(lab).get("lease_id")
    # The label carries the TTLs and the time: a changed spec, so VSO fetches fresh credentials now, even on a re-run.
    label = f"{default_ttl}-{max_ttl}-{renewal_percent}-{int(time.time())}"
    vso.apply(lab, dynamic.dynamic_secret(lab, renewal_percent, ttl_label=label))
    k8s.wait_for("VSO to fetch credentials under the new TTLs", lambda: dynamic.lease(lab).get("lease_id") not in ("", before),
                 60, hint=lambda: vso.hint_from_events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns))
    dynamic.wait_steady(lab, quiet=1.0)
    patch = {"spec": {"renewalPercent": renewal_percent,
                      "destination": {"labels": {"vsolab.dev/ttl": label}}}}
    return Done(f"{first.what}; VaultDynamicSecret renewalPercent={renewal_percent}; VSO fetched a new lease",
                f"{first.command}\nkubectl patch vaultdynamicsecret {n.dynamic_vds} -n {n.dynamic_ns} --type merge "
                f"-p '{json.dumps(patch)}'")


@dataclass(frozen=True)
class Expected:
    """When things should happen, from VSO's and Vault's rules (seconds after the lease was issued)."""

    renewals: list[tuple[float, float]]  # each renewal's window
    rotation: tuple[float, float]  # the renewal Vault cuts short: VSO fetches new credentials then
    drop: float  # the first lease reaches max_ttl: Vault runs the revocation statements, the role is dropped

    @property
    def window(self) -> float:
        """How long to watch to see all of it."""
        return self.drop + 15

    def __str__(self) -> str:
        ren = ", ".join(f"{lo:.0f}–{hi:.0f} s" for lo, hi in self.renewals) or "none"
        return (f"renewals at about {ren}; rotation at the renewal near {self.rotation[0]:.0f}–{self.rotation[1]:.0f} s "
                f"(Vault grants less than asked); the first role dropped at {self.drop:.0f} s")


def expected(default_ttl: float, max_ttl: float, renewal_percent: int) -> Expected:
    """Predict renewals and the rotation.

    VSO renews between ``renewalPercent`` and about 10 % later of the lease's TTL (its horizon has up to 10 %
    jitter: ``computeDynamicHorizonWithJitter``). Vault grants ``min(default_ttl, max_ttl - age)``; the first grant
    shorter than asked makes VSO fetch new credentials (``LeaseTruncatedError``). The old lease then runs out
    at ``max_ttl``.
    """
    lo = hi = 0.0
    ttl = min(default_ttl, max_ttl)
    renewals: list[tuple[float, float]] = []
    while len(renewals) < 1000:
        a, b = renewal_window(ttl, renewal_percent)
        nlo, nhi = lo + a, hi + b
        if max_ttl - (nlo + nhi) / 2 < default_ttl:
            return Expected(renewals, (nlo, nhi), max_ttl)
        renewals.append((nlo, nhi))
        lo, hi, ttl = nlo, nhi, default_ttl
    return Expected(renewals, (hi, hi), max_ttl)


@dataclass
class Observation:
    """What happened while we watched: one record per change."""

    events: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds since start, kind, detail)
    leases: list[str] = field(default_factory=list)
    roles_seen: list[str] = field(default_factory=list)
    roles_dropped: list[str] = field(default_factory=list)
    pods_seen: list[str] = field(default_factory=list)
    app_users: list[str] = field(default_factory=list)
    renewals: int = 0
    initial_user: str = ""  # the PostgreSQL role the app used when watching began

    @property
    def rotations(self) -> int:
        return max(len(self.leases) - 1, 0)

    def summary(self) -> str:
        lines = [f"renewals: {self.renewals}, rotations: {self.rotations}, app pods: {len(self.pods_seen)}, "
                 f"PostgreSQL roles created: {len(self.roles_seen)}, dropped: {len(self.roles_dropped)}"]
        lines += [f"  t={t:5.1f}s  {kind:<14} {detail}" for t, kind, detail in self.events]
        return "\n".join(lines)

    __str__ = summary


def _pods(lab: Lab) -> list[str]:
    n = lab.names
    return sorted(p.metadata.name for p in k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}"))


def _lookup(lab: Lab, lease_id: str) -> tuple[float | None, float | None]:
    """Vault's ``PUT sys/leases/lookup`` of a lease: its issue time and last renewal (None, None once it expired)."""
    try:
        data = vault.client(lab).sys.read_lease(lease_id)["data"]
    except Exception:  # expired in between: the next poll sees the new lease
        return None, None
    return parse_time(data.get("issue_time")), parse_time(data.get("last_renewal"))


def _note_events(obs: Observation, found: tuple[Event, ...], issued: float | None, note: Callable[[str, str], None]) -> None:
    """Record the tracker's events: a renewal that happened before watching began counts (the lesson is the lease's
    life, not our start)."""
    for ev in found:
        lid = f"lease …{ev.lease_id[-6:]}"
        if ev.kind in (FIRST, ROTATION):
            obs.leases.append(ev.lease_id)
            kind = "new lease" if ev.kind == FIRST else "rotation"
            note(kind, f"{lid} ({ev.duration:.0f}s)" + (" (seen after the next one)" if ev.late else ""))
            if ev.kind == FIRST and issued is not None:
                note("lease age", f"{lid} was issued {time.time() - issued:.1f}s before watching began")
        elif ev.before_seen:
            obs.renewals += 1
            after = f" {ev.time - issued:.1f}s after issue" if issued is not None else ""
            note("renewal", f"{lid} was renewed{after} (before watching began)")
        else:
            obs.renewals += 1
            note("renewal", f"{lid} renewed for {ev.duration:.0f}s")


def observe(lab: Lab, seconds: float, *, until_rotation_and_revocation: bool = False, interval: float = 0.5,
            progress: Callable[[str], None] | None = None) -> Observation:
    """Poll the lease, the PostgreSQL roles, the app's pods and /status for ``seconds``.

    With ``until_rotation_and_revocation`` it stops early once a rotation happened,
    the app runs the new credentials and the first role was dropped. ``progress``
    (e.g. ``print``) gets each event as it happens, and a line every 30 s.
    """
    n = lab.names
    obs = Observation(initial_user=dynamic.read_secret(lab).get("username", ""))
    start = time.monotonic()
    tracker = LeaseTracker()
    roles_prev: set[str] = set()

    def note(kind: str, detail: str) -> None:
        obs.events.append((round(time.monotonic() - start, 1), kind, detail))
        if progress:
            progress(f"  t={obs.events[-1][0]:5.1f}s  {kind:<14} {detail}")

    heartbeat = 30.0

    while time.monotonic() - start < seconds:
        seen = Sighting.from_vds(vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns))
        issued = None
        if seen.lease_id and tracker.is_new(seen):  # credentials new to us: ask Vault
            issued, renewed = _lookup(lab, seen.lease_id)
            seen = replace(seen, vault_renewed_at=renewed)
        _note_events(obs, tracker.see(time.time(), seen), issued, note)
        roles = {r["role"] for r in pg.dynamic_roles(lab, lab.names.vso_db_users)}
        for r in sorted(roles - roles_prev):
            if r not in obs.roles_seen:
                obs.roles_seen.append(r)
                note("role created", ROLE_NUMBERS.label(r))
        for r in sorted(roles_prev - roles):
            obs.roles_dropped.append(r)
            note("role dropped", ROLE_NUMBERS.label(r))
        roles_prev = roles
        for p in _pods(lab):
            if p not in obs.pods_seen:
                obs.pods_seen.append(p)
                note("pod ready", p)
                try:
                    _, body = app.call(lab, n.dynamic_ns, "/status", n.app, timeout=5)
                    user = body.get("connected_as", "")
                    obs.app_users.append(user)
                    note("app /status", f"{body.get('status')} as {ROLE_NUMBERS.label(user) if user else '(nobody)'}")
                except Exception as exc:  # a rolling pod; note it and go on
                    note("app /status", f"no answer yet ({type(exc).__name__})")
        if progress and time.monotonic() - start >= heartbeat:
            progress(f"  t={heartbeat:5.0f}s  still watching: {obs.renewals} renewals, {obs.rotations} rotations, "
                     f"{len(obs.roles_dropped)} roles dropped so far")
            heartbeat += 30
        if (until_rotation_and_revocation and obs.rotations >= 1 and obs.initial_user in obs.roles_dropped
                and len(obs.app_users) >= 2):
            break
        time.sleep(interval)
    return obs


def check(lab: Lab, obs: Observation) -> Check:
    n = lab.names
    sec = dynamic.read_secret(lab)
    current = sec.get("username", "")
    try:
        code, body = app.call(lab, n.dynamic_ns, "/status", n.app, timeout=10)
        app_ok = code == 200 and body.get("connected_as") == current
    except Exception:
        app_ok = False
    first_role = obs.initial_user
    still = {r["role"] for r in pg.lab_roles(lab)}
    return Check("rotation: renew, rotate, restart, revoke", [
        ("VSO renewed the lease at least once", obs.renewals >= 1,
         "watch longer than default_ttl × renewalPercent, or lower renewalPercent"),
        ("VSO rotated to a new lease", obs.rotations >= 1,
         "rotation happens at the first renewal Vault cuts short (one that would pass max_ttl): watch longer"),
        ("the app was restarted and now connects with the current credentials", app_ok and len(obs.pods_seen) >= 2,
         "rolloutRestartTargets must name the Deployment; check the VaultDynamicSecret's RolloutRestart events"),
        ("the role the app used at first was revoked (dropped)", bool(first_role) and first_role not in still,
         "Vault drops the role when its lease expires at max_ttl; wait until then"),
    ])


# -- exercises (notebook 04) ------------------------------------------------------------------------------------------

@exercise(
    "renew-earlier",
    "Set the VaultDynamicSecret's renewalPercent to 30; predict what happens at once, and when the first renewal comes.",
    ["`kubectl patch vaultdynamicsecret vault-dynamic-secret -n ${PREFIX}dynamic-exampleapp --type merge "
     "-p '{\"spec\":{\"renewalPercent\":30}}'`.",
     "A spec change means a new lease at once (and an app restart). Its first renewal comes at 30–40 % of its duration.",
     "Wait in a loop until `vault lease lookup -format=json <lease>` has a last_renewal, printing progress as you go; "
     "then compare last_renewal − issue_time with the duration."])
def _renew_earlier(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    vds = vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns) or {}
    now = dynamic.lease(lab)
    lid, duration = now["lease_id"], float(now.get("duration") or 0)
    ratio = None
    if lid:
        try:
            data = vault.client(lab).sys.read_lease(lid)["data"]
        except Exception:  # an expired lease: no renewal to measure
            data = {}
        issued, renewed = parse_time(data.get("issue_time")), parse_time(data.get("last_renewal"))
        if issued and renewed and duration:
            ratio = (renewed - issued) / duration
    before = ns.get("lease_before")
    return [
        ("renewalPercent is 30", (vds.get("spec") or {}).get("renewalPercent") == 30,
         "kubectl patch … -p '{\"spec\":{\"renewalPercent\":30}}'"),
        ("the spec change brought a new lease", bool(before) and bool(lid) and lid != before,
         "run the cell that records lease_before first, then change the spec" if not before else
         "VSO syncs anew on a spec change; check `kubectl describe vaultdynamicsecret …`"),
        ("VSO renewed the new lease once, at 25–45 % of its duration",
         ratio is not None and 0.25 <= ratio <= 0.45,
         "wait until `vault lease lookup` shows a last_renewal; if it renewed twice already, patch again for a fresh "
         f"lease (measured: {'no renewal yet' if ratio is None else f'{ratio:.0%}'})"),
    ]


@exercise(
    "every-renewal-rotates",
    "Write the database role with max_ttl equal to default_ttl; predict what Vault grants at the next renewal, "
    "and what VSO and the app do then.",
    ["Copy the role command from the top of this notebook and set max_ttl=$DEFAULT_TTL.",
     "Vault grants min(asked, max_ttl − age): with max_ttl = default_ttl every renewal comes back shorter than asked.",
     "A short grant is VSO's LeaseTruncatedError: it fetches new credentials and restarts the app. Poll "
     "`.status.secretLease.id` until it changes (print progress while you wait)."])
def _every_renewal_rotates(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    role = vault.read_database_role(lab, n.db_role, mount=n.db_mount)
    before, pods_before = ns.get("lease_before"), ns.get("pods_before")
    now = dynamic.lease(lab)["lease_id"]
    recorded = bool(before) and pods_before is not None
    note = "run the cell that records lease_before and pods_before first"
    return [
        ("the role's max_ttl equals its default_ttl",
         bool(role) and int(role.get("max_ttl") or 0) == int(role.get("default_ttl") or -1),
         "vault write …/roles/vault-role-dynamic-exampleapp … default_ttl=$DEFAULT_TTL max_ttl=$DEFAULT_TTL"),
        ("VSO rotated to a new lease at the next renewal", recorded and bool(now) and now != before,
         note if not recorded else "wait for the renewal: up to renewalPercent + 10 % of the lease's duration"),
        ("the app restarted with the new credentials", recorded and dynamic.restarted(lab, pods_before or []),
         note if not recorded else "look for RolloutRestart events: `kubectl get events -n …`"),
    ]


# Its one step changes the database role's TTLs, which stage 3's undo removes with the role: nothing of its own to undo.
STAGE = Stage(4, "04-rotation-live", "Rotation, live: renew, rotate, restart, revoke", undo=nothing_to_undo,
              check=check, exercises=(_renew_earlier, _every_renewal_rotates))
