"""Security of the local lab: loopback only, private files, no secret in outputs or logs, a clean clean-up,
and kubernetes auth roles that bind exactly what the notebooks say.

One lab at the start of notebook 06 (connect, static, dynamic, rotation and the client cache applied). A
recorder thread notes every credential the lab generates while the module runs (root token, unseal key,
PostgreSQL admin password, the KV password, the dynamic usernames and passwords, the token reviewer's JWT);
the leak tests scan for exactly those values. The clean-up test runs last.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _labs import lab_fixture
from _params import ci_params
from hvac import exceptions as hvexc
from kubernetes import client as kclient

from labkit import _procs, cleanup, dynamic, k8s, pg, vault
from labkit.backends.local import LocalLab
from labkit.backends.local.kubelet import PORT_ANNOTATION
from labkit.errors import VaultError

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PARAMS = ci_params()
MODULE_START = time.time()


class Recorder(threading.Thread):
    """Polls the lab for the credentials it generates: ``secrets`` (passwords, tokens, keys) and ``usernames``."""

    def __init__(self, lab: LocalLab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.secrets: set[str] = set()
        self.usernames: set[str] = set()
        self.stopping = threading.Event()
        self.core = kclient.CoreV1Api(k8s.api_client(lab.kubeconfig))

    def snapshot(self) -> None:
        n = self.lab.names
        sec = self.lab.state.secrets()
        self.secrets.update(str(sec[k]) for k in ("vault_root_token", "vault_unseal_key", "postgres_password") if sec.get(k))
        for ns, usernames in ((n.static_ns, False), (n.dynamic_ns, True), (n.vault_ns, False)):
            for s in self.core.list_namespaced_secret(ns, _request_timeout=5).items:
                for key, raw in (s.data or {}).items():
                    value = base64.b64decode(raw).decode(errors="replace")
                    if key in ("password", "token"):
                        self.secrets.add(value)
                    elif key == "username" and usernames:
                        self.usernames.add(value)

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):  # namespaces come and go (clean-up)
                self.snapshot()
            self.stopping.wait(0.5)

    def values(self) -> tuple[set[str], set[str]]:
        self.snapshot()
        secrets = {v for v in self.secrets if len(v) >= 8}
        assert len(secrets) >= 5 and any(v.startswith("v-") for v in self.usernames), \
            "the recorder saw too few credentials: a scan for them would prove nothing"
        return secrets, {v for v in self.usernames if len(v) >= 8}


#: One lab at the start of notebook 06 (connect, static, dynamic, rotation and the client cache applied).
lab = lab_fixture(6, params=PARAMS, name="security")


@pytest.fixture(scope="module")
def recorder(lab: LocalLab) -> Iterator[Recorder]:
    rec = Recorder(lab)
    rec.start()
    yield rec
    rec.stopping.set()
    rec.join(5)


def labkit(lab: LocalLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VSOLAB_STATE", "VSOLAB_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "labkit", "--state", str(lab.state.root), *args], capture_output=True,
                          text=True, cwd=str(REPO), env=env, timeout=600)


def lab_pids(lab: LocalLab) -> set[int]:
    """Tagged processes, and PostgreSQL's children (their environment is rewritten for process titles)."""
    pids = {p.pid for p in _procs.tagged(lab.state.lab_id + ":")}
    pg_dir = str(lab.state.pg_data_dir())
    for proc in psutil.process_iter():
        try:
            if proc.cwd() == pg_dir:
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- listeners ---------------------------------------------------------------------------------------------------
def test_every_listener_is_on_loopback_and_every_lab_port_is_the_labs(lab: LocalLab, recorder: Recorder) -> None:
    n = lab.names

    def app_ports() -> dict[str, int]:  # the Ready app pods (not ones starting or going away), by uid
        return {p.metadata.uid: int((p.metadata.annotations or {})[PORT_ANNOTATION])
                for p in k8s.ready_pods(lab.kube, n.dynamic_ns, f"app={n.app}")}

    before = app_ports()
    assert before, "the app runs, so its port is checked too"
    pids = lab_pids(lab)
    sockets = [c for c in psutil.net_connections(kind="inet") if c.pid in pids
               and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr))]
    # The app rolls at every credential rotation (every ~30 s at CI parameters): a pod listed before the sockets were
    # read may have gone by then, with its port. Only the pods there before and after count (a clean-clone CI run failed on that).
    after = app_ports()
    pod_ports = {port for uid, port in before.items() if uid in after}
    off_loopback = [(psutil.Process(c.pid).name(), c.laddr) for c in sockets if c.laddr.ip != "127.0.0.1"]
    assert not off_loopback, f"listening beyond 127.0.0.1: {off_loopback}"
    mine = {c.laddr.port for c in sockets}
    # The operator_* ports are held only by the Helm release's pod (`labkit operator install`, tests/test_helm.py).
    expected = {port for name, port in lab.ports.items() if not name.startswith("operator_")} | pod_ports
    assert expected <= mine, f"lab ports not held by the lab: {sorted(expected - mine)}"
    strangers = [(c.pid, c.laddr) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in expected and c.pid not in pids]
    assert not strangers, f"another process listens on a lab port: {strangers}"


