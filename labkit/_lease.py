"""One definition of a *renewal* and a *rotation* of a VaultDynamicSecret's credentials.

Fed successive sightings of the resource's status, :class:`LeaseTracker` says what happened between them. Used by
``rotation.observe`` (notebook 04's text) and by the live widgets' models (:mod:`labkit._livemodel`), so the two
count the same events. The rules follow VSO v1.5.0 (``controllers/vaultdynamicsecret_controller.go``):

* **renewal**: the same ``status.secretLease.id`` with a later ``status.lastRenewalTime``. VSO's renewal path
  (``PUT sys/leases/renew``) keeps the lease id (it errors out if Vault returned another) and the Secret, and
  sets ``SecretLease`` and ``LastRenewalTime`` in one status update.
* **rotation**: a lease id never seen before. Every sync (``syncSecret`` → ``doVault``: first sync, spec change,
  forced sync, new Vault client, a renewal Vault cut short: ``LeaseTruncatedError``) reads new credentials from
  Vault, writes them to the Secret, then sets the new lease and ``LastRenewalTime`` in one status update. Vault
  issues a new lease id on each read, so a new lease id is new credentials and an old one never comes back.
* **not a rotation**: a new ``status.lastGeneration`` alone. ``updateStatus`` copies the generation even when a
  sync failed (the old lease and Secret stay), and a successful sync after a spec change brings a new lease id.
* **static credentials** (``spec.allowStaticCreds``): the response has no lease and VSO never renews; it re-reads
  the credentials after Vault's rotation and sets ``lastRenewalTime`` on every sync, changed data or not. A
  rotation is a later ``status.staticCredsMetaData.lastVaultRotation``; a moving ``lastRenewalTime`` is nothing.

``lastRenewalTime`` is VSO's clock: it moves forward with every renewal and sync, so a sighting older than the
newest one (an out-of-order read) or equal to it (a duplicate) brings nothing new, and a sighting without a lease
(a failed read, a resource not synced yet) changes nothing. The first sighting is the baseline, not a rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FIRST, RENEWAL, ROTATION = "first", "renewal", "rotation"
#: VSO records a renewal (``nowFunc().Unix()``, whole seconds, after Vault answered) at most this much after Vault's
#: own ``last_renewal``: a ``lastRenewalTime`` this close to a renewal Vault reported is that renewal, not another.
SAME_RENEWAL = 2.0


def parse_time(value: Any) -> float | None:
    """Unix seconds from a number or an RFC 3339 string (``2026-01-02T03:04:05Z``); None when absent."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    if s.isdigit():
        return float(s)
    s = s.replace("Z", "+00:00")
    if "." in s:  # Vault gives nanoseconds; fromisoformat takes at most microseconds
        head, _, rest = s.partition(".")
        n = len(rest) - len(rest.lstrip("0123456789"))
        s = f"{head}.{rest[:min(n, 6)]}{rest[n:]}"
    return datetime.fromisoformat(s).timestamp()


@dataclass(frozen=True)
class Sighting:
    """One read of a VaultDynamicSecret (and, when read, Vault's lookup of its lease)."""

    lease_id: str = ""  # status.secretLease.id
    renewed_at: float | None = None  # status.lastRenewalTime: VSO sets it at every renewal and every sync
    duration: float = 0.0  # status.secretLease.duration
    static: bool = False  # spec.allowStaticCreds
    vault_rotation: float | None = None  # status.staticCredsMetaData.lastVaultRotation (static credentials)
    vault_renewed_at: float | None = None  # Vault's lease lookup: last_renewal (a renewal before the lease was seen)

    @classmethod
    def from_vds(cls, vds: dict | None, vault_renewed_at: float | None = None) -> Sighting:
        spec, st = (vds or {}).get("spec") or {}, (vds or {}).get("status") or {}
        lease = st.get("secretLease") or {}
        return cls(str(lease.get("id") or ""), parse_time(st.get("lastRenewalTime")), float(lease.get("duration") or 0),
                   bool(spec.get("allowStaticCreds")),
                   parse_time((st.get("staticCredsMetaData") or {}).get("lastVaultRotation") or None), vault_renewed_at)

    @property
    def key(self) -> str:
        """What identifies the credentials: the lease id, or for static credentials Vault's last rotation."""
        if self.static:
            return f"static@{self.vault_rotation:.0f}" if self.vault_rotation else ""
        return self.lease_id


@dataclass(frozen=True)
class Event:
    time: float
    kind: str  # FIRST (the baseline) | RENEWAL | ROTATION
    lease_id: str
    duration: float = 0.0
    before_seen: bool = False  # a renewal Vault recorded before the lease was first seen
    late: bool = False  # a rotation to a lease older than the current one: seen out of order, after the next one


@dataclass
class LeaseTracker:
    """The credentials now in use and the renewals and rotations seen so far; :meth:`see` one sighting at a time."""

    key: str = ""
    lease_id: str = ""
    renewed_at: float | None = None  # the newest lastRenewalTime of the current credentials
    duration: float = 0.0
    renewals: int = 0  # of the current lease
    total_renewals: int = 0
    rotations: list[float] = field(default_factory=list)  # when new credentials arrived (not the first ones)
    _past: set[str] = field(default_factory=set, repr=False)  # superseded keys: a sighting of one is stale
    _vault_renewal: float | None = field(default=None, repr=False)  # Vault's last_renewal when the lease was first seen

    def is_new(self, s: Sighting) -> bool:
        """Whether ``s`` shows credentials not seen yet (worth a Vault lookup before :meth:`see`)."""
        return bool(s.key) and s.key != self.key and s.key not in self._past

    def see(self, now: float, s: Sighting) -> tuple[Event, ...]:
        """What ``s``, read at ``now``, shows since the sightings before it."""
        key, at = s.key, s.renewed_at if s.renewed_at is not None else now
        if not key or key in self._past:  # no credentials in this read, or a stale read of old ones
            return ()
        if key == self.key:
            if s.renewed_at is None or (self.renewed_at is not None and s.renewed_at <= self.renewed_at):
                return ()  # a duplicate, or an older read of the current lease
            self.renewed_at, self.duration = s.renewed_at, s.duration or self.duration
            if s.static or (self._vault_renewal is not None and s.renewed_at <= self._vault_renewal + SAME_RENEWAL):
                return ()  # static credentials are never renewed; VSO's record of the renewal Vault reported already
            self.renewals, self.total_renewals = self.renewals + 1, self.total_renewals + 1
            return (Event(s.renewed_at, RENEWAL, s.lease_id, s.duration),)
        if self.key and s.renewed_at is not None and self.renewed_at is not None and s.renewed_at < self.renewed_at:
            self._past.add(key)  # credentials issued before the current ones, which we never saw in use
            self.rotations.append(at)
            self.rotations.sort()
            return (Event(at, ROTATION, s.lease_id, s.duration, late=True),)
        first = not self.key
        if not first:
            self._past.add(self.key)
            self.rotations.append(at)
        self.key, self.lease_id, self.renewed_at, self.duration, self.renewals = key, s.lease_id, s.renewed_at, s.duration, 0
        events = [Event(at, FIRST if first else ROTATION, s.lease_id, s.duration)]
        self._vault_renewal = None
        if s.vault_renewed_at is not None and not s.static:
            self._vault_renewal = s.vault_renewed_at
            self.renewals, self.total_renewals = 1, self.total_renewals + 1
            events.append(Event(s.vault_renewed_at, RENEWAL, s.lease_id, s.duration, before_seen=True))
        return tuple(events)
