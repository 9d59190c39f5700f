"""The pure models behind the live widgets, and the widgets drawn from them with a fake lab (no cluster)."""

from __future__ import annotations

import base64
import json

import pytest

from labkit import _livemodel as lm
from labkit.display import MASK

T0 = 1_800_000_000.0
PASSWORD = "A1b2-C3d4-E5f6-secret"
USERNAME = "v-kubernetes-vault-role-dynamic-abc123-1800000000"


@pytest.fixture(autouse=True)
def fresh_role_numbers():
    """Role numbers are one per kernel (shared by the widgets and rotation.observe): start each test at #1."""
    lm.ROLE_NUMBERS._no.clear()
    yield


def test_role_numbers_follow_creation_time_and_are_shared():
    nums = lm.RoleNumbers()
    nums.register(["v-kubernet-vault-ro-Zzz-1700000300", "v-kubernet-vault-ro-Aaa-1700000100"])
    assert nums.label("v-kubernet-vault-ro-Aaa-1700000100") == "role #1"
    assert nums.label("v-kubernet-vault-ro-Zzz-1700000300") == "role #2"
    assert nums.label("v-kubernet-vault-ro-Mmm-1700000200") == "role #3"  # seen later: numbered later
    m = lm.TimelineModel(numbers=nums)
    m.update(T0, roles=["v-kubernet-vault-ro-Aaa-1700000100"])
    m.update(T0 + 1, roles=["v-kubernet-vault-ro-Aaa-1700000100", "v-kubernet-vault-ro-New-1700000400"])
    m.update(T0 + 2, roles=["v-kubernet-vault-ro-New-1700000400"])
    assert [(lane, label) for _, lane, label in m.events] == [("PG role created", "role #4"), ("PG role dropped", "role #1")]


def vds(lease_id: str = "database/creds/r/AAAAAA111", renewed: float = T0, duration: int = 15, generation: int = 1,
        percent: int = 67, conds: str = "True") -> dict:
    return {
        "kind": "VaultDynamicSecret", "metadata": {"name": "vault-dynamic-secret", "namespace": "dyn"},
        "spec": {"renewalPercent": percent, "mount": "database", "path": "creds/r", "destination": {"name": "s"}},
        "status": {"lastRenewalTime": int(renewed), "lastGeneration": generation,
                   "secretLease": {"id": lease_id, "duration": duration, "renewable": True},
                   "conditions": [{"type": t, "status": conds, "reason": "ok"} for t in ("SecretSynced", "Healthy", "Ready")]},
    }


def secret(data: dict[str, str], rv: str = "100", created: str = "2027-01-15T08:00:00Z") -> dict:
    return {"kind": "Secret", "metadata": {"name": "s", "namespace": "dyn", "resourceVersion": rv, "creationTimestamp": created},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def pod(name: str, ready: bool = True, restarts: int = 0, created: str = "2027-01-15T08:00:00Z", deleting: bool = False) -> dict:
    meta: dict = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}],
                                         "containerStatuses": [{"restartCount": restarts}]}}


# -- time parsing ---------------------------------------------------------------------------------------------------------
def test_parse_time_accepts_unix_seconds_rfc3339_and_vault_nanoseconds():
    assert lm.parse_time(1700000000) == 1700000000.0
    assert lm.parse_time("1700000000") == 1700000000.0
    assert lm.parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert lm.parse_time("2023-11-14T22:13:20.123456789Z") == pytest.approx(1700000000.123456)
    assert lm.parse_time("2023-11-14T23:13:20.5+01:00") == pytest.approx(1700000000.5)
    assert lm.parse_time(None) is None and lm.parse_time("") is None


# -- lease countdown -------------------------------------------------------------------------------------------------------
def test_ttl_counts_down_from_last_renewal_plus_duration():
    m = lm.LeaseModel()
    s = m.update(T0 + 4, vds(duration=15))
    assert s.ttl == pytest.approx(11.0)
    assert s.fraction == pytest.approx(11 / 15)
    assert m.state(T0 + 9).ttl == pytest.approx(6.0)
    assert m.state(T0 + 20).ttl == 0.0  # expired: never negative


