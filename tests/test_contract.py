"""The backend contract: what the notebooks and stage functions rely on, held against one real lab.

It runs against the backend named by ``VSOLAB_CONTRACT_BACKEND`` (``local`` by default; ``minikube`` or
``external`` where their tools and settings are present) and skips, naming what is missing, otherwise.
With the default it also runs against the external backend for real, twice: attendees ``alice-`` and ``bob-``
sharing another local lab's Vault, cluster, database and Helm-installed operator (tests/_external_on_local.py);
and against a second local lab side by side with the first.

Everything the suite creates carries the prefix ``ct-`` (after the backend's own prefix), so it never
touches the tutorial's names, and is removed at the end. The clean-up test runs last: it takes the lab
down, checks nothing is left, and brings it up again for whatever runs after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _labs import running_lab
from kubernetes import client as kclient

from labkit import _procs, app, connect, k8s, static, vault, vso
from labkit._state import port_free
from labkit.backends import get_backend
from labkit.backends.cluster import SharedOperator
from labkit.backends.external import ExternalLab
from labkit.doctor import doctor
from labkit.errors import ParameterError
from labkit.names import Names

BACKEND = os.environ.get("VSOLAB_CONTRACT_BACKEND", "local").strip().lower()
CACHE_LABEL = "app.kubernetes.io/component=client-cache-storage"

pytestmark = pytest.mark.lab


class Prefixed:
    """The lab, seen through other names: stage functions then create ``ct-…`` objects only."""

    def __init__(self, lab: Any, prefix: str) -> None:
        self._lab = lab
        self.names = Names(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lab, name)


#: the local backend runs the suite four times: the session's lab, a second lab side by side, and two external
#: attendees sharing a third lab's Vault, cluster, database and operator
LABS = ["local", "local-second", "external-alice", "external-bob"] if BACKEND == "local" else [BACKEND]


@pytest.fixture(scope="module", params=LABS)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``local-second`` is a second local lab in another state directory, started while the first one still runs
    (two labs side by side on one host)."""
    if request.param == "local":
        yield request.getfixturevalue("local_lab")
        return
    if request.param.startswith("external-"):
        yield request.getfixturevalue("external_labs")[request.param.split("-", 1)[1] + "-"]
        return
    if request.param == "local-second":
        first = request.getfixturevalue("local_lab")
        with running_lab(name="contract-2") as second:  # taken down before the next parameter's lab starts
            assert first.healthy() and second.healthy()
            assert not set(first.ports.values()) & set(second.ports.values()), "two labs share a port"
            yield second
        assert first.healthy(), "taking the second lab down left the first one healthy"
        return
    missing = [f"{r.name}: {r.fix}" for r in doctor(BACKEND) if not r.ok]
    if missing:
        pytest.skip(f"backend {BACKEND!r} is not available here — " + "; ".join(missing))
    the_lab = get_backend(BACKEND, state=tmp_path_factory.mktemp(f"contract-{BACKEND}"))
    the_lab.up(progress=lambda m: None)
    try:
        yield the_lab
    finally:
        the_lab.down(purge=True)


@pytest.fixture(scope="module")
def ct(lab: Any) -> Iterator[Prefixed]:
    """The connect and static stages, applied under ``ct-`` names with a 2s refresh."""
    p = Prefixed(lab, lab.names.prefix + "ct-")
    n = p.names
    try:
        connect.create_vault_namespace(p)
        connect.create_vault_connection(p)
        connect.create_token_reviewer(p)
        connect.enable_kubernetes_auth(p)
        static.enable_kv(p)
        static.write_creds(p)
        static.write_policy(p)
        static.create_role(p)
        static.create_namespace(p)
        static.create_vault_auth(p)
        vso.apply(p, static.static_secret(p, refresh_after="2s"))
        vso.wait_synced(p, "VaultStaticSecret", n.static_vss, n.static_ns, timeout=90)
        yield p
    finally:
        _remove(p)


