"""The one definition of a renewal and a rotation (``labkit._lease``), and ``rotation.observe`` counting by it.

Each case says what VSO v1.5.0 does (``controllers/vaultdynamicsecret_controller.go``) and what the old rules
(``rotation.observe`` and ``_livemodel.LeaseModel`` had one each) got wrong.
"""

from __future__ import annotations

import itertools

import pytest

from labkit import _lease
from labkit._lease import FIRST, RENEWAL, ROTATION, LeaseTracker, Sighting

T0 = 1_800_000_000.0
A, B, C = (f"database/creds/r/{x * 6}{i}" for i, x in enumerate("ABC"))


def kinds(tracker: LeaseTracker, *sightings: Sighting) -> list[str]:
    return [ev.kind for s in sightings for ev in tracker.see(T0 + 100, s)]


def test_the_same_lease_with_a_later_last_renewal_time_is_a_renewal():
    t = LeaseTracker()
    assert kinds(t, Sighting(A, T0, 15)) == [FIRST]
    assert kinds(t, Sighting(A, T0 + 10, 15), Sighting(A, T0 + 20, 15)) == [RENEWAL, RENEWAL]
    assert (t.renewals, t.total_renewals, t.rotations, t.lease_id) == (2, 2, [], A)


def test_a_new_lease_id_is_a_rotation_at_the_time_vso_synced_it():
    t = LeaseTracker()
    t.see(T0, Sighting(A, T0, 15))
    t.see(T0 + 11, Sighting(A, T0 + 10, 15))
    (ev,) = t.see(T0 + 21, Sighting(B, T0 + 20, 15))
    assert (ev.kind, ev.time, ev.lease_id, ev.late) == (ROTATION, T0 + 20, B, False)
    assert (t.renewals, t.total_renewals, t.rotations) == (0, 1, [T0 + 20])


def test_the_first_sighting_is_the_baseline_and_a_read_without_a_lease_changes_nothing():
    t = LeaseTracker()
    assert kinds(t, Sighting(), Sighting("", T0)) == []  # not synced yet, or a failed read
    assert kinds(t, Sighting(A, T0)) == [FIRST]
    assert kinds(t, Sighting(), Sighting(A, T0)) == []


def test_a_missed_observation_still_counts_the_renewal_after_it():
    """A poll that found no lease (a failed read) between two sightings of the same lease: the old observe reset its
    last renewal time to None there and missed the renewal that followed."""
    t = LeaseTracker()
    assert kinds(t, Sighting(A, T0), Sighting(), Sighting(A, T0 + 10)) == [FIRST, RENEWAL]
    # polls missed across a renewal and a rotation: one rotation, no renewal invented for the lease we did not see renewed
    assert kinds(t, Sighting(), Sighting(B, T0 + 30)) == [ROTATION]
    assert (t.total_renewals, len(t.rotations)) == (1, 1)


def test_duplicate_and_out_of_order_reads_bring_nothing():
    """lastRenewalTime only moves forward (VSO sets it at every renewal and sync): an older read is stale, and a lease
    replaced once never comes back (Vault issues a new lease on each read). The old rules counted A→B→A→B as three
    rotations, and observe counted a lastRenewalTime moving back as a renewal."""
    t = LeaseTracker()
    assert kinds(t, Sighting(A, T0), Sighting(A, T0 + 10), Sighting(A, T0 + 10), Sighting(A, T0), Sighting(A, T0 + 10)) == [
        FIRST, RENEWAL]
    assert kinds(t, Sighting(B, T0 + 20), Sighting(A, T0 + 10), Sighting(B, T0 + 20), Sighting(A, T0 + 15)) == [ROTATION]
    assert (t.lease_id, t.renewed_at, t.total_renewals, t.rotations) == (B, T0 + 20, 1, [T0 + 20])


def test_a_lease_seen_only_after_the_next_one_is_a_rotation_seen_late():
    t = LeaseTracker()
    t.see(T0, Sighting(A, T0))
    t.see(T0 + 31, Sighting(C, T0 + 30))
    (ev,) = t.see(T0 + 32, Sighting(B, T0 + 20))  # a slow read of the lease in between
    assert (ev.kind, ev.time, ev.late) == (ROTATION, T0 + 20, True)
    assert (t.lease_id, t.rotations) == (C, [T0 + 20, T0 + 30])  # the current lease stays the newest
    assert kinds(t, Sighting(B, T0 + 25)) == []


def test_a_restarted_watcher_counts_the_renewal_vault_reports_once():
    """A new watcher (a re-run cell) starts from the lease in use. Vault's lookup says it was renewed: one renewal,
    as observe counted it, where the old LeaseModel counted none. VSO records that renewal a second later
    (whole seconds, after Vault answered): the same renewal, not a second one."""
    t = LeaseTracker()
    t.see(T0, Sighting(A, T0))
    t.see(T0 + 11, Sighting(A, T0 + 10))
    again = LeaseTracker()
    found = again.see(T0 + 12, Sighting(A, T0 + 9, vault_renewed_at=T0 + 10.4))  # the VSO status read just before its update
    assert [(ev.kind, ev.before_seen) for ev in found] == [(FIRST, False), (RENEWAL, True)]
    assert kinds(again, Sighting(A, T0 + 11), Sighting(A, T0 + 11)) == []
    assert kinds(again, Sighting(A, T0 + 21)) == [RENEWAL]
    assert again.renewals == t.renewals + 1 == 2
    assert kinds(LeaseTracker(), Sighting(A, T0 + 21)) == [FIRST]  # never renewed: nothing before it