def test_next_renewal_is_at_renewal_percent_of_the_duration():
    m = lm.LeaseModel()
    s = m.update(T0 + 2, vds(duration=60, percent=67))
    assert s.renewal_percent == 67
    assert s.next_renewal_in == pytest.approx(60 * 0.67 - 2)
    s = m.update(T0 + 2, vds(duration=60, percent=50))
    assert s.next_renewal_in == pytest.approx(28.0)
    assert m.state(T0 + 45).next_renewal_in == pytest.approx(-15.0)  # the window opened 15 s ago


def test_renewal_is_a_window_with_vsos_jitter_not_an_instant():
    m = lm.LeaseModel()
    s = m.update(T0, vds(duration=60, percent=67))
    assert (s.next_renewal_in, s.renewal_window_end_in) == (pytest.approx(40.2), pytest.approx(46.2))
    inside = m.state(T0 + 43)
    assert inside.next_renewal_in < 0 < inside.renewal_window_end_in  # open, not yet overdue
    assert m.state(T0 + 50).renewal_window_end_in == pytest.approx(-3.8)  # overdue only past 77 %
    assert lm.renewal_window(60, 90) == (pytest.approx(54.0), pytest.approx(60.0))  # never past the TTL


def test_max_ttl_horizon_caps_the_ttl_and_counts_from_the_issue_time():
    m = lm.LeaseModel(max_ttl=30)
    m.update(T0 + 1, vds(renewed=T0, duration=15))
    s = m.update(T0 + 21, vds(renewed=T0 + 20, duration=15))  # renewed: 15s more would pass the 30s horizon
    assert s.horizon_in == pytest.approx(9.0)
    assert s.ttl == pytest.approx(9.0)
    # Vault's issue_time wins over the first sighting
    s = m.update(T0 + 21, vds(renewed=T0 + 20, duration=15), issued_at=T0 - 5)
    assert s.horizon_in == pytest.approx(4.0)


def test_renewals_are_counted_when_last_renewal_time_moves_with_the_same_lease():
    m = lm.LeaseModel()
    assert m.update(T0 + 1, vds(renewed=T0)).events == ()
    assert m.update(T0 + 2, vds(renewed=T0)).events == ()  # same status: nothing happened
    s = m.update(T0 + 11, vds(renewed=T0 + 10))
    assert s.events == ((T0 + 10, "renewal"),)
    assert (s.renewals, s.total_renewals, s.rotations) == (1, 1, ())
    assert m.update(T0 + 21, vds(renewed=T0 + 20)).renewals == 2


def test_rotation_is_detected_from_a_new_lease_id():
    m = lm.LeaseModel()
    m.update(T0 + 1, vds(renewed=T0))
    m.update(T0 + 11, vds(renewed=T0 + 10))
    s = m.update(T0 + 21, vds(lease_id="database/creds/r/BBBBBB222", renewed=T0 + 20))
    assert s.events == ((T0 + 20, "rotation"),)
    assert s.rotations == (T0 + 20,)
    assert (s.renewals, s.total_renewals) == (0, 1)  # this lease: none yet; in all: the one before
    assert s.short_id == "database/creds/r/BBBBBB…"
    assert s.ttl == pytest.approx(14.0)


def test_a_new_last_generation_alone_is_not_a_rotation():
    """VSO's updateStatus copies the generation even when the sync after a spec change failed: the old lease and
    Secret stay. A successful sync brings a new lease id, which is the rotation (the old rule counted both)."""
    m = lm.LeaseModel()
    m.update(T0 + 1, vds(generation=1))
    assert m.update(T0 + 5, vds(generation=2)).events == ()
    s = m.update(T0 + 9, vds(lease_id="database/creds/r/BBBBBB222", generation=2, renewed=T0 + 8))
    assert s.events == ((T0 + 8, "rotation"),) and s.rotations == (T0 + 8,)