# -- permissions -----------------------------------------------------------------------------------------------------
def test_state_dir_is_0700_and_key_and_credential_files_are_0600(lab: LocalLab, recorder: Recorder) -> None:
    root = lab.state.root
    assert mode(root) == 0o700 and root.stat().st_uid == os.getuid()
    for sub in ("pki", "kube", "data", "logs", "run", "pods"):
        assert mode(root / sub) == 0o700, sub
    private = [*sorted((root / "pki").iterdir()), *sorted((root / "kube").iterdir()),
               root / "secrets.json", root / "openbao.hcl", root / "state.json"]
    assert {p.name for p in private} >= {"ca.key", "sa.key", "apiserver.key", "admin.key", "etcd.key", "etcd-client.key",
                                         "admin.kubeconfig", "secrets.json", "openbao.hcl"}
    loose = {str(p.relative_to(root)): oct(mode(p)) for p in private if mode(p) != 0o600}
    assert not loose, f"key or credential files readable beyond their owner: {loose}"
    pg_data = lab.state.pg_data_dir()
    assert mode(pg_data) == 0o700 and (pg_data / "PG_VERSION").exists()


def test_the_root_token_and_unseal_key_are_stored_once(lab: LocalLab, recorder: Recorder) -> None:
    sec = lab.state.secrets()
    needles = [sec["vault_root_token"].encode(), sec["vault_unseal_key"].encode(), sec["postgres_password"].encode()]
    holders = set()
    for path in lab.state.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(x in data for x in needles):
                holders.add(str(path.relative_to(lab.state.root)))
    assert holders == {"secrets.json"}, f"the lab's master credentials are also in: {sorted(holders - {'secrets.json'})}"


@pytest.mark.parametrize("command", [["env"], ["status"], ["stage", "3"]])
def test_a_state_dir_is_private_from_the_first_command(command: list[str], tmp_path: Path) -> None:
    """Commands run before `up` (which fail or report "down") must not leave a readable state directory behind."""
    root = tmp_path / "fresh" / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("VSOLAB_STATE", "VSOLAB_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-m", "labkit", "--state", str(root), *command], capture_output=True, text=True,
                   cwd=str(REPO), env=env, timeout=120)
    if root.exists():
        assert mode(root) == 0o700, f"`labkit {' '.join(command)}` left {root} with mode {oct(mode(root))}"


# -- leaks -------------------------------------------------------------------------------------------------------------
def test_labkit_status_shows_no_credential(lab: LocalLab, recorder: Recorder) -> None:
    out = labkit(lab, "status")
    assert out.returncode == 0, out.stdout + out.stderr
    secrets, usernames = recorder.values()
    text = out.stdout + out.stderr
    assert "openbao" in text and "healthy" in text
    leaked = [v[:6] + "…" for v in secrets | usernames if v in text]
    assert not leaked, f"`labkit status` prints credentials: {leaked}"


