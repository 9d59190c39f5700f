"""Pure models behind the live widgets: ``update(now, observed)`` in, plain state out.

No ipywidgets and no I/O here: the widgets in :mod:`labkit.live` read the cluster,
feed what they read to these models and draw what the models say. Observations are
Kubernetes objects as JSON dicts (camelCase), ``now`` is a unix time in seconds.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from ._lease import FIRST, RENEWAL, ROTATION, LeaseTracker, Sighting, parse_time
from .display import mask

CONDITIONS = (("Synced", "SecretSynced"), ("Healthy", "Healthy"), ("Ready", "Ready"))
OK, WARN, FAIL, UNKNOWN = "ok", "warn", "fail", "unknown"


def short_lease(lease_id: str) -> str:
    """``database/creds/role/AbCdEf…`` for a lease id: enough to tell leases apart."""
    if not lease_id:
        return "(none)"
    head, _, tail = lease_id.rpartition("/")
    return f"{head}/{tail[:6]}…" if head else f"{tail[:6]}…"


class RoleNumbers:
    """``role #n`` for each PostgreSQL role, numbered in the order the roles were created.

    One numbering per kernel (:data:`ROLE_NUMBERS`), shared by the Timeline widget and ``rotation.observe``'s text,
    so "role #2" is the same role in both. Vault's default username template ends in the creation time
    (``…-<unix_time>``), so roles first seen together are numbered in creation order. Only a digest of each name is
    kept: a dynamic username is a credential.
    """

    def __init__(self) -> None:
        self._no: dict[str, int] = {}

    @staticmethod
    def _created(role: str) -> int:
        tail = role.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def register(self, roles: list[str]) -> None:
        for role in sorted(roles, key=lambda r: (self._created(r), r)):
            self._no.setdefault(_digest(role), len(self._no) + 1)

    def label(self, role: str) -> str:
        self.register([role])
        return f"role #{self._no[_digest(role)]}"

    def number_of_digest(self, digest: str) -> int:
        return self._no[digest]


ROLE_NUMBERS = RoleNumbers()


def ref(obj: dict | None) -> str:
    """``namespace/name`` of an object."""
    meta = (obj or {}).get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def conditions(obj: dict | None) -> dict[str, tuple[str, str]]:
    """VSO conditions by short name: ``{"Synced": ("True", reason), ...}``; missing ones are ``("Unknown", "")``."""
    found = {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}
    return {short: (str((found.get(typ) or {}).get("status", "Unknown")), str((found.get(typ) or {}).get("reason") or ""))
            for short, typ in CONDITIONS}


def conditions_light(obj: dict | None) -> str:
    """Green when Synced, Healthy and Ready are all True; red when one is False or the resource is missing; else amber."""
    states = [s for s, _ in conditions(obj).values()]
    return FAIL if obj is None or "False" in states else OK if all(s == "True" for s in states) else WARN


# -- leases ------------------------------------------------------------------------------------------------------------
#: VSO's horizon adds up to this share of the TTL after ``renewalPercent`` (``computeDynamicHorizonWithJitter``)
RENEWAL_JITTER = 0.10


def renewal_window(duration: float, renewal_percent: int) -> tuple[float, float]:
    """Seconds after the last grant between which VSO renews a lease of ``duration`` seconds.

    VSO's horizon is ``renewalPercent × TTL + 10 % − jitter(0–10 %)``, so the renewal lands between
    ``renewalPercent`` and about ``renewalPercent + 10 %`` of the TTL (never past the TTL).
    """
    p = renewal_percent / 100
    return duration * p, duration * min(p + RENEWAL_JITTER, 1.0)


@dataclass(frozen=True)
class LeaseState:
    lease_id: str
    short_id: str
    duration: float  # the lease's TTL when it was issued or last renewed
    ttl: float  # seconds left now
    fraction: float  # ttl / duration, 0..1
    renewal_percent: int
    next_renewal_in: float | None  # seconds until VSO's renewal window opens (negative: it is open or past)
    horizon_in: float | None  # seconds until max_ttl ends this lease for good
    renewals: int  # renewals of this lease
    total_renewals: int
    rotations: tuple[float, ...]  # times new credentials arrived (not the first ones)
    events: tuple[tuple[float, str], ...]  # what this update detected: (time, "renewal" | "rotation")
    renewal_window_end_in: float | None = None  # seconds until the renewal window closes (negative: overdue)


@dataclass
class LeaseModel:
    """The countdown of a VaultDynamicSecret's lease, from ``status.lastRenewalTime`` and ``status.secretLease``.

    * TTL left = ``lastRenewalTime + secretLease.duration - now``, never past the ``max_ttl`` horizon;
    * VSO renews between ``renewalPercent`` and about 10 % later of ``duration`` after ``lastRenewalTime``
      (:func:`renewal_window`);
    * renewals and rotations are :class:`labkit._lease.LeaseTracker`'s (the one definition, shared with
      ``rotation.observe``): the same lease id with a later ``lastRenewalTime`` is a renewal, a new lease id new
      credentials; stale, duplicate and empty reads change nothing.
    """

    max_ttl: float | None = None
    renewal_percent: int = 67
    issued_at: float | None = None
    tracker: LeaseTracker = field(default_factory=LeaseTracker)

    @property
    def lease_id(self) -> str:
        return self.tracker.lease_id

    @property
    def last_renewal(self) -> float | None:
        return self.tracker.renewed_at

    @property
    def duration(self) -> float:
        return self.tracker.duration

    @property
    def renewals(self) -> int:
        return self.tracker.renewals

    @property
    def total_renewals(self) -> int:
        return self.tracker.total_renewals

    @property
    def rotations(self) -> list[float]:
        return self.tracker.rotations

    def update(self, now: float, vds: dict | None, issued_at: float | None = None,
               vault_renewed_at: float | None = None) -> LeaseState:
        """Feed the VaultDynamicSecret as read at ``now`` (``issued_at``, ``vault_renewed_at``: Vault's lease lookup,
        ``issue_time`` and ``last_renewal``, when known)."""
        spec = (vds or {}).get("spec") or {}
        if spec.get("renewalPercent") is not None:
            self.renewal_percent = int(spec["renewalPercent"])
        seen = Sighting.from_vds(vds, vault_renewed_at)
        found = self.tracker.see(now, seen)
        if any(ev.kind == FIRST or (ev.kind == ROTATION and not ev.late) for ev in found):
            self.issued_at = self.tracker.renewed_at  # exact when we saw the lease from its start; Vault's issue_time overrides
        if issued_at is not None and seen.lease_id and seen.lease_id == self.tracker.lease_id:
            self.issued_at = issued_at
        return self.state(now, tuple((ev.time, ev.kind) for ev in found if ev.kind in (RENEWAL, ROTATION)))

    def state(self, now: float, events: tuple[tuple[float, str], ...] = ()) -> LeaseState:
        if not self.lease_id or self.last_renewal is None:
            return LeaseState(self.lease_id, short_lease(self.lease_id), 0.0, 0.0, 0.0, self.renewal_percent, None, None,
                              self.renewals, self.total_renewals, tuple(self.rotations), events)
        expires = self.last_renewal + self.duration
        horizon = self.issued_at + self.max_ttl if self.max_ttl and self.issued_at is not None else None
        if horizon is not None:
            expires = min(expires, horizon)
        ttl = max(0.0, expires - now)
        lo, hi = renewal_window(self.duration, self.renewal_percent)
        return LeaseState(
            self.lease_id, short_lease(self.lease_id), self.duration, ttl, ttl / self.duration if self.duration else 0.0,
            self.renewal_percent, self.last_renewal + lo - now, None if horizon is None else horizon - now, self.renewals,
            self.total_renewals, tuple(self.rotations), events, self.last_renewal + hi - now,
        )


# -- static credentials (a database static role, ``allowStaticCreds``) -------------------------------------------------
#: VSO reads static credentials again this long after the ``ttl`` it was given ran out (``computePostSyncHorizon``:
#: ``ttl + 500ms`` plus a jitter of at most 5 % of 3 s)
STATIC_READ_DELAY = 0.5


@dataclass(frozen=True)
class StaticCredsState:
    last_rotation: float | None  # status.staticCredsMetaData.lastVaultRotation: Vault's last rotation (whole seconds)
    period: float  # rotationPeriod
    ttl: float  # seconds left until Vault's next rotation, from VSO's last read (0: due)
    fraction: float  # ttl / period, 0..1
    next_read_in: float | None  # seconds until VSO reads again (``ttl`` at its last sync + 0.5 s after that sync)
    synced_at: float | None  # status.lastRenewalTime: VSO's last sync
    rotations: tuple[float, ...]  # when VSO synced a rotation it had not seen (not the first credentials)
    events: tuple[tuple[float, str], ...]  # what this update detected: (time, "rotation")


@dataclass
class StaticCredsModel:
    """The rotation clock of a VaultDynamicSecret with ``allowStaticCreds``, from ``status.staticCredsMetaData``.

    There is no lease: VSO records Vault's ``lastVaultRotation``, ``rotationPeriod`` and the ``ttl`` left when it
    read, and sets ``lastRenewalTime`` at that sync. So Vault's next rotation is due ``ttl`` after that sync and VSO
    reads again :data:`STATIC_READ_DELAY` later. A rotation is :class:`labkit._lease.LeaseTracker`'s rule for static
    credentials: a later ``lastVaultRotation`` (a moving ``lastRenewalTime`` alone is not one).
    """

    tracker: LeaseTracker = field(default_factory=LeaseTracker)

    @property
    def rotations(self) -> list[float]:
        return self.tracker.rotations

    def update(self, now: float, vds: dict | None) -> StaticCredsState:
        found = self.tracker.see(now, Sighting.from_vds(vds))
        st = (vds or {}).get("status") or {}
        meta = st.get("staticCredsMetaData") or {}
        last, synced = parse_time(meta.get("lastVaultRotation") or None), parse_time(st.get("lastRenewalTime"))
        period, ttl_then = float(meta.get("rotationPeriod") or 0), float(meta.get("ttl") or 0)
        due = synced + ttl_then if synced is not None and last is not None else None
        ttl = max(0.0, due - now) if due is not None else 0.0
        return StaticCredsState(last, period, ttl, min(1.0, ttl / period) if period else 0.0,
                                None if due is None else due + STATIC_READ_DELAY - now, synced, tuple(self.rotations),
                                tuple((ev.time, ev.kind) for ev in found if ev.kind == ROTATION))


# -- secrets -----------------------------------------------------------------------------------------------------------
def decode_data(secret: dict | None) -> dict[str, str]:
    """A Secret's ``data`` decoded from base64 (``stringData`` is never returned by the API)."""
    return {k: base64.b64decode(v or "").decode(errors="replace") for k, v in ((secret or {}).get("data") or {}).items()}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class SecretState:
    exists: bool
    resource_version: str
    rows: tuple[tuple[str, str, bool], ...]  # (key, shown value, changed in the last change)
    last_change: float | None
    just_changed: bool
    changes: int
    owner: str  # "VaultDynamicSecret ns/name" or ""
    owner_conditions: dict[str, tuple[str, str]]
    owner_light: str
    events: tuple[tuple[float, str], ...]