def test_stale_and_duplicate_reads_are_not_renewals_nor_rotations():
    m = lm.LeaseModel()
    m.update(T0 + 1, vds(renewed=T0))
    assert m.update(T0 + 11, vds(renewed=T0 + 10)).events == ((T0 + 10, "renewal"),)
    assert m.update(T0 + 12, vds(renewed=T0)).events == ()  # an older read: the old rule then counted T0 → T0+10 again
    assert m.update(T0 + 13, vds(renewed=T0 + 10)).events == ()
    assert m.state(T0 + 13).ttl == pytest.approx(12.0)  # the countdown keeps the newest renewal
    m.update(T0 + 21, vds(lease_id="database/creds/r/BBBBBB222", renewed=T0 + 20))
    assert m.update(T0 + 22, vds(renewed=T0 + 10)).events == ()  # the old lease read late: not a rotation back
    s = m.update(T0 + 23, vds(lease_id="database/creds/r/BBBBBB222", renewed=T0 + 20))
    assert (s.events, s.rotations, s.total_renewals, s.lease_id) == ((), (T0 + 20,), 1, "database/creds/r/BBBBBB222")


def test_the_lease_view_counts_a_renewal_vault_reports_from_before_it_started():
    m = lm.LeaseModel()
    s = m.update(T0 + 12, vds(renewed=T0 + 10), issued_at=T0 - 0.4, vault_renewed_at=T0 + 10.3)
    assert (s.events, s.renewals, s.total_renewals) == (((T0 + 10.3, "renewal"),), 1, 1)
    assert m.update(T0 + 13, vds(renewed=T0 + 11)).events == ()  # VSO's record of that renewal, a second later
    assert m.update(T0 + 21, vds(renewed=T0 + 20)).renewals == 2


def test_the_first_sighting_is_not_a_rotation_and_no_lease_is_an_empty_state():
    m = lm.LeaseModel()
    s = m.update(T0, None)
    assert (s.lease_id, s.ttl, s.next_renewal_in, s.short_id) == ("", 0.0, None, "(none)")
    assert m.update(T0 + 1, vds()).events == ()


# -- secrets and masking ------------------------------------------------------------------------------------------------
def test_mask_hides_values_and_keeps_only_their_length():
    from labkit.display import mask

    assert mask(PASSWORD) == f"{MASK} ({len(PASSWORD)} chars)"
    assert PASSWORD not in mask(PASSWORD)
    assert mask(PASSWORD, reveal=True) == PASSWORD
    assert lm.redact(f'password authentication failed for user "{USERNAME}"', [USERNAME]) == (
        f'password authentication failed for user "{mask(USERNAME)}"')


def test_secret_values_are_masked_unless_revealed_and_the_model_keeps_digests():
    m = lm.SecretModel()
    s = m.update(T0, secret({"username": USERNAME, "password": PASSWORD}), vds())
    assert [k for k, _, _ in s.rows] == ["password", "username"]
    assert all(MASK in v and PASSWORD not in v and USERNAME not in v for _, v, _ in s.rows)
    assert PASSWORD not in repr(m) and PASSWORD not in repr(s)
    assert PASSWORD not in json.dumps(m.digests)
    shown = {k: v for k, v, _ in m.state(T0, reveal=True).rows}
    assert shown == {"username": USERNAME, "password": PASSWORD}