def test_a_failed_sql_statement_does_not_put_its_password_in_the_log(lab: LocalLab, recorder: Recorder) -> None:
    """Vault puts the generated password into the CREATE ROLE text; if that statement fails, it must not be logged."""
    password = "pw-" + os.urandom(12).hex()
    with pg._connect(lab) as conn:
        conn.execute(f"create role vsolab_leak_probe with login password '{password}'")
        try:
            with pytest.raises(Exception, match="already exists"):
                conn.execute(f"create role vsolab_leak_probe with login password '{password}'")
        finally:
            conn.execute("drop role vsolab_leak_probe")
    time.sleep(1)  # the server writes its log asynchronously
    log = lab.state.path("logs", "postgres.log").read_text(errors="ignore")
    assert 'role "vsolab_leak_probe" already exists' in log, "the failure itself is logged"
    assert password not in log, "PostgreSQL logged the failed statement with its password"


def test_no_credential_in_the_labs_logs(lab: LocalLab, recorder: Recorder) -> None:
    """Every log the lab writes (components, pods) is free of the generated credentials.

    Dynamic role *names* may appear in PostgreSQL's own log (it names the role in a failed login or revocation);
    they are identifiers, not credentials, and appear nowhere else.
    """
    time.sleep(3)  # let a rotation or two happen while the recorder watches
    secrets, usernames = recorder.values()
    logs = sorted(p for p in lab.state.path("logs").rglob("*") if p.is_file())
    assert len(logs) >= 8 and any(p.parent.name == "pods" for p in logs)
    for path in logs:
        text = path.read_text(errors="ignore")
        assert not [v for v in secrets if v in text], f"{path.relative_to(lab.state.root)} holds a generated credential"
        if path.name != "postgres.log":
            assert not [v for v in usernames if v in text], f"{path.relative_to(lab.state.root)} names a dynamic role"


def test_no_credential_in_files_the_kit_wrote_into_the_repository(lab: LocalLab, recorder: Recorder) -> None:
    """Files created or changed in the repository while this module ran (ignored ones included), and every *.log there."""
    labkit(lab, "status")
    labkit(lab, "env")  # prints the token on purpose (for eval); it must not write it anywhere
    secrets, usernames = recorder.values()
    scanned = 0
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in (".git", "node_modules")]
        for name in filenames:
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > 5_000_000:
                continue
            if st.st_mtime < MODULE_START - 1 and not name.endswith(".log"):
                continue
            scanned += 1
            text = path.read_text(errors="ignore")
            hits = [v[:6] + "…" for v in secrets | usernames if v in text]
            assert not hits, f"{path.relative_to(REPO)} contains generated credentials {hits}"


# -- the kubernetes auth roles ------------------------------------------------------------------------------------------
def _markdown(notebook: str) -> str:
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _stated(notebook: str, field: str) -> list[str]:
    """The values a notebook's markdown gives for a role field: the backticked names on the line naming the field."""
    for line in _markdown(notebook).splitlines():
        if f"`{field}`" in line:
            return [v for v in re.findall(r"`([^`]+)`", line) if v != field]
    pytest.fail(f"{notebook} no longer states {field}")


def test_kubernetes_auth_roles_bind_exactly_what_the_notebooks_state(lab: LocalLab, recorder: Recorder) -> None:
    n = lab.names
    static_role = vault.read_kubernetes_role(lab, n.static_role, n.k8s_auth_mount)
    assert static_role["bound_service_account_names"] == _stated("02-static-secrets.ipynb", "bound_service_account_names")
    assert static_role["bound_service_account_namespaces"] == _stated("02-static-secrets.ipynb", "bound_service_account_namespaces")
    assert static_role["token_policies"] == [n.kv_policy]

    roles = {
        n.static_role: ("02-static-secrets.ipynb", n.static_sa, n.static_ns, n.kv_policy),
        n.dynamic_role: ("03-dynamic-secrets.ipynb", n.dynamic_sa, n.dynamic_ns, n.db_policy),
        n.transit_role: ("05-client-cache.ipynb", n.operator_sa, n.operator_ns, n.transit_policy),
    }
    for role, (notebook, sa, ns, policy) in roles.items():
        data = vault.read_kubernetes_role(lab, role, n.k8s_auth_mount)
        assert data["bound_service_account_names"] == [sa], role
        assert data["bound_service_account_namespaces"] == [ns], role
        assert data["token_policies"] == [policy], role
        text = _markdown(notebook)
        # a prefixed name is written `${PREFIX}name` in the converted notebooks (the prefix is empty here)
        assert f"`{sa}`" in text and (f"`{ns}`" in text or f"`${{PREFIX}}{ns}`" in text), f"{notebook} does not state {sa} in {ns}"
    listed = vault.client(lab).list(f"auth/{n.k8s_auth_mount}/role")["data"]["keys"]
    assert sorted(listed) == sorted(roles), "a role the notebooks do not create"