@dataclass
class SecretModel:
    """A Kubernetes Secret seen over time: masked values, its last change, its VSO owner's conditions.

    The model keeps only sha256 digests of the values between updates; values are shown masked unless
    ``state(..., reveal=True)``. The values of the last update are kept for reveal only.
    """

    highlight_seconds: float = 5.0
    digests: dict[str, str] = field(default_factory=dict)
    resource_version: str = ""
    last_change: float | None = None
    changed_keys: frozenset[str] = frozenset()
    changes: int = 0
    _values: dict[str, str] = field(default_factory=dict, repr=False)
    _owner: dict | None = field(default=None, repr=False)
    _exists: bool = False

    def update(self, now: float, secret: dict | None, owner: dict | None = None, reveal: bool = False) -> SecretState:
        data = decode_data(secret)
        digests = {k: _digest(v) for k, v in data.items()}
        events: list[tuple[float, str]] = []
        if secret is not None and self._exists and digests != self.digests:
            self.changed_keys = frozenset(k for k in digests.keys() | self.digests.keys() if digests.get(k) != self.digests.get(k))
            self.last_change, self.changes = now, self.changes + 1
            events.append((now, "secret_change"))
        elif secret is not None and not self._exists:  # changed before we watched: the last write in managedFields
            meta = secret.get("metadata") or {}
            times = [parse_time(f.get("time")) for f in meta.get("managedFields") or []] + [parse_time(meta.get("creationTimestamp"))]
            self.last_change = max((t for t in times if t is not None), default=now)
        self._exists, self.digests, self._values, self._owner = secret is not None, digests, data, owner
        self.resource_version = str(((secret or {}).get("metadata") or {}).get("resourceVersion") or "")
        return self.state(now, reveal, tuple(events))

    def state(self, now: float, reveal: bool = False, events: tuple[tuple[float, str], ...] = ()) -> SecretState:
        just = self.last_change is not None and self.changes > 0 and now - self.last_change < self.highlight_seconds
        rows = tuple((k, mask(v, reveal), just and k in self.changed_keys) for k, v in sorted(self._values.items()))
        o = self._owner
        owner = f"{o.get('kind', '')} {ref(o)}" if o else ""
        return SecretState(self._exists, self.resource_version, rows, self.last_change, just, self.changes, owner,
                           conditions(o) if o else {}, conditions_light(o) if o else UNKNOWN, events)