def test_a_secret_change_is_detected_and_highlighted_for_a_while():
    m = lm.SecretModel(highlight_seconds=5)
    s = m.update(T0, secret({"username": "u1", "password": "p1"}, rv="100"))
    assert (s.changes, s.just_changed, s.events) == (0, False, ())
    assert s.last_change == lm.parse_time("2027-01-15T08:00:00Z")  # before we watched: its creation
    written = secret({"username": "u1", "password": "p1"}, rv="100")
    written["metadata"]["managedFields"] = [{"manager": "vso", "time": "2027-01-15T08:05:00Z"}, {"manager": "x"}]
    assert lm.SecretModel().update(T0, written).last_change == lm.parse_time("2027-01-15T08:05:00Z")  # or its last write
    s = m.update(T0 + 1, secret({"username": "u1", "password": "p1"}, rv="101"))  # metadata only
    assert (s.changes, s.resource_version) == (0, "101")
    s = m.update(T0 + 2, secret({"username": "u1", "password": "p2"}, rv="102"))
    assert s.events == ((T0 + 2, "secret_change"),)
    assert (s.changes, s.last_change, s.just_changed) == (1, T0 + 2, True)
    assert {k: ch for k, _, ch in s.rows} == {"password": True, "username": False}
    assert m.state(T0 + 8).just_changed is False


def test_secret_owner_conditions_map_to_synced_healthy_ready():
    m = lm.SecretModel()
    s = m.update(T0, secret({"a": "b"}), vds())
    assert s.owner == "VaultDynamicSecret dyn/vault-dynamic-secret"
    assert {k: v[0] for k, v in s.owner_conditions.items()} == {"Synced": "True", "Healthy": "True", "Ready": "True"}
    assert s.owner_light == lm.OK
    assert m.update(T0, secret({"a": "b"}), vds(conds="False")).owner_light == lm.FAIL
    partial = vds()
    partial["status"]["conditions"] = partial["status"]["conditions"][:1]
    assert m.update(T0, secret({"a": "b"}), partial).owner_light == lm.WARN
    assert m.update(T0, None).exists is False


# -- pipeline -----------------------------------------------------------------------------------------------------------
def observation(**kw) -> lm.PipelineObservation:
    base = dict(vault_path="database/creds/r", vault_ok=True, resource=vds(), secret=secret({"username": USERNAME, "password": PASSWORD}),
                pods=[pod("app-7d9f-abcde")], replicas=1, app=(200, {"status": "ok", "connected_as": USERNAME}), deployment="app")
    return lm.PipelineObservation(**(base | kw))


def test_pipeline_is_all_green_when_every_link_works():
    links = lm.PipelineModel().update(T0, observation())
    assert [ln.name for ln in links] == ["vault", "vso", "secret", "pods", "app"]
    assert [ln.light for ln in links] == [lm.OK] * 5
    assert all(USERNAME not in ln.detail and PASSWORD not in ln.detail for ln in links)


def test_pipeline_lights_turn_red_or_amber_where_the_chain_breaks():
    m = lm.PipelineModel()
    links = m.update(T0, observation(vault_ok=False, resource=vds(conds="False"), secret=None, pods=[],
                                     app=None, app_error=f'FATAL: password authentication failed for user "{USERNAME}"'))
    assert [ln.light for ln in links] == [lm.FAIL] * 5
    rolling = m.update(T0, observation(pods=[pod("app-new-11111", ready=False), pod("app-old-22222", deleting=True)]))
    assert rolling[3].light == lm.WARN
    assert m.update(T0, observation(app=(503, {"status": "error", "error": "x"})))[4].light == lm.FAIL


def test_app_error_mentioning_the_current_username_is_redacted():
    m = lm.PipelineModel()
    app = m.update(T0, observation(app=None, app_error=f'password authentication failed for user "{USERNAME}"'))[4]
    assert USERNAME not in app.detail and MASK in app.detail


def test_pod_facts_ready_restarts_and_age():
    assert lm.pod_facts(pod("p", restarts=2, created="2027-01-15T08:00:00Z"), lm.parse_time("2027-01-15T08:01:00Z")) == (
        "p", True, 2, 60.0, False)