def _remove(p: Prefixed) -> None:
    n = p.names
    for ns in (n.static_ns, n.vault_ns, app_ns(p)):
        k8s.delete(p.kube, "v1", "Namespace", ns)
    with contextlib.suppress(kclient.exceptions.ApiException):
        kclient.RbacAuthorizationV1Api(p.kube).delete_cluster_role_binding(n.reviewer_binding)
    c = vault.client(p)
    for mount in (n.kv_mount, n.db_mount):
        if f"{mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
            c.sys.disable_secrets_engine(mount)
    if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
        c.sys.disable_auth_method(n.k8s_auth_mount)
    c.sys.delete_policy(n.kv_policy)
    for ns in (n.static_ns, n.vault_ns, app_ns(p)):
        k8s.wait_for(f"namespace {ns} to go", lambda ns=ns: k8s.namespace_gone(p.kube, ns), 180)


def app_ns(p: Any) -> str:
    return p.names.prefix + "app"


def wait_secret_password(p: Prefixed, password: str, timeout: float = 60) -> None:
    n = p.names
    k8s.wait_for("VSO to sync the new KV version into the Secret",
                 lambda: (k8s.secret_data(p.kube, n.static_secret, n.static_ns) or {}).get("password") == password, timeout,
                 hint=lambda: vso.hint_from_events(p, "VaultStaticSecret", n.static_vss, n.static_ns))


def cache_secrets(lab: Any, auth_namespace: str) -> list[str]:
    ns = lab.operator_settings().get("namespace") or lab.names.operator_ns
    items = kclient.CoreV1Api(lab.kube).list_namespaced_secret(ns, label_selector=CACHE_LABEL).items
    return [s.metadata.name for s in items if (s.metadata.labels or {}).get("auth/namespace") == auth_namespace]


