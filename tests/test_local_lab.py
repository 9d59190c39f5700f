"""The local lab with real processes: start/stop, service accounts and Vault login,
static and dynamic sync, rotation restarts, and repair. (Issue: embedded local lab.)"""

from __future__ import annotations

import base64
import time

import psutil
import pytest
from _labs import lab_fixture
from kubernetes import client as kclient

from labkit import _procs, app, connect, dynamic, pg, static, vault, vso
from labkit.errors import VaultError
from labkit.notebook import duration_seconds

pytestmark = pytest.mark.lab
REFRESH = "3s"


def _listening_ports(pids: set[int]) -> set[int]:
    out = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.add(c.laddr.port)
    return out


#: One lab for the module, fresh from `up`.
lab = lab_fixture(name="local-lab")


def test_up_twice_changes_nothing_and_everything_is_healthy(lab):
    assert all(h.healthy for h in lab.status()), lab.status()
    pids = {h.component: h.pid for h in lab.status()}
    again = lab.up()
    assert set(again.values()) == {"reused"}
    assert {h.component: h.pid for h in lab.status()} == pids


def test_every_listener_is_on_loopback(lab):
    pids = {p.pid for p in _procs.tagged(lab.state.lab_id + ":")}
    assert len(pids) >= 7
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listeners
    assert {c.laddr.ip for c in listeners} == {"127.0.0.1"}


def test_service_account_token_secret_and_token_request(lab):
    connect.create_vault_namespace(lab)
    connect.create_token_reviewer(lab)
    data = connect.read_token_reviewer(lab)
    assert data["token"].count(".") == 2 and "BEGIN CERTIFICATE" in data["ca.crt"]
    tr = kclient.CoreV1Api(lab.kube).create_namespaced_service_account_token(
        "vault-to-k8s-sa", "vault", kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(audiences=[],
                                                                                                        expiration_seconds=600)))
    assert tr.status.token.count(".") == 2


def test_vault_kubernetes_login_and_refusal(lab):
    connect.enable_kubernetes_auth(lab)
    static.enable_kv(lab)
    static.write_creds(lab)
    static.write_policy(lab)
    static.create_role(lab)
    static.create_namespace(lab)
    core = kclient.CoreV1Api(lab.kube)

    def jwt(sa: str, ns: str) -> str:
        spec = kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
        return core.create_namespaced_service_account_token(sa, ns, spec).status.token

    auth = vault.kubernetes_login(lab, lab.names.static_role, jwt(lab.names.static_sa, lab.names.static_ns))
    assert lab.names.kv_policy in auth["policies"]
    # an account the role does not bind: same namespace, other name; and the default account of another namespace
    core.create_namespaced_service_account(lab.names.static_ns, kclient.V1ServiceAccount(metadata={"name": "intruder"}))
    for sa, ns in (("intruder", lab.names.static_ns), ("default", "default")):
        with pytest.raises(VaultError) as info:
            vault.kubernetes_login(lab, lab.names.static_role, jwt(sa, ns))
        assert "bound_service_account" in str(info.value)


def test_static_sync_follows_vault_within_refresh_after(lab):
    connect.create_vault_connection(lab)
    static.create_vault_auth(lab)
    static.create_static_secret(lab, REFRESH)
    kv = vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"]
    assert static.read_secret(lab)["password"] == kv["password"]
    t0 = time.monotonic()
    static.write_creds(lab, password="changed-" + str(int(t0)))
    while static.read_secret(lab)["password"] != "changed-" + str(int(t0)):
        assert time.monotonic() - t0 < duration_seconds(REFRESH) + 2, "Secret did not follow within refreshAfter + 2s"
        time.sleep(0.1)
    sec = kclient.CoreV1Api(lab.kube).read_namespaced_secret(lab.names.static_secret, lab.names.static_ns)
    assert sec.metadata.labels["app.kubernetes.io/managed-by"] == "hashicorp-vso"