# -- timeline -----------------------------------------------------------------------------------------------------------
def test_timeline_records_roles_renewals_rotations_secret_changes_and_pod_restarts():
    m = lm.TimelineModel()
    assert m.update(T0, roles=["v-a"], vds=vds(renewed=T0), secret=secret({"p": "1"}), pods=[pod("app-1")]) == []
    new = m.update(T0 + 11, roles=["v-a"], vds=vds(renewed=T0 + 10), secret=secret({"p": "1"}), pods=[pod("app-1")])
    assert [(t, lane) for t, lane, _ in new] == [(T0 + 10, "lease renewed")]
    new = m.update(T0 + 21, roles=["v-a", "v-b"], vds=vds(lease_id="database/creds/r/ZZZ", renewed=T0 + 20),
                   secret=secret({"p": "2"}), pods=[pod("app-1", restarts=1)])
    assert {lane for _, lane, _ in new} == {"PG role created", "new credentials", "Secret changed", "container restarted"}
    new = m.update(T0 + 31, roles=["v-b"], pods=[pod("app-2")])
    assert sorted(lane for _, lane, _ in new) == ["PG role dropped", "pod started", "pod stopped"]
    assert ("PG role dropped", "role #1") in [(lane, label) for _, lane, label in new]
    assert all("v-a" not in label and "v-b" not in label for _, _, label in m.events)  # role names are credentials
    assert set(lane for _, lane, _ in m.events) <= set(lm.LANES)


def test_timeline_keeps_a_bounded_number_of_events():
    m = lm.TimelineModel(max_events=3)
    m.update(T0, roles=[])
    for i in range(5):
        m.update(T0 + i + 1, roles=[f"v-{j}" for j in range(i + 1)])
    assert [label for _, _, label in m.events] == ["role #3", "role #4", "role #5"]


# -- the widgets, drawn from the models, with a fake lab ------------------------------------------------------------------
class FakeLab:
    """Just enough of the backend contract for the widgets; the cluster reads are patched below."""

    def __init__(self) -> None:
        from labkit.names import Names

        self.names = Names()
        self.kube = self

    def sanitize_for_serialization(self, obj: dict) -> dict:
        return obj

    def app_url(self, namespace: str, name: str) -> str:
        raise RuntimeError(f'no pod: password authentication failed for user "{USERNAME}"')