# -- addresses and clients -------------------------------------------------------------------------------------------
def test_addresses_and_clients(lab: Any) -> None:
    assert lab.backend in ({"local", "external"} if BACKEND == "local" else {BACKEND})
    for key in ("VAULT_ADDR", "VAULT_TOKEN", "KUBECONFIG", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PATH", "PREFIX",
                "HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        assert key in lab.env(), f"env() lacks {key}"
    assert lab.env()["PREFIX"] == lab.names.prefix
    assert lab.healthy(), [h for h in lab.status() if not h.healthy]
    env = lab.env()
    assert env["VAULT_ADDR"] == lab.vault_addr and env["VAULT_TOKEN"] == lab.vault_token
    assert env["KUBECONFIG"] == str(lab.kubeconfig) and os.path.exists(lab.kubeconfig)
    assert vault.client(lab).is_authenticated()
    assert k8s.reachable(lab.kube)
    assert lab.kube_ca().lstrip().startswith("-----BEGIN CERTIFICATE-----")
    assert lab.kube_api_for_vault.startswith("https://"), "Vault reviews tokens over TLS, never through a plain-HTTP proxy"
    assert lab.vault_addr_for_cluster.startswith(("http://", "https://"))
    for addr in (lab.pg_address, lab.pg_address_for_vault, lab.pg_address_for_pods):
        assert isinstance(addr[0], str) and isinstance(addr[1], int)
    with psycopg.connect(lab.pg_dsn(), connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert isinstance(lab.names, Names)
    assert lab.operator_settings()["client_cache_persistence_model"] in ("none", "direct-unencrypted", "direct-encrypted")


def test_the_addresses_work_from_where_they_are_used(ct: Prefixed) -> None:
    """VSO reaches Vault (VaultConnection valid), Vault reaches the API (VaultAuth login) and PostgreSQL."""
    n = ct.names
    conn = vso.get(ct, "VaultConnection", n.vault_connection, n.vault_ns)
    assert (conn or {}).get("status", {}).get("valid"), "VSO could not reach vault_addr_for_cluster"
    auth = vso.get(ct, "VaultAuth", n.static_auth, n.static_ns)
    assert (auth or {}).get("status", {}).get("valid"), "Vault could not review a token at kube_api_for_vault"
    vault.enable_secrets_engine(ct, "database", n.db_mount)
    host, port = ct.pg_address_for_vault
    # verify_connection=True: Vault logs in to PostgreSQL at pg_address_for_vault, or this raises.
    vault.configure_postgres_connection(ct, name="contract", host=host, port=port, username=getattr(ct, "pg_admin_user", "root"),
                                        password=ct.pg_admin_password, allowed_roles=["none"], mount=n.db_mount)


# -- the app endpoint ------------------------------------------------------------------------------------------------
def test_the_app_endpoint_serves_the_secret_and_reaches_postgres(ct: Prefixed) -> None:
    ns, user, password = app_ns(ct), "ct_app_" + secrets.token_hex(3), secrets.token_urlsafe(12)
    with psycopg.connect(ct.pg_dsn(), connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"create role {user} login password '{password}'")
    try:
        k8s.ensure_namespace(ct.kube, ns)
        k8s.apply(ct.kube, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-creds", "namespace": ns},
                            "stringData": {"username": user, "password": password}})
        app.deploy(ct, ns, "app-creds", timeout=180)
        code, body = app.call(ct, ns, "/secret", timeout=60)
        assert code == 200 and (body["username"], body["password"]) == (user, password)
        code, body = app.call(ct, ns, "/status", timeout=120)
        assert code == 200 and body["connected_as"] == user, body
        assert ct.app_url(ns, "hashicups-exampleapp").startswith("http://127.0.0.1:")
        app.remove(ct, ns)
    finally:
        with psycopg.connect(ct.pg_dsn(), connect_timeout=5, autocommit=True) as conn:
            conn.execute(f"drop role if exists {user}")


# -- operator restart and the client-cache switch --------------------------------------------------------------------------
def skip_if_shared(lab: Any) -> None:
    if getattr(lab, "shared_operator", False):
        pytest.skip("VSO is the team's (VSOLAB_SHARED_OPERATOR=1): attendees never restart it (see the test below)")


def test_a_shared_operator_is_never_restarted_or_reconfigured_by_an_attendee(lab: Any, ct: Prefixed) -> None:
    if not getattr(lab, "shared_operator", False):
        pytest.skip("this lab owns its operator")
    from kubernetes import client as kclient

    op = lab.operator()
    apps = kclient.AppsV1Api(lab.kube)
    generation = apps.read_namespaced_deployment(op.deployment, op.namespace).metadata.generation
    for model in (None, "direct-encrypted"):
        with pytest.raises(SharedOperator, match="the team does"):
            lab.restart_operator(client_cache_persistence_model=model)
    assert apps.read_namespaced_deployment(op.deployment, op.namespace).metadata.generation == generation
    assert lab.env()["VSOLAB_SHARED_OPERATOR"] == "1"
    assert lab.healthy()


def test_restart_operator_keeps_vso_healthy_and_syncing(lab: Any, ct: Prefixed) -> None:
    skip_if_shared(lab)
    before = lab.operator_settings()["client_cache_persistence_model"]
    lab.restart_operator()
    assert lab.healthy(), [h for h in lab.status() if not h.healthy]
    assert lab.operator_settings()["client_cache_persistence_model"] == before
    password = secrets.token_urlsafe(12)
    static.write_creds(ct, password=password)
    wait_secret_password(ct, password)


def test_the_client_cache_switch_reaches_the_running_vso(lab: Any, ct: Prefixed) -> None:
    skip_if_shared(lab)
    n = ct.names
    try:
        lab.restart_operator(client_cache_persistence_model="direct-unencrypted")
        assert lab.operator_settings()["client_cache_persistence_model"] == "direct-unencrypted"
        assert lab.healthy()
        # The running VSO persists the client it logs in with for the ct- VaultAuth: a vso-cc-* Secret.
        k8s.wait_for("VSO to persist its client for the ct- VaultAuth", lambda: cache_secrets(lab, n.static_ns), 90)
        password = secrets.token_urlsafe(12)
        static.write_creds(ct, password=password)
        wait_secret_password(ct, password)
    finally:
        lab.restart_operator(client_cache_persistence_model="none")
    assert lab.operator_settings()["client_cache_persistence_model"] == "none"
    # Back to no persistence: VSO purges the stored clients when it starts.
    k8s.wait_for("VSO to purge its stored clients", lambda: not cache_secrets(lab, n.static_ns), 60)
    assert lab.healthy()


def test_restart_operator_refuses_an_unknown_cache_model(lab: Any) -> None:
    with pytest.raises((ValueError, ParameterError), match=r"none|direct"):
        lab.restart_operator(client_cache_persistence_model="encrypted")
    assert lab.healthy()


# -- event notifications -----------------------------------------------------------------------------------------------------
def test_events_supported_answers_with_a_reason(lab: Any) -> None:
    ok, why = lab.events_supported()
    assert isinstance(ok, bool) and len(why) > 20
    if lab.backend in ("local", "external") and BACKEND == "local":  # the local lab's OpenBao, seen directly or not
        assert not ok and "OpenBao" in why
    if lab.backend == "minikube":
        assert ok == lab.settings.enterprise, why
    if not ok:
        assert "Enterprise" in why


# -- attendees sharing one Vault and cluster (the external backend, over the local lab's Vault, API and database) -------------
def test_an_external_attendee_cleans_up_only_what_carries_their_prefix(lab: Any, ct: Prefixed,
                                                                       tmp_path: Path) -> None:
    if lab.backend != "local":
        pytest.skip("exercised over the local lab's Vault, API and PostgreSQL")
    host, port = lab.pg_address
    env = {**lab.env(), "VSOLAB_PG_ADDR": f"{host}:{port}", "VSOLAB_PG_PASSWORD": lab.pg_admin_password,
           "VSOLAB_PREFIX": "ext", "VSOLAB_INSTALL_VSO": "0"}
    ext = ExternalLab(tmp_path / "ext-state", environ=env)
    n = ext.names
    health = {h.component: h.healthy for h in ext.status()}
    # the local lab's VSO is the Deployment of its Helm release: the attendee finds it
    assert health == {"vault": True, "kubernetes": True, "postgres": True, "vso": True}, health
    connect.create_vault_namespace(ext)
    connect.create_token_reviewer(ext)
    vault.enable_auth_method(ext, "kubernetes", n.k8s_auth_mount)
    static.enable_kv(ext)
    static.write_policy(ext)
    c = vault.client(ext)
    done = ext.down(purge=True)
    assert {f"namespace {n.vault_ns}", f"vault mount {n.kv_mount}/", f"vault auth {n.k8s_auth_mount}/",
            f"vault policy {n.kv_policy}", f"clusterrolebinding {n.reviewer_binding}"} <= set(done), done
    assert k8s.namespace_gone(lab.kube, n.vault_ns)
    assert f"{n.kv_mount}/" not in c.sys.list_mounted_secrets_engines()["data"]
    # The other attendee's objects (the ct- ones) are untouched.
    o = ct.names
    assert not k8s.namespace_gone(lab.kube, o.vault_ns) and not k8s.namespace_gone(lab.kube, o.static_ns)
    assert f"{o.kv_mount}/" in c.sys.list_mounted_secrets_engines()["data"]
    assert f"{o.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]
    assert vso.is_synced(vso.get(ct, "VaultStaticSecret", o.static_vss, o.static_ns))


# -- clean-up (last: takes the lab down, checks, brings it back) -------------------------------------------------------------
def test_down_leaves_nothing_running_then_up_resumes(lab: Any) -> None:
    ports = dict(lab.ports) if lab.backend == "local" else {}
    lab.down()
    try:
        health = lab.status()
        if lab.backend == "local":
            assert not any(h.healthy for h in health)
            assert _procs.tagged(lab.state.lab_id + ":") == [], "no lab process is left"
            busy = {name: port for name, port in ports.items() if not port_free(port)}
            assert not busy, f"ports still bound after down: {busy}"
        elif lab.backend == "minikube":
            assert not any(h.healthy for h in health if h.component in ("vault", "postgres", "vso"))
        else:  # external: the team's Vault and cluster stay; the attendee's namespaces go
            assert all(k8s.namespace_gone(lab.kube, ns) for ns in (lab.names.static_ns, lab.names.dynamic_ns, lab.names.vault_ns))
        assert _procs.tagged(f"{lab.state.lab_id}:pf:") == [], "no port-forward is left"
    finally:
        lab.up(progress=lambda m: None)
    assert lab.healthy()