def test_deployment_reads_secret_and_serves_it(lab):
    static.deploy_app(lab)
    code, body = app.call(lab, lab.names.static_ns, "/secret")
    assert code == 200 and body["password"] == static.read_secret(lab)["password"]
    pod = kclient.CoreV1Api(lab.kube).list_namespaced_pod(lab.names.static_ns).items[0]
    assert pod.status.pod_ip == "127.0.0.1" and pod.spec.node_name == "vsolab-node"
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    assert pod.status.container_statuses[0].state.running is not None
    static.remove_app(lab)


def test_dynamic_credentials_log_in_and_rotation_restarts_pods(lab):
    dynamic.enable_database(lab)
    dynamic.configure_connection(lab)
    dynamic.create_db_role(lab, "10s", "20s")
    dynamic.write_policy(lab)
    dynamic.create_role(lab)
    dynamic.create_namespace(lab)
    dynamic.create_vault_auth(lab)
    dynamic.create_dynamic_secret(lab)
    dynamic.deploy_app(lab)
    sec = dynamic.read_secret(lab)
    assert pg.can_login(lab, sec["username"], sec["password"]) == (True, sec["username"])
    code, body = app.call(lab, lab.names.dynamic_ns, "/status")
    assert code == 200 and body["connected_as"] == sec["username"]
    _, first = app.call(lab, lab.names.dynamic_ns, "/secret")
    # wait for VSO to rotate (max_ttl 20s) and restart the Deployment
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _, now = app.call(lab, lab.names.dynamic_ns, "/secret", timeout=5)
            if now["username"] != first["username"]:
                break
        except Exception:  # pods rolling
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the app never got rotated credentials")
    assert now["pid"] != first["pid"], "a rollout restart must start a new process"
    assert now["username"] == dynamic.read_secret(lab)["username"]
    code, body = app.call(lab, lab.names.dynamic_ns, "/status")
    assert code == 200 and body["connected_as"] == now["username"]


@pytest.mark.parametrize("component", ["openbao", "kcm"])
def test_killed_component_shows_in_status_and_up_repairs_it(lab, component):
    before = vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"]
    lab.kill(component)
    status = {h.component: h for h in lab.status()}
    assert not status[component].healthy and status[component].pid is None
    actions = lab.up()
    assert actions[component].startswith("restarted")
    assert all(h.healthy for h in lab.status())
    assert vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"] == before
    vso.wait_synced(lab, "VaultStaticSecret", lab.names.static_vss, lab.names.static_ns, timeout=60)
    vso.wait_synced(lab, "VaultDynamicSecret", lab.names.dynamic_vds, lab.names.dynamic_ns, timeout=60)


def test_down_then_up_keeps_vault_data_leases_and_roles(lab):
    # a credential with a long lease, owned by the root token (VSO's own leases here rotate every 20 s)
    dynamic.create_db_role(lab, "1h", "2h")
    creds = vault.generate_credentials(lab, lab.names.db_role)
    token = lab.vault_token
    lab.down()
    lab.up()
    assert lab.vault_token == token and vault.client(lab).is_authenticated()
    assert vault.read_lease(lab, creds["lease_id"])["id"] == creds["lease_id"]
    assert creds["username"] in {r["role"] for r in pg.dynamic_roles(lab)}
    assert pg.can_login(lab, creds["username"], creds["password"]) == (True, creds["username"])
    assert vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"]["username"] == "static-user"
    vault.client(lab).sys.revoke_lease(creds["lease_id"])


def test_down_leaves_no_process_and_no_port(lab):
    pids = {p.pid for p in _procs.tagged(lab.state.lab_id + ":")}
    ports = _listening_ports(pids)
    assert ports
    lab.down()
    assert not _procs.tagged(lab.state.lab_id + ":")
    listening = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert not ports & listening
    assert not list(lab.state.path("run").glob("*.pid"))
    lab.up()  # leave it running for the fixture's purge


def test_token_is_base64_in_the_secret(lab):
    raw = kclient.CoreV1Api(lab.kube).read_namespaced_secret("vault-auth-secret", "vault").data["token"]
    assert base64.b64decode(raw).decode() == connect.read_token_reviewer(lab)["token"]