def redact(text: str, values: list[str] | tuple[str, ...]) -> str:
    """``text`` with every known secret value (4+ chars) replaced by the mask."""
    for v in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(v, mask(v))
    return text


# -- the pipeline ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    name: str  # vault | vso | secret | pods | app
    title: str
    light: str  # ok | warn | fail | unknown
    detail: str


@dataclass
class PipelineObservation:
    """What one poll of the chain Vault path → VSO resource → Secret → pods → app saw."""

    vault_path: str
    vault_ok: bool | None
    resource: dict | None
    secret: dict | None
    pods: list[dict] = field(default_factory=list)
    replicas: int = 1
    app: tuple[int, dict] | None = None
    app_error: str = ""
    vault_detail: str = ""
    deployment: str = ""
    app_path: str = "/status"


def pod_facts(pod: dict, now: float) -> tuple[str, bool, int, float, bool]:
    """(name, ready, restarts, age in seconds, terminating) of a Pod."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    ready = st.get("phase") == "Running" and conds.get("Ready") == "True" and not meta.get("deletionTimestamp")
    restarts = sum(int(c.get("restartCount") or 0) for c in st.get("containerStatuses") or [])
    created = parse_time(meta.get("creationTimestamp"))
    age = max(0.0, now - created) if created else 0.0
    return str(meta.get("name", "")), bool(ready), restarts, age, bool(meta.get("deletionTimestamp"))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(max(0, seconds))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


@dataclass
class PipelineModel:
    """One status light per link of the chain, from VSO conditions, the Secret, the pods and the app."""

    secret: SecretModel = field(default_factory=SecretModel)

    def update(self, now: float, o: PipelineObservation) -> tuple[Link, ...]:
        res = o.resource
        kind = (res or {}).get("kind", "VSO resource")
        rname = ref(res) if res else "(missing)"
        vault = Link("vault", f"Vault {o.vault_path}", UNKNOWN if o.vault_ok is None else OK if o.vault_ok else FAIL,
                     o.vault_detail or ("readable" if o.vault_ok else "not found or not readable"))
        conds = conditions(res)
        vso = Link("vso", f"{kind} {rname}", conditions_light(res),
                   " ".join(f"{k}={'✓' if s == 'True' else '✗' if s == 'False' else '?'}" for k, (s, _) in conds.items())
                   if res else "not applied")
        st = self.secret.update(now, o.secret, res)
        changed = ago(None if st.last_change is None else now - st.last_change)
        secret = Link("secret", f"Secret {ref(o.secret)}" if o.secret else "Secret (missing)", OK if st.exists and st.rows else FAIL,
                      f"rv {st.resource_version}, {len(st.rows)} keys, changed {changed}" if st.exists else "does not exist")
        facts = [pod_facts(p, now) for p in o.pods]
        ready = sum(1 for f in facts if f[1])
        terminating = sum(1 for f in facts if f[4])
        light = OK if ready >= max(1, o.replicas) and not terminating else WARN if ready or facts else FAIL
        detail = "; ".join(f"{n[-5:]}: {'ready' if r else 'not ready'}, {rs} restarts, {ago(a).replace(' ago', '')} old"
                           for n, r, rs, a, _ in facts) or "no pods"
        pods = Link("pods", f"Deployment {o.deployment} pods {ready}/{max(1, o.replicas)} ready", light, detail)
        values = list(self.secret._values.values())
        if o.app is None:
            app = Link("app", f"app {o.app_path}", FAIL if o.app_error else UNKNOWN, redact(o.app_error or "not called", values))
        else:
            code, body = o.app
            shown = {k: (mask(v) if k in ("connected_as", "username", "password") else redact(str(v), values)) for k, v in body.items()}
            app = Link("app", f"app {o.app_path} → {code}", OK if code == 200 else FAIL,
                       ", ".join(f"{k}: {v}" for k, v in shown.items() if k in ("status", "connected_as", "error")))
        return vault, vso, secret, pods, app


# -- the timeline ------------------------------------------------------------------------------------------------------
LANES = ("PG role created", "PG role dropped", "lease renewed", "new credentials", "Secret changed", "pod started",
         "pod stopped", "container restarted")


@dataclass
class TimelineModel:
    """Events over time: PostgreSQL roles created and dropped, renewals, rotations, Secret changes, pod restarts.

    The first update is the baseline (no events). Role names are credentials: the model keeps digests
    and labels roles ``role #n`` in the order it first saw them.
    """

    max_events: int = 500
    start: float | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, lane, label)
    lease: LeaseModel = field(default_factory=LeaseModel)
    secret: SecretModel = field(default_factory=SecretModel)
    _roles: set[str] | None = None
    numbers: RoleNumbers = field(default_factory=lambda: ROLE_NUMBERS)
    _pods: dict[str, int] | None = None
    _new: list[tuple[float, str, str]] = field(default_factory=list)

    def _add(self, t: float, lane: str, label: str) -> None:
        self._new.append((t, lane, label))
        self.events.append((t, lane, label))
        del self.events[: max(0, len(self.events) - self.max_events)]

    def update(self, now: float, *, roles: list[str] | None = None, vds: dict | None = None, secret: dict | None = None,
               pods: list[dict] | None = None) -> list[tuple[float, str, str]]:
        """Feed one poll (``None`` for what was not read); return the new events."""
        self._new = []
        if self.start is None:
            self.start = now
        if roles is not None:
            self.numbers.register(roles)
            digests = {_digest(r): r for r in roles}
            if self._roles is not None:
                for d in sorted(set(digests) - self._roles, key=self.numbers.number_of_digest):
                    self._add(now, "PG role created", f"role #{self.numbers.number_of_digest(d)}")
            for d in sorted((self._roles or set()) - set(digests), key=self.numbers.number_of_digest):
                self._add(now, "PG role dropped", f"role #{self.numbers.number_of_digest(d)}")
            self._roles = set(digests)
        if vds is not None:
            for t, kind in self.lease.update(now, vds).events:
                self._add(t, "lease renewed" if kind == "renewal" else "new credentials",
                          f"renewal {self.lease.total_renewals}" if kind == "renewal" else f"rotation {len(self.lease.rotations)}")
        if secret is not None:
            for t, _ in self.secret.update(now, secret).events:
                self._add(t, "Secret changed", f"rv {self.secret.resource_version}")
        if pods is not None:
            seen = {f[0]: f[2] for f in (pod_facts(p, now) for p in pods) if not f[4]}
            if self._pods is not None:
                for name in seen.keys() - self._pods.keys():
                    self._add(now, "pod started", name[-5:])
                for name in self._pods.keys() - seen.keys():
                    self._add(now, "pod stopped", name[-5:])
                for name in seen.keys() & self._pods.keys():
                    if seen[name] > self._pods[name]:
                        self._add(now, "container restarted", f"{name[-5:]} ×{seen[name]}")
            self._pods = seen
        return self._new