@pytest.fixture
def fake(monkeypatch):
    from labkit import live

    world = {"secret": secret({"username": USERNAME, "password": PASSWORD, "_raw": json.dumps({"password": PASSWORD})}),
             "vds": vds(renewed=__import__("time").time() - 3), "pods": [pod("app-1")]}
    world["secret"]["metadata"]["ownerReferences"] = [{"kind": "VaultDynamicSecret", "name": "vault-dynamic-secret"}]

    def k8s_get(api, api_version, kind, name, namespace=None):
        return {"Secret": world["secret"], "Deployment": {"spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}}}}[kind]

    monkeypatch.setattr(live.k8s, "get", k8s_get)
    monkeypatch.setattr(live.k8s, "pods", lambda api, ns, sel: world["pods"])
    monkeypatch.setattr(live.vso, "get", lambda lab, kind, name, ns: world["vds"])
    monkeypatch.setattr(live.pg, "lab_roles", lambda lab: [{"role": USERNAME}])
    monkeypatch.setattr(live.LeaseView, "_role", lambda self, mount, role: {"max_ttl": 30})
    monkeypatch.setattr(live.LeaseView, "_lookup", lambda self, lease_id: (None, None))
    monkeypatch.setattr(live.PipelineView, "_vault_path", lambda self, spec: ("database/creds/r", True, "role exists"))
    return world


def widget_state(view) -> str:
    """Everything the widget would save into a notebook's metadata."""
    out, todo = [], [view.box]
    while todo:
        w = todo.pop()
        state = w.get_state()
        out.append(json.dumps(state, default=str, ensure_ascii=False))
        todo += [c for c in getattr(w, "children", ())]
    return "\n".join(out)


def test_secret_view_never_puts_values_into_widget_state_when_not_interactive(fake):
    from labkit.live import SecretView

    view = SecretView(FakeLab())
    assert view.reveal_button.disabled is True
    view.reveal_button.value = True  # even a programmatic click does not reveal
    view.refresh()
    state = widget_state(view)
    assert MASK in state and "password" in state and "VaultDynamicSecret" in state
    assert PASSWORD not in state and USERNAME not in state


def test_secret_view_reveals_on_click_only_when_interactive(fake):
    from labkit.live import SecretView

    view = SecretView(FakeLab(), interactive=True)
    assert PASSWORD not in widget_state(view)
    view.reveal_button.value = True
    assert PASSWORD in view.view.value and view.reveal_button.description == "Hide"
    view.reveal_button.value = False
    assert PASSWORD not in widget_state(view)


def test_views_poll_in_one_bounded_daemon_thread_and_stop(fake):
    import threading
    import time

    from labkit.live import LeaseView, PipelineView, SecretView, Timeline

    lab = FakeLab()
    views = [SecretView(lab, interval=0.1), LeaseView(lab, interval=0.1), PipelineView(lab, interval=0.1), Timeline(lab, interval=0.1)]
    t0 = time.monotonic()
    for v in views:
        assert v.run(0.6) is v
    assert time.monotonic() - t0 < 0.5  # run() returns at once
    ours = [t for t in threading.enumerate() if t.name.startswith("labkit-")]
    assert len(ours) == 4 and all(t.daemon for t in ours)  # one daemon thread per view
    views[1].run(0.6)  # running: extends the run, no second thread
    assert len([t for t in threading.enumerate() if t.name.startswith("labkit-")]) == 4
    views[0].stop()
    assert views[0].join(2)
    assert all(v.join(5) for v in views)
    assert not any(v.running for v in views) and all(v.error == "" for v in views)
    assert all("not polling" in v.status.value for v in views)
    lease = views[1].view.value
    assert "data-ttl=" in lease and views[1].model.max_ttl == 30 and views[1].bar.max == 15
    pipe = views[2]
    assert [ln.light for ln in pipe.links][:4] == ["ok"] * 4 and pipe.links[4].light == "fail"  # the app is unreachable
    for v in views:
        state = widget_state(v)
        assert PASSWORD not in state and USERNAME not in state, type(v).__name__
    fig = views[3].out.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert {t["name"] for t in fig["data"]} == set(lm.LANES)


def test_a_failed_read_is_shown_in_the_widget_redacted_and_never_raised(fake, monkeypatch):
    from labkit import live

    view = live.SecretView(FakeLab())

    def broken(*args, **kwargs):
        raise RuntimeError(f"the API said no to {PASSWORD}\nsecond line")

    monkeypatch.setattr(live.k8s, "get", broken)
    view.refresh()
    assert view.error.startswith("RuntimeError: the API said no to") and MASK in view.error and PASSWORD not in view.error
    assert "last read failed" in view.status.value and PASSWORD not in widget_state(view)


# -- notebook 08: the certificate model ------------------------------------------------------------------------------
def test_a_new_serial_is_a_rotation_and_says_how_early_it_came() -> None:
    from labkit._certmodel import Cert, CertModel

    m = CertModel()
    first, second = Cert("aa:01", 100.0, 145.0), Cert("bb:02", 111.0, 156.0)
    assert not m.update(120.0, first, app_serial="aa:01").rotations
    st = m.update(141.5, second)
    assert [(r.old.serial, r.new.serial) for r in st.rotations] == [("aa:01", "bb:02")]
    assert st.rotations[0].early_by == 3.5 and st.events == ((141.5, "rotation"),)
    assert not st.done  # the app still runs the first certificate
    assert m.update(146.0, second, app_serial="bb:02").done


def test_an_older_read_of_the_secret_is_not_a_rotation() -> None:
    from labkit._certmodel import Cert, CertModel

    m = CertModel()
    m.update(0.0, Cert("bb:02", 111.0, 156.0))
    st = m.update(1.0, Cert("aa:01", 100.0, 145.0))
    assert not st.rotations and st.cert is not None and st.cert.serial == "bb:02"


def test_when_vso_renews_a_certificate() -> None:
    from labkit._certmodel import pki_renewal, vds_renewal

    assert vds_renewal(1000.0, 60.0, 67) == (1000.0 + 60 * 0.67, 1000.0 + 60 * 0.77)
    assert pki_renewal(2000.0, 20.0) == (1980.0, 1981.0)
    assert pki_renewal(2000.0, 0.0) == (1999.0, 2000.0)  # no offset: the last second
# -- static credentials (notebook 10: a database static role, allowStaticCreds) -----------------------------------------
def static_vds(rotated: float, synced: float, ttl: int, period: int = 10) -> dict:
    """A VaultDynamicSecret with allowStaticCreds as VSO leaves it after a sync: no lease, staticCredsMetaData."""
    return {"kind": "VaultDynamicSecret", "metadata": {"name": "vault-static-role-secret", "namespace": "ns"},
            "spec": {"allowStaticCreds": True, "path": "static-creds/exampleapp-static"},
            "status": {"lastRenewalTime": int(synced), "secretLease": {"id": "", "duration": 0, "renewable": False},
                       "staticCredsMetaData": {"lastVaultRotation": int(rotated), "rotationPeriod": period, "ttl": ttl}}}


def test_static_creds_count_down_to_vaults_next_rotation_and_vsos_next_read():
    m = lm.StaticCredsModel()
    st = m.update(T0 + 3, static_vds(rotated=T0, synced=T0 + 1, ttl=9))
    assert st.last_rotation == T0 and st.period == 10 and st.synced_at == T0 + 1
    assert st.ttl == pytest.approx(7.0) and st.fraction == pytest.approx(0.7)  # due at sync + ttl = T0 + 10
    assert st.next_read_in == pytest.approx(7.5)  # VSO reads ttl + 0.5 s after its sync
    assert st.rotations == () and st.events == ()  # the first sighting is the baseline
    late = m.update(T0 + 12, static_vds(rotated=T0, synced=T0 + 1, ttl=9))
    assert late.ttl == 0.0 and late.next_read_in == pytest.approx(-1.5)  # due: VSO retries until Vault has rotated


def test_a_static_rotation_is_a_later_last_vault_rotation_not_a_later_sync():
    m = lm.StaticCredsModel()
    m.update(T0 + 2, static_vds(rotated=T0, synced=T0 + 1, ttl=9))
    assert m.update(T0 + 5, static_vds(rotated=T0, synced=T0 + 4, ttl=6)).events == ()  # a re-read, same rotation
    st = m.update(T0 + 12, static_vds(rotated=T0 + 10, synced=T0 + 11, ttl=9))
    assert st.events == ((T0 + 11, "rotation"),) and st.rotations == (T0 + 11,)
    assert m.update(T0 + 13, static_vds(rotated=T0, synced=T0 + 4, ttl=6)).events == ()  # a stale read changes nothing
    assert m.update(T0 + 13, None).events == () and len(m.rotations) == 1  # nor does a failed read


def test_the_lease_view_shows_static_credentials_and_stops_after_a_rotation(fake):
    import time

    from labkit.live import LeaseView

    now = time.time()
    fake["vds"] = static_vds(rotated=now - 2, synced=now - 1, ttl=8)
    view = LeaseView(FakeLab(), "vault-static-role-secret", "ns", interval=0.05)
    assert "static credentials, no lease" in view.view.value and "data-rotations='0'" in view.view.value
    assert view.bar.max == 10 and 6 <= view.bar.value <= 8
    view.run_until_rotation(5)
    time.sleep(0.2)
    assert view.running
    fake["vds"] = static_vds(rotated=now + 8, synced=now + 9, ttl=9)
    assert view.join(2) and not view.running  # stopped at the rotation, long before its 5 s bound
    assert "data-rotations='1'" in view.view.value and "vsolab-rotation" in view.view.value
