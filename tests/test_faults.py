"""Faults: the local lab survives them, and each ends with the app's /status healthy and nothing lost.

One lab, brought to the start of notebook 04 (connect, static and dynamic secrets, the app running on
dynamic credentials), then, in order: VSO killed in the middle of a rotation (without, then with, the
persistent client cache), OpenBao killed, PostgreSQL stopped and killed, kube-apiserver killed, the whole
lab SIGKILLed and recovered by ``labkit up``, and the stuck pieces a crash can leave (zombies, stale pid
files, taken ports). After each fault: exactly one Ready app pod, connected as the Secret's user, one
process per pod, no orphaned pod directory, no zombie left to the lab to reap.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import psutil
import pytest
from _labs import lab_fixture
from _params import ci_params
from kubernetes import client as kclient

from labkit import _cells, _procs, app, cache, dynamic, k8s, pg, static, vault, vso
from labkit._state import port_free
from labkit.backends.local import LocalLab, runas
from labkit.backends.local.kubelet import PORT_ANNOTATION
from labkit.notebook import duration_seconds

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent
# CI's short TTLs, with a longer max_ttl so that one rotation is far enough from the next one
PARAMS = ci_params(DEFAULT_TTL="15s", MAX_TTL="45s")
T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------------------
def wait(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.3) -> T:
    """Poll ``probe`` (errors count as "not yet": components restart under it) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = "none"
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a component restarting
            last = f"{type(exc).__name__}: {str(exc)[:300]}"
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f}s for {what}; last error: {last}")
        time.sleep(interval)


def app_pods(lab: LocalLab) -> list[Any]:
    n = lab.names
    return k8s.pods(lab.kube, n.dynamic_ns, f"app={n.app}")


def app_healthy(lab: LocalLab, timeout: float = 120) -> str:
    """Exactly one app pod, Ready, whose /status connects as the Secret's user; return that user."""
    n = lab.names

    def probe() -> str | None:
        user = dynamic.read_secret(lab).get("username")
        if not user or len(app_pods(lab)) != 1 or len(k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}")) != 1:
            return None
        code, body = app.call(lab, n.dynamic_ns, "/status", timeout=5)
        _, creds = app.call(lab, n.dynamic_ns, "/secret", timeout=5)
        ok = code == 200 and body.get("connected_as") == user == creds.get("username")
        return user if ok else None

    return wait("one Ready app pod whose /status connects with the Secret's credentials", probe, timeout)


def pod_processes(lab: LocalLab) -> Counter[str]:
    """Pod uid → live processes the node agent runs for it."""
    out: Counter[str] = Counter()
    for proc in _procs.tagged(lab.state.lab_id + ":pod:"):
        with contextlib.suppress(psutil.Error):
            out[proc.environ()[_procs.TAG_ENV].rsplit(":", 1)[1]] += 1
    return out


def pods_and_processes_agree(lab: LocalLab) -> None:
    """One process per container of a running pod (the operator's has two), none for a pod the API does not know,
    no directory of a deleted pod."""

    def diff() -> str:
        pods = kclient.CoreV1Api(lab.kube).list_pod_for_all_namespaces().items
        live = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        running = {p.metadata.uid for p in live}
        containers = {p.metadata.uid: len(p.spec.containers) for p in live}
        procs = pod_processes(lab)
        dirs = {d.name for d in runas.pod_root(lab.state).iterdir() if not d.name.startswith(".")}
        expected_dirs = {f"{p.metadata.namespace}_{p.metadata.name}" for p in pods}
        problems = []
        if set(procs) != running:
            problems.append(f"pods running {sorted(running)} but processes for {sorted(procs)}")
        if any(c != containers.get(uid, 1) for uid, c in procs.items()):
            problems.append(f"duplicated pod processes: {dict(procs)}")
        if dirs - expected_dirs:
            problems.append(f"directories of deleted pods: {sorted(dirs - expected_dirs)}")
        return "; ".join(problems)

    last = ""

    def probe() -> bool:
        nonlocal last
        last = diff()
        return not last

    deadline = time.monotonic() + 30
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"pods and their processes disagree: {last}")
        time.sleep(0.5)