def test_static_credentials_rotate_with_vaults_rotation_and_are_never_renewed():
    """allowStaticCreds: no lease; VSO re-reads the credentials and sets lastRenewalTime on each sync, changed or not.
    Both old rules ignored a resource without a lease id, so they never saw a static rotation."""
    t = LeaseTracker()
    s = [Sighting("", T0 + i * 10, static=True, vault_rotation=T0 - 5 + (i // 2) * 20) for i in range(5)]
    assert kinds(t, *s) == [FIRST, ROTATION, ROTATION]
    assert (t.total_renewals, t.rotations, t.lease_id) == (0, [T0 + 20, T0 + 40], "")


def test_a_sighting_is_read_from_the_vault_dynamic_secret_status():
    vds = {"spec": {"allowStaticCreds": False},
           "status": {"lastRenewalTime": int(T0), "lastGeneration": 3, "secretLease": {"id": A, "duration": 15}}}
    assert Sighting.from_vds(vds, vault_renewed_at=T0 - 1) == Sighting(A, T0, 15.0, False, None, T0 - 1)
    static = {"spec": {"allowStaticCreds": True},
              "status": {"lastRenewalTime": int(T0), "secretLease": {"id": ""}, "staticCredsMetaData": {"lastVaultRotation": int(T0)}}}
    assert Sighting.from_vds(static).key == f"static@{T0:.0f}"
    assert Sighting.from_vds(None) == Sighting()


# -- rotation.observe counts by the same definition -----------------------------------------------------------------------
def _status(lease_id: str, renewed: float, generation: int = 1) -> dict:
    return {"spec": {"renewalPercent": 67},
            "status": {"lastRenewalTime": int(renewed), "lastGeneration": generation,
                       "secretLease": {"id": lease_id, "duration": 15, "renewable": True}}}


@pytest.fixture
def watched(monkeypatch):
    """``rotation.observe`` on a fake lab: the VaultDynamicSecret reads come from a script, then repeat the last."""
    from labkit import rotation
    from labkit.names import Names

    script: list[dict | None] = []
    lookups: dict[str, dict] = {}

    class Lab:
        names, kube = Names(), None

    class Sys:
        def read_lease(self, lease_id):
            return {"data": lookups.get(lease_id, {"issue_time": T0})}

    class Client:
        sys = Sys()

    reads = itertools.count()

    def get(lab, kind, name, ns):
        return script[min(next(reads), len(script) - 1)]

    monkeypatch.setattr(rotation.vso, "get", get)
    monkeypatch.setattr(rotation.vault, "client", lambda lab: Client())
    monkeypatch.setattr(rotation.dynamic, "read_secret", lambda lab: {"username": "v-user-1"})
    monkeypatch.setattr(rotation.pg, "dynamic_roles", lambda lab, group: [])
    monkeypatch.setattr(rotation.k8s, "ready_pods", lambda api, ns, sel: [])

    def run(*reads_: dict | None, vault: dict[str, dict] | None = None):
        script[:] = reads_
        lookups.update(vault or {})
        return rotation.observe(Lab(), 0.4, interval=0.01)

    return run


def test_observe_counts_a_renewal_seen_after_a_failed_read(watched):
    obs = watched(_status(A, T0), None, _status(A, T0 + 10))
    assert (obs.renewals, obs.rotations) == (1, 0)  # the old observe: no renewal


def test_observe_counts_a_renewal_after_a_failed_read_and_ignores_stale_reads(watched):
    obs = watched(_status(A, T0), None, _status(A, T0 + 10), _status(A, T0), _status(B, T0 + 20), _status(A, T0 + 10),
                  _status(B, T0 + 20, generation=2))
    assert (obs.renewals, obs.rotations, obs.leases) == (1, 1, [A, B])
    assert [k for _, k, _ in obs.events] == ["new lease", "lease age", "renewal", "rotation"]


def test_observe_counts_a_renewal_from_before_it_started_once(watched):
    obs = watched(_status(A, T0 + 10), _status(A, T0 + 11), vault={A: {"issue_time": T0, "last_renewal": T0 + 10.5}})
    assert (obs.renewals, obs.rotations) == (1, 0)
    assert obs.events[-1][1:] == ("renewal", f"lease …{A[-6:]} was renewed 10.5s after issue (before watching began)")


def test_the_module_states_its_rules_from_vsos_source():
    doc = _lease.__doc__ or ""
    for word in ("LeaseTruncatedError", "updateStatus", "allowStaticCreds", "lastVaultRotation", "sys/leases/renew"):
        assert word in doc