def _jwt(lab: LocalLab, sa: str, ns: str) -> str:
    spec = kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    return kclient.CoreV1Api(lab.kube).create_namespaced_service_account_token(sa, ns, spec).status.token


def test_a_service_account_from_another_namespace_is_refused(lab: LocalLab, recorder: Recorder) -> None:
    """Same account names, wrong namespace; and each app's account against the other app's role."""
    n = lab.names
    core = kclient.CoreV1Api(lab.kube)
    other = "intruder-exampleapp"
    k8s.ensure_namespace(lab.kube, other)
    try:
        for sa in (n.static_sa, n.dynamic_sa, n.operator_sa):
            k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": other}})
        # the right accounts log in, and get exactly their role's policy
        for role, sa, ns, policy in ((n.static_role, n.static_sa, n.static_ns, n.kv_policy),
                                     (n.dynamic_role, n.dynamic_sa, n.dynamic_ns, n.db_policy),
                                     (n.transit_role, n.operator_sa, n.operator_ns, n.transit_policy)):
            assert sorted(vault.kubernetes_login(lab, role, _jwt(lab, sa, ns))["policies"]) == sorted(["default", policy])
        refused = [
            (n.static_role, n.static_sa, other), (n.dynamic_role, n.dynamic_sa, other), (n.transit_role, n.operator_sa, other),
            (n.dynamic_role, n.static_sa, n.static_ns), (n.static_role, n.dynamic_sa, n.dynamic_ns),
            (n.transit_role, n.dynamic_sa, n.dynamic_ns),
        ]
        for role, sa, ns in refused:
            with pytest.raises(VaultError) as info:
                vault.kubernetes_login(lab, role, _jwt(lab, sa, ns))
            said = str(info.value).split("\n")[0]  # Vault's own answer, not the fixes that follow it
            assert re.search(r"not authorized|permission denied", said), (role, sa, ns, said)
    finally:
        core.delete_namespace(other)


# -- clean-up (last: it removes what the tests above use) ------------------------------------------------------------------
def test_clean_up_leaves_no_dynamic_role_and_no_lease(lab: LocalLab, recorder: Recorder) -> None:
    n = lab.names
    c = vault.client(lab)
    manual = vault.generate_credentials(lab, n.db_role, mount=n.db_mount)  # as a learner's `vault read database/creds/…`
    leases = vault.list_leases(lab, f"{n.db_mount}/creds/{n.db_role}")
    logins = vault.list_leases(lab, f"auth/{n.k8s_auth_mount}/login")
    roles = {r["role"] for r in pg.dynamic_roles(lab)}
    assert manual["lease_id"] in leases and len(leases) >= 2, leases
    assert logins, "VSO's kubernetes logins hold leases before the clean-up"
    assert manual["username"] in roles and dynamic.read_secret(lab)["username"] in roles

    print(cleanup.sweep(lab))

    assert pg.dynamic_roles(lab) == [], "dynamic PostgreSQL roles survived the clean-up"
    for lease in leases:
        with pytest.raises(hvexc.InvalidRequest):
            c.sys.read_lease(lease)
    assert vault.list_leases(lab, n.db_mount) == [], "leases left under the database engine"
    assert vault.list_leases(lab, f"auth/{n.k8s_auth_mount}/login") == [], "kubernetes-auth tokens left"
    assert cleanup.check(lab).passed
    assert pg.can_login(lab, manual["username"], manual["password"])[0] is False