def lab_processes(lab: LocalLab) -> list[psutil.Process]:
    """Live processes of this lab: tagged, or working in / started from its state or PostgreSQL directory.

    PostgreSQL rewrites its children's environment for their process titles, so the tag alone misses them.
    """
    roots = (str(lab.state.root), str(lab.state.pg_data_dir()))
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            tag = proc.environ().get(_procs.TAG_ENV, "")
            where = proc.cwd()
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if tag.startswith(lab.state.lab_id + ":") or any(where == r or where.startswith(r + "/") or r in cmd for r in roots):
            found.append(proc)
    return found


def zombies_left_to_reap(lab: LocalLab) -> list[tuple[int, int, str]]:
    """Zombies whose parent is this process (the lab's starter) or a live lab process: theirs to reap, not init's."""
    parents = {os.getpid()} | {p.pid for p in lab_processes(lab)}
    out = []
    for proc in psutil.process_iter(["pid", "ppid", "status", "name"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE and proc.info["ppid"] in parents:
            out.append((proc.info["pid"], proc.info["ppid"], proc.info["name"]))
    return out


def kill_everything(lab: LocalLab) -> list[int]:
    """SIGKILL every process tagged with the lab's id at once, as a crash would; return their pids.

    The killed processes are not reaped here (a crash reaps nothing): that is left to the kit.
    """
    procs = _procs.tagged(lab.state.lab_id + ":")
    assert len(procs) >= 9, [p.name() for p in procs]  # seven components, the operator's pod and the app's
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait("the killed lab's processes (and PostgreSQL's children) to be gone", lambda: not lab_processes(lab), 30)
    return [p.pid for p in procs]


def labkit(lab: LocalLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VSOLAB_STATE", "VSOLAB_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "labkit", "--state", str(lab.state.root), *args], capture_output=True,
                          text=True, cwd=str(REPO), env=env, timeout=600)


def only_restarted(actions: dict[str, str], *names: str) -> None:
    restarted = {k for k, v in actions.items() if v != "reused"}
    assert restarted == set(names), actions
    for name in names:
        assert actions[name].startswith("restarted"), actions


def manager_restarts(lab: LocalLab) -> int:
    pods = k8s.ready_pods(lab.kube, lab.names.operator_ns, "control-plane=controller-manager")
    assert len(pods) == 1, pods
    return next(s.restart_count for s in pods[0].status.container_statuses if s.name == "manager")


def manager_restarted(lab: LocalLab, before: int) -> None:
    """The operator pod's manager container came back Ready with one more restart; ``status`` says so."""
    wait("the node agent to restart the killed manager", lambda: k8s.ready_pods(
        lab.kube, lab.names.operator_ns, "control-plane=controller-manager") and manager_restarts(lab) == before + 1, 60)
    row = {h.component: h for h in lab.status()}["operator"]
    assert row.healthy and "restarts" in row.detail, row


def rotation_in_progress(lab: LocalLab, *, recorded: bool) -> tuple[str, str, list[str]]:
    """Wait for VSO to rotate the credentials; return (lease id, username, app pods) at that instant.

    ``recorded``: also wait until VSO recorded the new lease in the VaultDynamicSecret's status (the Secret is
    written first, the status a moment later); else return as soon as the Secret changes.
    """
    first_user = dynamic.read_secret(lab)["username"]
    first_lease = dynamic.lease(lab)["lease_id"]
    limit = duration_seconds(PARAMS["MAX_TTL"]) + 30

    def rotated() -> tuple[str, str] | None:
        user = dynamic.read_secret(lab).get("username")
        lease = dynamic.lease(lab)["lease_id"]
        if user and user != first_user and (not recorded or lease not in ("", first_lease)):
            return lease, user
        return None

    deadline = time.monotonic() + limit
    while (found := rotated()) is None:
        assert time.monotonic() < deadline, f"VSO did not rotate the credentials within {limit:.0f}s"
        time.sleep(0.02)
    return found[0], found[1], [p.metadata.name for p in app_pods(lab)]


# -- the lab ---------------------------------------------------------------------------------------------------
#: One lab at the start of notebook 04, its app healthy, for every fault below in turn.
lab = lab_fixture(4, params=PARAMS, name="faults", prepare=app_healthy)


# -- VSO -------------------------------------------------------------------------------------------------------
def test_vso_killed_mid_rotation_without_cache_issues_new_credentials_and_restarts_the_app(lab: LocalLab) -> None:
    assert lab.operator_settings()["client_cache_persistence_model"] == "none"
    app_healthy(lab)
    lease_at_kill, user_at_kill, pods_at_kill = rotation_in_progress(lab, recorded=False)
    restarts = manager_restarts(lab)
    lab.kill("operator")
    t_up = time.monotonic()
    manager_restarted(lab, restarts)  # the node agent restarts the container, as a kubelet would

    # Without a persisted cache the new VSO has no token for the old lease: it asks Vault for new credentials.
    wait("the restarted VSO to issue new credentials",
         lambda: dynamic.lease(lab)["lease_id"] not in ("", lease_at_kill)
         and dynamic.read_secret(lab)["username"] != user_at_kill, 30)
    assert time.monotonic() - t_up < duration_seconds(PARAMS["MAX_TTL"]) / 2, "new credentials came from a later rotation"
    user = app_healthy(lab)
    assert user != user_at_kill
    assert not set(pods_at_kill) & {p.metadata.name for p in app_pods(lab)}, "the app was not restarted"
    pods_and_processes_agree(lab)
    # nothing orphaned in PostgreSQL: the killed VSO's roles expire with their leases
    wait("PostgreSQL to hold only the role the app uses",
         lambda: {r["role"] for r in pg.dynamic_roles(lab)} == {dynamic.read_secret(lab)["username"]}, 60)
    assert not zombies_left_to_reap(lab)


def test_vso_killed_mid_rotation_with_the_persistent_cache_keeps_the_lease(lab: LocalLab) -> None:
    n = lab.names
    _cells.run_steps(lab, 5, PARAMS)  # notebook 05's own cells: transit, policy, the operator's role, helm upgrade
    wait("VSO to store the dynamic secret's client in its encrypted cache", lambda: [
        s for s in cache.cache_secrets(lab) if s["labels"].get("encrypted") == "true"
        and s["labels"].get("auth/namespace") == n.dynamic_ns], 90)
    app_healthy(lab)
    lease_at_kill, user_at_kill, _ = rotation_in_progress(lab, recorded=True)
    restarts = manager_restarts(lab)
    lab.kill("operator")
    renewed_before = dynamic.lease(lab)["last_renewal"]
    manager_restarted(lab, restarts)
    assert lab.operator_settings()["client_cache_persistence_model"] == "direct-encrypted"

    # The restored client renews the very lease VSO held when it died, and issues nothing new.
    wait("the restarted VSO to renew the lease it held", lambda: (dynamic.lease(lab)["last_renewal"] or 0) > (renewed_before or 0),
         duration_seconds(PARAMS["DEFAULT_TTL"]) + 10)
    assert dynamic.lease(lab)["lease_id"] == lease_at_kill
    assert dynamic.read_secret(lab)["username"] == user_at_kill
    assert vault.read_lease(lab, lease_at_kill)["ttl"] > 0
    assert app_healthy(lab) == user_at_kill
    assert dynamic.lease(lab)["lease_id"] == lease_at_kill, "the lease changed while the app settled"
    pods_and_processes_agree(lab)
    assert not zombies_left_to_reap(lab)


# -- OpenBao ---------------------------------------------------------------------------------------------------
def _vault_config(lab: LocalLab) -> dict[str, Any]:
    c = vault.client(lab)
    n = lab.names
    return {
        "mounts": sorted(c.sys.list_mounted_secrets_engines()["data"]),
        "auth": sorted(c.sys.list_auth_methods()["data"]),
        "policies": sorted(c.sys.list_acl_policies()["data"]["keys"]),
        "roles": {r: vault.read_kubernetes_role(lab, r) for r in (n.static_role, n.dynamic_role)},
        "db role": vault.read_database_role(lab, n.db_role),
        "kv": vault.kv_get(lab, n.kv_mount, n.kv_path)["data"],
    }


def test_openbao_killed_keeps_configuration_leases_and_tokens_and_vso_reconnects(lab: LocalLab) -> None:
    n = lab.names
    app_healthy(lab)
    config = _vault_config(lab)
    root = lab.vault_token
    child = vault.client(lab).auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    creds = vault.generate_credentials(lab, n.db_role, mount=n.db_mount)  # a lease of our own, beside VSO's
    lab.kill("openbao")
    assert not {h.component: h for h in lab.status()}["openbao"].healthy
    only_restarted(lab.up(progress=lambda m: None), "openbao")

    assert lab.vault_token == root and vault.client(lab).is_authenticated()
    assert hvac.Client(url=lab.vault_addr, token=child).lookup_token()["data"]["policies"] == ["default"]
    assert _vault_config(lab) == config
    lease = vault.read_lease(lab, creds["lease_id"])
    assert lease["id"] == creds["lease_id"] and lease["ttl"] > 0
    assert pg.can_login(lab, creds["username"], creds["password"]) == (True, creds["username"])
    vault.client(lab).sys.revoke_lease(creds["lease_id"])

    # VSO reconnects: the static secret follows a new KV version, the dynamic one keeps renewing
    t0 = time.time()
    static.write_creds(lab, password=f"after-openbao-restart-{int(t0)}")
    wait("the VaultStaticSecret to follow Vault again",
         lambda: static.read_secret(lab).get("password") == f"after-openbao-restart-{int(t0)}",
         duration_seconds(PARAMS["REFRESH_AFTER"]) + 15)
    wait("VSO to renew or rotate the dynamic lease again", lambda: (dynamic.lease(lab)["last_renewal"] or 0) > t0,
         duration_seconds(PARAMS["DEFAULT_TTL"]) + 10)
    vso.wait_synced(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns, timeout=60)
    app_healthy(lab)
    pods_and_processes_agree(lab)


# -- PostgreSQL ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_postgres_outage_is_reported_by_the_app_and_recovers(lab: LocalLab, how: str) -> None:
    n = lab.names
    app_healthy(lab)
    marker = f"faults_{how}"
    with pg._connect(lab) as conn:
        conn.execute(f"create table if not exists {marker} (note text)")
        conn.execute(f"insert into {marker} values ('written before the outage')")
    if how == "stop":
        assert lab.components["postgres"].stop()
    else:
        lab.kill("postgres")
    assert not {h.component: h for h in lab.status()}["postgres"].healthy
    code, body = app.call(lab, n.dynamic_ns, "/status")
    assert code == 503 and body["status"] == "error", body
    assert body["database"] == f"127.0.0.1:{lab.ports['postgres']}"
    assert re.search(r"connection|refused|server", body["error"], re.I), body
    actions = lab.up(progress=lambda m: None)
    assert {k for k, v in actions.items() if v != "reused"} == {"postgres"}, actions
    assert actions["postgres"] == ("started" if how == "stop" else "restarted (it had died)")
    app_healthy(lab)
    with pg._connect(lab) as conn:
        assert conn.execute(f"select note from {marker}").fetchall() == [("written before the outage",)]
        conn.execute(f"drop table {marker}")
    creds = dynamic.read_secret(lab)
    assert pg.can_login(lab, creds["username"], creds["password"]) == (True, creds["username"])
    pods_and_processes_agree(lab)


# -- kube-apiserver -----------------------------------------------------------------------------------------------
def test_apiserver_killed_then_vso_and_the_agent_resume_watching(lab: LocalLab) -> None:
    user = app_healthy(lab)
    uid_before = app_pods(lab)[0].metadata.uid
    agent_pid, kcm_pid = (lab.components[c].pid() for c in ("agent", "kcm"))
    vso_pid = lab._manager_pid()
    lab.kill("apiserver")
    time.sleep(3)  # long enough for every watch to break
    only_restarted(lab.up(progress=lambda m: None), "apiserver")
    assert (lab.components["agent"].pid(), lab._manager_pid(), lab.components["kcm"].pid()) == (agent_pid, vso_pid, kcm_pid)
    pods_and_processes_agree(lab)
    assert [p.metadata.uid for p in app_pods(lab)] == [uid_before], "the outage alone must not replace the pod"

    # A spec change reaches VSO only through its watch; the pod VSO's restart creates reaches the agent only through its.
    label = f"after-apiserver-restart-{int(time.time())}"
    vso.apply(lab, dynamic.dynamic_secret(lab, PARAMS["RENEWAL_PERCENT"], ttl_label=label))
    wait("VSO to see the changed VaultDynamicSecret and fetch new credentials",
         lambda: dynamic.read_secret(lab).get("username") != user, 30)
    new_user = app_healthy(lab)
    assert new_user != user and app_pods(lab)[0].metadata.uid != uid_before
    pods_and_processes_agree(lab)
    port = (app_pods(lab)[0].metadata.annotations or {}).get(PORT_ANNOTATION)
    assert port and not port_free(int(port))
    assert not zombies_left_to_reap(lab)


# -- the whole lab --------------------------------------------------------------------------------------------------
def test_whole_lab_sigkilled_labkit_up_recovers_it_and_labkit_down_leaves_nothing(lab: LocalLab) -> None:
    n = lab.names
    app_healthy(lab)
    config = _vault_config(lab)
    root = lab.vault_token
    app_port = int((app_pods(lab)[0].metadata.annotations or {})[PORT_ANNOTATION])
    kill_everything(lab)
    status = labkit(lab, "status")
    # every component, and the operator row (unknown while the API server is down)
    assert status.returncode == 1 and status.stdout.count("DOWN") == len(lab.components) + 1, status.stdout

    up = labkit(lab, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    for name in lab.components:
        assert re.search(rf"^\s+{name}\s+restarted \(it had died\)", up.stdout, re.M), up.stdout
    assert lab.healthy()
    assert lab.vault_token == root and _vault_config(lab) == config
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns, timeout=60)
    app_healthy(lab)
    pods_and_processes_agree(lab)

    ports = {**lab.ports, "app": int((app_pods(lab)[0].metadata.annotations or {})[PORT_ANNOTATION]), "old app": app_port}
    down = labkit(lab, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    _nothing_left(lab, ports)


def _nothing_left(lab: LocalLab, ports: dict[str, int]) -> None:
    left = [(p.pid, p.name()) for p in lab_processes(lab)]
    assert not left, f"processes left after down: {left}"
    assert not list(lab.state.path("run").glob("*.pid")), "stale pid files after down"
    taken = {name: port for name, port in ports.items() if not port_free(port)}
    assert not taken, f"ports still taken after down: {taken}"
    assert not zombies_left_to_reap(lab)


# -- stuck pieces -----------------------------------------------------------------------------------------------------
def test_down_after_a_crash_stops_what_is_left_and_leaves_nothing(lab: LocalLab) -> None:
    """A learner finds the lab crashed and runs `labkit down` (not `up`): no process, pid file, port or zombie is left."""
    lab.up(progress=lambda m: None)
    app_healthy(lab)
    ports = dict(lab.ports)
    kill_everything(lab)
    assert lab.down() == [], "nothing was running, so nothing is reported as stopped"
    _nothing_left(lab, ports)


def test_a_stale_pid_file_naming_another_process_is_ignored_and_that_process_left_alone(lab: LocalLab) -> None:
    """The pid in run/etcd.pid now belongs to an unrelated process (pid reuse after a reboot or crash)."""
    assert not lab_processes(lab)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        lab.state.path("run", "etcd.pid").write_text(str(stranger.pid))
        assert {h.component: h for h in lab.status()}["etcd"].pid is None
        actions = lab.up(progress=lambda m: None)
        assert actions["etcd"] == "restarted (it had died)"
        assert lab.components["etcd"].pid() not in (None, stranger.pid)
        assert stranger.poll() is None, "up killed a process that is not the lab's"
        app_healthy(lab)
        lab.down()
        assert stranger.poll() is None, "down killed a process that is not the lab's"
        _nothing_left(lab, dict(lab.ports))
    finally:
        stranger.kill()
        stranger.wait()
