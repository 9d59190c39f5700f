"""The local lab: etcd, kube-apiserver, kube-controller-manager, PostgreSQL,
OpenBao, the node agent and the chart repository, as processes on 127.0.0.1; VSO
is the pod of a Helm release (labkit/helm.py) that the node agent runs.

``LocalLab.up()`` is idempotent: healthy components are reused, dead ones are
started again from the state directory, so Vault data, leases and PostgreSQL
roles survive ``down`` followed by ``up``. ``down(purge=True)`` wipes the state.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import psutil
import requests
import urllib3

from . import _procs, _repair, _runas, install
from ._pki import ETCD_PEER_CN, ca_pem, ensure_etcd_pki, ensure_kubelet_pki, ensure_pki
from ._state import State, port_free
from .backends.contract import CACHE_MODELS as CACHE_MODELS  # shared with the other backends and helm; re-exported
from .backends.contract import Health as Health
from .errors import ComponentError, NotRunning, StateError, SyncError
from .names import Names

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

OPERATOR_NAMESPACE = "vault-secrets-operator"
#: the operator release's objects, read over plain HTTPS (without the kubernetes client, which is slow to import)
RELEASE_CHECK = ("/api/v1/namespaces/vault-secrets-operator/secrets"
                 "?labelSelector=owner%3Dhelm,name%3Dvault-secrets-operator,status%3Ddeployed")
CRD_CHECK = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/vaultstaticsecrets.secrets.hashicorp.com"
OPERATOR_PODS = "/api/v1/namespaces/vault-secrets-operator/pods?labelSelector=control-plane%3Dcontroller-manager"
NODE_NAME = "vsolab-node"
KCM_CONTROLLERS = ",".join([
    "serviceaccount-token-controller", "serviceaccount-controller", "namespace-controller",
    "garbage-collector-controller", "deployment-controller", "replicaset-controller",
    "root-ca-certificate-publisher-controller",
    # Jobs make pods: the VSO chart's pre-delete and pre-upgrade hooks are Jobs (`helm uninstall`, `helm upgrade`).
    "job-controller",
])


class _Aborted(ComponentError):
    """Another component of the same ``up`` failed; this one stopped waiting (the other's error is reported)."""

    def __init__(self) -> None:
        super().__init__("Stopped starting a component because another one failed.", ["See the other error."])


class Component:
    """A lab process: how to start it and how to tell it is healthy."""

    name = ""
    timeout = 60.0
    #: other ports (names in ``state.json``) the process binds besides its own
    extra_ports: tuple[str, ...] = ()

    def __init__(self, lab: LocalLab) -> None:
        self.lab = lab
        self.state = lab.state

    # subclasses override these ----------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def version(self) -> str:
        return ""

    def env(self) -> dict[str, str] | None:
        return None

    def user(self) -> str | None:
        return None

    def prepare(self) -> None:
        """Create config and data before the first start."""

    def after_start(self) -> None:
        """Work that needs the process up (e.g. unseal)."""

    def outdated(self, pid: int) -> bool:
        """The running process was started with settings this labkit no longer uses (so it is replaced)."""
        return False

    # common -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.lab.ports[self.name]

    @property
    def tag(self) -> str:
        return f"{self.state.lab_id}:{self.name}"

    @property
    def pidfile(self) -> Path:
        return self.state.path("run", f"{self.name}.pid")

    @property
    def log(self) -> Path:
        return self.state.path("logs", f"{self.name}.log")

    def pid(self) -> int | None:
        return _procs.read_pid(self.pidfile, self.tag)

    def check(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:  # any failure means "not healthy yet"
            return False

    def status(self) -> Health:
        pid = self.pid()
        ok = pid is not None and self.check()
        version = ""
        if ok:
            try:
                version = self.version()
            except Exception:
                version = "?"
        return Health(self.name, pid, self.address(), ok, version, "" if pid else "not running")

    def ensure(self) -> str:
        """Reuse, repair or start this component; return what was done."""
        pid = self.pid()
        action = "started"
        if pid and self.outdated(pid):
            _procs.stop_pid(pid)
            pid, action = None, "restarted (its settings were outdated)"
        if pid and self.check():
            self.after_start()
            return "reused"
        if pid:
            # Running but unhealthy: give it a moment (it may be starting), then replace it.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not self.check():
                time.sleep(0.2)
            if self.check():
                self.after_start()
                return "reused"
            _procs.stop_pid(pid)
            action = "restarted (it was unhealthy)"
        elif self.pidfile.exists() and action == "started":
            action = "restarted (it had died)"
        self._kill_orphans()
        self.pidfile.unlink(missing_ok=True)
        self.state.check_port_free(self.name, self.port, f"See {self.log}.")
        for extra in self.extra_ports:
            self.state.check_port_free(extra, self.lab.ports[extra], f"See {self.log}.")
        self.prepare()
        command = self.command()
        abort = self.lab._abort

        def check() -> bool:
            if abort.is_set():
                raise _Aborted
            return self.check()

        daemon = _procs.Daemon(
            command, check=check, tag=self.tag, log=self.log, env=self.env(), timeout=self.timeout,
            user=self.user(), cwd=str(self.state.root) if not self.user() else "/",
        )
        try:
            _procs.start(daemon, self.pidfile)
        except _Aborted:
            daemon.kill()
            raise
        except _procs.ProcessExitedWithError as exc:
            raise ComponentError(
                f"Started {self.name} and checked that it stays up: it exited with code {exc.exit_code}.",
                [f"Read its log: {self.log}", "Run `labkit doctor` to check prerequisites.",
                 "Run `labkit down --purge` then `labkit up` if its data is damaged (data is lost)."],
                detail=_procs.log_tail(self.log),
            ) from None
        except _procs.TimeoutExpired:
            raise ComponentError(
                f"Started {self.name} and waited {self.timeout:.0f}s for its health check: it never passed.",
                [f"Read its log: {self.log}", "Check free memory (`free -m`) and CPU load.",
                 "Run `labkit up` again; healthy parts are reused."],
                detail=_procs.log_tail(self.log),
            ) from None
        except OSError as exc:  # the binary is missing, not executable, or built for another machine
            raise ComponentError(
                f"Started {self.name} from {command[0]}: the program could not be run ({exc.strerror or exc}).",
                ["Reinstall the lab's binaries: `labkit install --force`.",
                 "Check that VSOLAB_CACHE points at a complete cache built for this machine (`labkit doctor`).",
                 f"Check the file is a program for this machine: `file {command[0]}`."],
            ) from None
        self.after_start()
        return action

    def _kill_orphans(self) -> None:
        for proc in _procs.tagged(self.tag):
            try:
                mine = _procs.tag_of(proc) == self.tag
            except psutil.Error:  # it exited meanwhile
                continue
            if mine:
                _procs.stop_pid(proc.pid, grace=3)

    def stop(self) -> bool:
        pid = self.pid()
        if pid:
            _procs.stop_pid(pid)
        self._kill_orphans()
        self.pidfile.unlink(missing_ok=True)
        return pid is not None


# -- the components --------------------------------------------------------------------------------
class Etcd(Component):
    """etcd, with mutual TLS on both of its ports.

    Clients (the API server) and peers must show a certificate from the lab's CA; a peer's must also carry
    the lab's peer name. Another local user reaches both 127.0.0.1 ports but fails the TLS handshake, so can
    neither read the cluster nor send raft messages (which could commit objects, or stall the API server
    with a higher term).
    """

    name = "etcd"
    extra_ports = ("etcd_peer",)

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.lab.ports['etcd_peer']}"

    def command(self) -> list[str]:
        p, peer = self.port, self.peer_url
        pki = self.state.path("pki")
        return [
            str(self.lab.bin["etcd"]), "--name", "vsolab", "--data-dir", str(self.state.path("data", "etcd")),
            "--listen-client-urls", f"https://127.0.0.1:{p}", "--advertise-client-urls", f"https://127.0.0.1:{p}",
            "--client-cert-auth", f"--trusted-ca-file={pki}/ca.crt", f"--cert-file={pki}/etcd.crt",
            f"--key-file={pki}/etcd.key",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"vsolab={peer}",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={pki}/ca.crt", f"--peer-cert-file={pki}/etcd-peer.crt",
            f"--peer-key-file={pki}/etcd-peer.key", f"--peer-cert-allowed-cn={ETCD_PEER_CN}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(512 * 1024 * 1024),
        ]

    def outdated(self, pid: int) -> bool:
        # An etcd started by an older labkit serves raft over plain HTTP: replace it.
        try:
            return "--peer-client-cert-auth" not in psutil.Process(pid).cmdline()
        except psutil.Error:
            return False

    def after_start(self) -> None:
        """A member created with an http peer URL keeps it in its data (``--initial-*`` count only once): update it."""
        if self.state.read().get("etcd_peer_url") == self.peer_url:
            return
        if self.advertised_peer_urls() != [self.peer_url]:
            self._post("/v3/cluster/member/update", {"ID": self._member()["ID"], "peerURLs": [self.peer_url]})
        self.state.update(etcd_peer_url=self.peer_url)

    def _member(self) -> dict[str, Any]:
        members = self._post("/v3/cluster/member/list", {}).get("members", [])
        if len(members) != 1:
            raise ComponentError(
                f"Checked etcd's members: the lab runs one, etcd lists {len(members)}.",
                ["Run `labkit down --purge` and `labkit up` to start from fresh data (the lab's data is lost).",
                 f"Read etcd's log: {self.log}", "Use another state directory (VSOLAB_STATE)."],
            )
        return dict(members[0])

    def advertised_peer_urls(self) -> list[str]:
        """The peer URLs etcd has stored for its (single) member."""
        return list(self._member().get("peerURLs", []))

    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _tls(self) -> dict[str, Any]:
        pki = self.state.path("pki")
        return {"verify": str(pki / "ca.crt"), "cert": (str(pki / "etcd-client.crt"), str(pki / "etcd-client.key"))}

    def _get(self, path: str) -> requests.Response:
        return requests.get(f"https://127.0.0.1:{self.port}{path}", timeout=2, **self._tls())

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(f"https://127.0.0.1:{self.port}{path}", json=body, timeout=5, **self._tls())
        r.raise_for_status()
        return dict(r.json())

    def healthy(self) -> bool:
        r = self._get("/health")
        return r.ok and r.json().get("health") == "true"

    def version(self) -> str:
        return self._get("/version").json()["etcdserver"]


class APIServer(Component):
    name = "apiserver"
    timeout = 120.0

    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        pki = self.state.path("pki")
        return [
            str(self.lab.bin["kube-apiserver"]),
            f"--etcd-servers=https://127.0.0.1:{self.lab.ports['etcd']}", f"--etcd-cafile={pki}/ca.crt",
            f"--etcd-certfile={pki}/etcd-client.crt", f"--etcd-keyfile={pki}/etcd-client.key", "--bind-address=127.0.0.1",
            f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt", "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-signing-key-file={pki}/sa.key", f"--service-account-key-file={pki}/sa.pub",
            "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false",
            "--profiling=false", "--v=0",
            # The node agent's kubelet API (kubectl logs): TLS both ways, on the node's InternalIP 127.0.0.1.
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            f"--kubelet-certificate-authority={pki}/ca.crt", "--kubelet-preferred-address-types=InternalIP",
        ]

    def _get(self, path: str) -> requests.Response:
        pki = self.state.path("pki")
        return requests.get(
            f"https://127.0.0.1:{self.port}{path}", timeout=3, verify=str(pki / "ca.crt"),
            cert=(str(pki / "admin.crt"), str(pki / "admin.key")),
        )

    def healthy(self) -> bool:
        return self._get("/readyz").ok

    def version(self) -> str:
        return self._get("/version").json()["gitVersion"]


class ControllerManager(Component):
    name = "kcm"

    def command(self) -> list[str]:
        pki = self.state.path("pki")
        kc = self.state.path("kube", "admin.kubeconfig")
        return [
            str(self.lab.bin["kube-controller-manager"]), f"--kubeconfig={kc}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
            "--use-service-account-credentials=false", f"--controllers={KCM_CONTROLLERS}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--concurrent-deployment-syncs=2", "--concurrent-replicaset-syncs=2", "--v=0",
        ]

    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return requests.get(f"https://127.0.0.1:{self.port}/healthz", timeout=2, verify=False).ok

    def version(self) -> str:
        return f"v{install.KUBE_VERSION}"


class Postgres(Component):
    name = "postgres"

    def _user(self) -> str | None:
        return _runas.postgres_user()

    def user(self) -> str | None:
        return self._user()

    def prepare(self) -> None:
        data = self.state.pg_data_dir()
        user = self._user()
        if user:
            _safe_pg_dirs(self.state.pg_root(), data, pwd.getpwnam(user).pw_uid, create=False)
        if (data / "PG_VERSION").exists():
            return
        # Either record says a database was made: state.json, or its password in secrets.json (kept after initdb only).
        made = self.state.read().get("pg_initialised") or self.state.secrets().get("postgres_password")
        if made:
            # older labkit kept root's databases in /var/tmp/vsolab-pg, where any user could plant or move them
            old = Path("/var/tmp/vsolab-pg") / self.state.lab_id
            back = (f"Move it from where older labkit kept it, once you checked it is the lab's (owned by {user}): "
                    f"`mv {old} {data}`, then run `labkit up`." if user and (old / "PG_VERSION").exists() else
                    f"Put the data back in {data} (from where it was moved, or a backup), then run `labkit up`.")
            raise StateError(
                f"Checked PostgreSQL's data directory {data}: it has no database, but this lab initialised one "
                f"(its records in {self.state.root} say so), so its data was moved or deleted. Starting an empty "
                "database instead would leave Vault's roles and leases pointing at users that no longer exist.",
                [back,
                 "Or start a fresh lab: `labkit down --purge`, then `labkit up` (Vault data and leases are lost too).",
                 "Or use another state directory (VSOLAB_STATE)."],
            )
        if user:
            _safe_pg_dirs(self.state.pg_root(), data, pwd.getpwnam(user).pw_uid, create=True)
        data.parent.mkdir(parents=True, exist_ok=True)
        data.mkdir(mode=0o700, exist_ok=True)
        os.chmod(data, 0o700)
        password = uuid.uuid4().hex
        pwdir = Path(tempfile.mkdtemp(prefix="vsolab-initdb-"))
        pwfile = pwdir / "pw"
        pwfile.write_text(password)
        os.chmod(pwfile, 0o600)
        if user:
            pw = pwd.getpwnam(user)
            for p in (data, pwdir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        try:
            subprocess.run(
                [str(self.lab.bin["initdb"]), "-D", str(data), "-U", "root", f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"],
                check=True, capture_output=True, text=True, user=user, group=user, cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            raise ComponentError(
                f"Ran initdb to create PostgreSQL's data directory {data}: it failed.",
                ["Check that the directory is empty and writable by the PostgreSQL user.",
                 "Run `labkit down --purge` and try again.", "Check disk space (`df -h`)."],
                detail=(exc.stderr or exc.stdout)[-1500:],
            ) from None
        finally:
            shutil.rmtree(pwdir, ignore_errors=True)
        self.state.update_secrets(postgres_password=password)
        self.state.update(pg_initialised=str(data))

    def command(self) -> list[str]:
        return [
            str(self.lab.bin["postgres"]), "-D", str(self.state.pg_data_dir()), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
            "-c", "max_connections=50", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning",
            # A failed statement is logged without its text: Vault's CREATE ROLE carries the generated password.
            "-c", "log_min_error_statement=panic",
        ]

    def healthy(self) -> bool:
        import psycopg

        with psycopg.connect(self.lab.pg_dsn(), connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.lab.pg_dsn(), connect_timeout=2) as conn:
            return str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]


def _safe_pg_dirs(root: Path, data: Path, pg_uid: int, *, create: bool) -> None:
    """Make (or check) root's PostgreSQL tree: ``root`` is root's, mode 0711; ``data`` the PostgreSQL user's, 0700.

    Nothing on the way may be a symlink or owned by anyone else: a user who could create or rename entries
    there could point root's ``chown``/``chmod`` at any directory, or move the lab's database away.
    """
    from ._state import _untrusted

    try:
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise ComponentError(
            f"Checked that PostgreSQL's data root {root} can be created: it cannot ({exc.strerror}).",
            ["Create it as root: `install -d -m 0711 -o root " + str(root) + "`.",
             "Or set VSOLAB_PG_ROOT to a directory root owns that no one else can write.", "Free disk space (`df -h`)."],
        ) from None
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        why = ("it is a symlink" if stat.S_ISLNK(st.st_mode) else f"it is owned by uid {st.st_uid}" if st.st_uid
               else f"its mode {stat.S_IMODE(st.st_mode):04o} lets others write to it")
        raise _untrusted(root, why, what="PostgreSQL's data root")
    if stat.S_IMODE(st.st_mode) & 0o011 != 0o011:
        os.chmod(root, stat.S_IMODE(st.st_mode) | 0o011)  # traversable, so the PostgreSQL user reaches its directory
    try:
        st = os.lstat(data)
    except FileNotFoundError:
        if not create:
            return
        data.mkdir(mode=0o700)
        os.chown(data, pg_uid, -1)
        st = os.lstat(data)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, pg_uid) or st.st_mode & 0o077:
        why = ("it is a symlink" if stat.S_ISLNK(st.st_mode) else f"it is owned by uid {st.st_uid}"
               if st.st_uid not in (0, pg_uid) else f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700")
        raise _untrusted(data, why, what="PostgreSQL's data directory")


class OpenBao(Component):
    """OpenBao with file storage: initialised once, unsealed at every start."""

    name = "openbao"
    extra_ports = ("openbao_cluster",)

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        data = self.state.path("data", "openbao")
        data.mkdir(parents=True, exist_ok=True)
        cluster = self.lab.ports["openbao_cluster"]
        cfg = (
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "vsolab"\n  performance_multiplier = 1\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster}"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://127.0.0.1:{self.port}"\n'
            f'cluster_addr = "http://127.0.0.1:{cluster}"\n'
            'ui = false\nlog_level = "warn"\n'
        )
        self.state.write_private("openbao.hcl", cfg)

    def command(self) -> list[str]:
        return [str(self.lab.bin["bao"]), "server", f"-config={self.state.path('openbao.hcl')}"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
            env.pop(k, None)
        return env

    def _responds(self) -> bool:
        # Any answer from sys/health means the server listens; sealed or not comes later.
        r = requests.get(f"{self.address()}/v1/sys/health", timeout=2)
        return r.status_code in (200, 429, 472, 473, 501, 503)

    def healthy(self) -> bool:
        if not self._responds():
            return False
        # During start-up, "up" means answering; after_start then initialises and unseals.
        if getattr(self, "_starting", False):
            return True
        return requests.get(f"{self.address()}/v1/sys/health", timeout=2).status_code == 200

    def ensure(self) -> str:
        self._starting = True
        try:
            return super().ensure()
        finally:
            self._starting = False

    def after_start(self) -> None:
        client = hvac.Client(url=self.address())
        secrets = self.state.secrets()
        if not client.sys.is_initialized():
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            secrets = self.state.update_secrets(vault_unseal_key=result["keys"][0], vault_root_token=result["root_token"])
        if client.sys.is_sealed():
            key = secrets.get("vault_unseal_key")
            if not key:
                raise StateError(
                    f"Checked {self.state.path('secrets.json')} for OpenBao's unseal key: it is missing, "
                    "so the initialised Vault data cannot be unsealed.",
                    ["Run `labkit down --purge` and `labkit up` to start a fresh Vault (its data is lost).",
                     "Restore secrets.json from a backup.", "Use another state directory (VSOLAB_STATE)."],
                )
            client.sys.submit_unseal_key(key)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(f"{self.address()}/v1/sys/health", timeout=2).status_code == 200:
                return
            time.sleep(0.2)
        raise ComponentError(
            "Unsealed OpenBao and waited 30s for /v1/sys/health to report active: it did not.",
            [f"Read its log: {self.log}", "Run `labkit up` again.", "Run `labkit down --purge` to reset Vault."],
        )

    def version(self) -> str:
        return requests.get(f"{self.address()}/v1/sys/health", timeout=2).json().get("version", "")


class NodeAgent(Component):
    name = "agent"
    extra_ports = ("kubelet",)  # its kubelet API (TLS), which the API server proxies `kubectl logs` to
    #: how the agent runs pods; an agent started with another revision is replaced on ``up`` (2: never as root)
    REVISION = "2"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "labkit.agent", "--state", str(self.state.root)]

    def prepare(self) -> None:
        # Fail here, with the fix, rather than in the agent's log: the pods' user and directory.
        _runas.pod_user()
        _runas.ensure_pod_root(self.state)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        env["VSOLAB_AGENT_REVISION"] = self.REVISION
        return env

    def outdated(self, pid: int) -> bool:
        try:
            return psutil.Process(pid).environ().get("VSOLAB_AGENT_REVISION") != self.REVISION
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        return requests.get(f"{self.address()}/healthz", timeout=2).ok

    def version(self) -> str:
        from ._version import __version__

        return __version__


class ChartRepo(Component):
    """The lab's Helm chart repository (the VSO chart ``labkit install`` packaged), on 127.0.0.1; see labkit/_chartrepo.py."""

    name = "charts"
    timeout = 20.0

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        charts = install.TOOLS["helm"].dir / install.CHART_DIR
        return [sys.executable, "-m", "labkit._chartrepo", "--dir", str(charts), "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def healthy(self) -> bool:
        return requests.get(f"{self.address()}/index.yaml", timeout=2).ok

    def version(self) -> str:
        return f"vault-secrets-operator {install.VSO_VERSION}" if install.TOOLS["helm"].built() else "empty (labkit install)"


ORDER: list[type[Component]] = [Etcd, APIServer, ControllerManager, Postgres, OpenBao, NodeAgent, ChartRepo]


class LocalLab:
    """The whole local lab, rooted in one state directory."""

    backend = "local"

    def __init__(self, state: State | str | Path | None = None) -> None:
        self.state = state if isinstance(state, State) else State(state)
        self._bin: dict[str, Path] | None = None
        self._ports: dict[str, int] | None = None
        self.components = {c.name: c(self) for c in ORDER}
        self._kube: Any = None
        #: set when one of ``up``'s parallel start-up chains failed: the others stop waiting at once
        self._abort = threading.Event()

    def lock(self, what: str) -> contextlib.AbstractContextManager[None]:
        """The lab's cross-process lock (``stage`` holds it while it changes the lab)."""
        return self.state.lock(what)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def bin(self) -> dict[str, Path]:
        if self._bin is None:
            self._bin = install.binaries()
        return self._bin

    @property
    def ports(self) -> dict[str, int]:
        if self._ports is None:
            self._ports = self.state.ports()
        return self._ports

    @property
    def kubeconfig(self) -> Path:
        return self.state.path("kube", "admin.kubeconfig")

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self.ports['openbao']}"

    @property
    def vault_token(self) -> str:
        token = self.state.secrets().get("vault_root_token")
        if not token:
            raise NotRunning(
                f"Checked {self.state.path('secrets.json')} for the lab's Vault root token: there is none yet.",
                ["Start the lab first: `labkit up` (or run notebook 00).",
                 "If you use another state directory, set VSOLAB_STATE to it.", "Run `labkit status`."],
            )
        return str(token)

    @property
    def kube_api(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def kube_ca(self) -> str:
        return ca_pem(self.state)

    def pg_dsn(self, user: str = "root", password: str | None = None, dbname: str = "postgres") -> str:
        pw = password if password is not None else self.state.secrets().get("postgres_password", "")
        return f"host=127.0.0.1 port={self.ports['postgres']} user={user} password={pw} dbname={dbname}"

    @property
    def pg_address(self) -> tuple[str, int]:
        """Where PostgreSQL listens, as Vault (and the app) reach it."""
        return "127.0.0.1", self.ports["postgres"]

    def env(self) -> dict[str, str]:
        """What ``labkit env`` prints and notebook kernels get: labkit/_env.py's variables, as on every backend
        (``PREFIX`` empty: a lab of one's own), with the lab's own Helm files (labkit/helm.py)."""
        self.vault_token  # noqa: B018 - before the lab is up: explain, and choose no ports
        from . import _env, helm

        # `vault` is OpenBao's CLI here (same arguments), so the tutorial's commands run as written
        return _env.lab_env(self, tools_dir=self.tools_dir, helm_env=helm.env(self), shared_operator=False)

    @property
    def tools_dir(self) -> Path:
        """``<state>/bin``: ``vault`` and ``bao`` (OpenBao's CLI) and ``kubectl``, made by ``up``."""
        return self.state.path("bin")

    def _ensure_tools(self) -> None:
        from . import _env

        _env.ensure_tools(self.tools_dir)

    # -- life cycle --------------------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] | None = None, *, operator: bool = True) -> dict[str, str]:
        """Start or repair every component; with ``operator``, install VSO's Helm release if it is missing (else
        wait for its pod, which the node agent brings back). Idempotent. ``operator=False`` (``labkit up
        --no-operator``) leaves a missing release uninstalled: notebook 01 installs it."""
        say = progress or (lambda m: print(m, flush=True))
        products = [*install.PRODUCTS.values(), *(install.TOOLS.values() if operator else ())]
        if not all(p.built() for p in products):
            say("Some binaries are not built yet; running `labkit install` first.")
            install.install()
        with self.state.lock("labkit up"):
            return self._up(say, operator)

    def _up(self, say: Callable[[str], None], operator: bool = True) -> dict[str, str]:
        self.state.ensure()
        self._ports, self._kube = None, None  # another process may have changed them while this one waited
        _repair.check_secrets(self)
        lost = _repair.pki_lost(self)
        if lost:
            _repair.reset_pki(self, say)
        ensure_pki(self.state)
        ensure_etcd_pki(self.state)
        ensure_kubelet_pki(self.state)
        self._ensure_tools()
        old = _repair.stale(self) | ({"ca": "lost"} if lost else {})
        self._write_admin_kubeconfig()
        actions: dict[str, str] = {}
        found_running = {name for name, comp in self.components.items() if comp.pid()}

        def ensure(name: str) -> None:
            t0 = time.monotonic()
            actions[name] = self.components[name].ensure()
            if actions[name] != "reused":
                say(f"  {name:<10} {actions[name]} in {time.monotonic() - t0:.1f}s")

        def chain(*names: str) -> Callable[[], None]:
            def run() -> None:
                for n in names:
                    ensure(n)
            return run

        # PostgreSQL and OpenBao do not depend on Kubernetes; the node agent imports its client while the API
        # server starts and registers its node once it answers. So three chains run side by side.
        self._preflight()
        try:
            self._abort.clear()
            _parallel(chain("etcd", "apiserver", "kcm"), chain("postgres", "openbao"), chain("agent", "charts"), abort=self._abort)
            if "ca" in old:
                _repair.retoken(self)
            self._ensure_crds()  # helm installs them too, but the lab's code needs the kinds before notebook 01
            if old:
                self._ensure_crds()  # propagate lists VaultConnections (a fresh lab's new CA reads as "old" too)
                _repair.propagate(self, old, say)
            action = self._ensure_operator(say, install_missing=operator)
            if action:
                actions["operator"] = action
        except BaseException:
            # Leave the lab as this call found it: stop what it started (state and data are kept).
            for name in reversed(list(self.components)):
                if name not in found_running:
                    self.components[name].stop()
            raise
        actions = {name: actions[name] for name in [*self.components, "operator"] if name in actions}
        self.state.update(last_up=time.time(), applied=_repair.applied(self))
        return actions

    def operator_installed(self) -> bool:
        """VSO's Helm release is installed (``helm list`` would show it)."""
        return self._release_installed()

    def _release_installed(self) -> bool:
        """VSO's Helm release is deployed (its release Secret, read over plain HTTPS)."""
        api = self.components["apiserver"]
        assert isinstance(api, APIServer)
        r = api._get(RELEASE_CHECK)
        r.raise_for_status()
        return bool(r.json().get("items"))

    def _ensure_crds(self) -> None:
        """VSO's CRDs (the chart's ``crds/``; ``helm install`` skips CRDs that exist), so that the lab's code and
        ``kubectl get vaultstaticsecrets`` know the kinds before notebook 01 installs the operator."""
        api = self.components["apiserver"]
        assert isinstance(api, APIServer)
        if api._get(CRD_CHECK).ok:
            return
        from . import k8s

        k8s.apply(self.kube, [d for f in sorted(self.bin["vso-crds"].glob("*.yaml")) for d in k8s.load_yaml(f.read_text())])

    def _operator_pods(self) -> list[dict[str, Any]]:
        api = self.components["apiserver"]
        assert isinstance(api, APIServer)
        r = api._get(OPERATOR_PODS)
        r.raise_for_status()
        return [p for p in r.json().get("items", []) if not p["metadata"].get("deletionTimestamp")]

    def _ensure_operator(self, say: Callable[[str], None], *, install_missing: bool) -> str:
        """The release's pod Ready (the agent restarts it; helm is not run again), or the release installed."""
        from . import helm

        if not install.TOOLS["helm"].built():  # `up --no-operator` before `labkit install` built helm
            return ""
        changed = helm.write_lab_files(self)  # $LAB_HELM_VALUES and $LAB_HELM_POSTRENDERER, for the lab's ports
        t0 = time.monotonic()
        if not self._release_installed():
            if not install_missing:
                return ""
            helm.install_release(self)
            say(f"  operator   installed (helm upgrade --install) in {time.monotonic() - t0:.1f}s")
            return "installed"
        if changed:  # the lab's ports moved since the release was installed: the same values, new ports
            helm.install_release(self)
            say(f"  operator   upgraded to the lab's new ports in {time.monotonic() - t0:.1f}s")
            return "upgraded"
        deadline = time.monotonic() + 120
        while not any(_pod_serving(self, p) for p in self._operator_pods()):
            if self._abort.is_set() or time.monotonic() > deadline:
                raise ComponentError(
                    "Checked VSO's Helm release after starting the lab: its manager pod did not become Ready in 120s.",
                    [f"Read the manager's log: `kubectl logs -n {OPERATOR_NAMESPACE} deploy/{helm.DEPLOYMENT} -c manager`.",
                     f"Read the pod's events: `kubectl describe pod -n {OPERATOR_NAMESPACE} -l {helm.SELECTOR}`.",
                     "Run `labkit up` again; or reinstall: `labkit operator uninstall`, then `labkit operator install`."])
            time.sleep(0.2)
        return "reused"

    def _preflight(self) -> None:
        """Before starting anything: every binary can run, every port of a stopped component is free, disk is free."""
        if not all(comp.pid() for comp in self.components.values()):
            _repair.check_disk(self)
        for comp in self.components.values():
            if comp.pid():
                continue
            program = Path(comp.command()[0]) if comp.name != "agent" else Path(sys.executable)
            if not (program.is_file() and os.access(program, os.X_OK)):
                why = "it does not exist" if not program.exists() else "it is not executable (Permission denied)"
                raise ComponentError(
                    f"Checked that {comp.name}'s program {program} can be run: {why}.",
                    ["Reinstall the lab's binaries: `labkit install --force`.",
                     "Check that VSOLAB_CACHE points at a complete cache built for this machine (`labkit doctor`).",
                     f"Check the file: `ls -l {program}` and `file {program}`."],
                )
            for name in (comp.name, *comp.extra_ports):
                self.state.check_port_free(name, self.ports[name], f"See {comp.log}.")

    def down(self, purge: bool = False) -> list[str]:
        """Stop every component (pods first, Vault data kept unless ``purge``); no process or port is left.

        Works on damaged state too: processes are found by pid file and by the lab's tag, not by ``state.json``.
        """
        if not self.state.root.exists():
            stopped = self._down()
            if purge:
                _runas.purge_pod_root(self.state)
                self.state.purge()
            return stopped
        with self.state.lock("labkit down" + (" --purge" if purge else "")):
            stopped = self._down()
            if purge:
                _runas.purge_pod_root(self.state)
                self.state.purge()
        return stopped

    def _down(self) -> list[str]:
        stopped = []
        known = set()  # every pid this lab recorded, alive or not: reaped below if this process started them
        for f in self.state.path("run").glob("*.pid") if self.state.root.exists() else []:
            with contextlib.suppress(OSError, ValueError):
                known.add(int(f.read_text().strip()))
        known |= {p.pid for p in _procs.tagged(self.state.lab_id + ":")}
        for name in reversed(list(self.components)):
            if self.components[name].stop():
                stopped.append(name)
        # Anything else carrying this lab's tag: pod processes, orphans of a crash.
        for proc in _procs.tagged(self.state.lab_id + ":"):
            _procs.stop_pid(proc.pid, grace=3)
        # Collect our own dead children (a lab started in-process, e.g. by a notebook kernel or a test).
        deadline = time.monotonic() + 5
        for pid in known:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                except ChildProcessError:  # not our child, or already collected
                    break
                time.sleep(0.05)
        # A killed multi-threaded server can hold its listening socket a moment longer: wait for the lab's ports
        # (those state.json records; a damaged state.json records none, and the processes are gone anyway).
        try:
            ports = list(self.state.recorded_ports().values()) if self.state.root.exists() else []
        except StateError:
            ports = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(port_free(p) for p in ports):
            time.sleep(0.1)
        return stopped

    def status(self) -> list[Health]:
        """Read-only: nothing is written, not even ports (before the first ``up`` there are none).

        The last row, ``operator``, is VSO's Helm release: its manager pod (Running/Ready, restarts), or "not
        installed", which is healthy (a lab before notebook 01, or ``up --no-operator``)."""
        if not self.state.root.exists():
            return [Health(n, None, "", False, "", "no state") for n in [*self.components, "operator"]]
        recorded = self.state.recorded_ports()
        if not all(n in recorded for n in State.PORT_NAMES):
            return [Health(n, None, "", False, "", "not set up (run `labkit up`)") for n in [*self.components, "operator"]]
        self._ports = recorded
        rows = [c.status() for c in self.components.values()]
        api = next(h for h in rows if h.component == "apiserver")
        return [*rows, self._operator_health() if api.healthy else
                Health("operator", None, "", False, "", "unknown: the API server is down")]

    def _operator_health(self) -> Health:
        from . import helm

        try:
            if not self._release_installed():
                return Health("operator", None, "", True, "", "not installed (notebook 01 installs it)")
            pods = self._operator_pods()
        except requests.RequestException as exc:
            return Health("operator", None, "", False, "", f"unknown ({type(exc).__name__})")
        if not pods:
            return Health("operator", None, f"{OPERATOR_NAMESPACE}/{helm.DEPLOYMENT}", False, "",
                          "release installed, no pod (check the Deployment's events)")
        pod = pods[0]
        st = pod.get("status") or {}
        restarts = sum(int(c.get("restartCount", 0)) for c in st.get("containerStatuses") or [])
        ready = _pod_serving(self, pod)
        manager: dict[str, Any] = next((c for c in pod["spec"]["containers"] if c["name"] == "manager"), {})
        version = str(manager.get("image", "")).rsplit(":", 1)[-1]
        detail = f"{st.get('phase', 'Pending')}, {'Ready' if ready else 'not Ready'}, restarts {restarts}"
        return Health("operator", _pod_pid(self, pod["metadata"]["uid"]), f"{OPERATOR_NAMESPACE}/{pod['metadata']['name']}",
                      ready, version, detail)

    def healthy(self) -> bool:
        return all(h.healthy for h in self.status())

    def restart_operator(self, *, client_cache_persistence_model: str | None = None) -> None:
        """Restart the VSO manager: ``helm upgrade`` with the client-cache model when it changes, else a rollout
        restart (``kubectl rollout restart``: a new pod, the same values); waits for the new pod to be Ready."""
        from . import helm, k8s

        helm._check_model(client_cache_persistence_model)
        with self.state.lock("restart the VSO manager"):
            if not self._release_installed():
                helm.install_release(self, client_cache_persistence_model=client_cache_persistence_model)
                return
            if client_cache_persistence_model is not None and \
                    client_cache_persistence_model != helm.persistence_model(helm.release_values(self)):
                helm.install_release(self, client_cache_persistence_model=client_cache_persistence_model)
                return
            old = {p["metadata"]["uid"] for p in self._operator_pods()}
            k8s.rollout_restart(self.kube, OPERATOR_NAMESPACE, helm.DEPLOYMENT)
            k8s.wait_for("the operator's new pod to be Ready", lambda: [
                p for p in self._operator_pods() if _pod_ready(p) and p["metadata"]["uid"] not in old] or None, 180,
                interval=0.3, hint=f"`kubectl describe pod -n {OPERATOR_NAMESPACE} -l {helm.SELECTOR}`")

    def install_operator(self, *, client_cache_persistence_model: str | None = None) -> str:
        """``helm upgrade --install`` VSO's release from the lab's chart repository with the notebook's files
        (labkit/helm.py); re-running upgrades it (keeping its values, with the given client-cache model)."""
        from . import helm

        with self.state.lock("install the VSO release"):
            return helm.install_release(self, client_cache_persistence_model=client_cache_persistence_model)

    def uninstall_operator(self) -> list[str]:
        """``helm uninstall`` the release, leaving no operator pod and no stuck object (labkit/helm.py)."""
        from . import helm

        with self.state.lock("uninstall the VSO release"):
            return helm.uninstall_release(self)

    #: VSO is the Helm release's pod, whose chart renders the transit VaultAuth of the encrypted cache
    helm_managed_operator = True

    def operator_settings(self) -> dict[str, Any]:
        """The release's client-cache model, from its values (``helm get values``); "none" when not installed."""
        from . import helm

        try:
            installed = self._release_installed()
        except requests.RequestException:
            installed = False
        return {"client_cache_persistence_model": helm.persistence_model(helm.release_values(self)) if installed else "none"}

    def kill(self, name: str) -> None:
        """SIGKILL one component, or with ``name="operator"`` the manager container's process (fault drills, tests)."""
        pid = self.components[name].pid() if name != "operator" else self._manager_pid()
        if pid:
            psutil.Process(pid).kill()
            # Gone, or a zombie its parent has not collected yet (a lab started by another process, e.g. a kernel's).
            _procs._wait_gone(pid, 5)
            _procs._reap(pid, 0)

    def _manager_pid(self) -> int | None:
        pods = [p for p in self._operator_pods() if p.get("status", {}).get("phase") == "Running"]
        return _pod_pid(self, pods[0]["metadata"]["uid"]) if pods else None

    def _write_admin_kubeconfig(self) -> None:
        pki = self.state.path("pki")
        text = _kubeconfig(
            self.kube_api, "vsolab", "vsolab-admin",
            user={"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            ca_file=str(pki / "ca.crt"),
        )
        self.state.write_private("kube/admin.kubeconfig", text)

    # -- what the stages need ----------------------------------------------------------------------
    @property
    def kube(self) -> Any:
        """A kubernetes ApiClient for the lab's admin (cached)."""
        if self._kube is None:
            from . import k8s

            self._kube = k8s.api_client(self.kubeconfig)
        return self._kube

    @property
    def names(self) -> Names:
        return Names()

    @property
    def vault_addr_for_cluster(self) -> str:
        """Vault's address as VSO (in the cluster) reaches it."""
        return self.vault_addr

    @property
    def kube_api_for_vault(self) -> str:
        """The Kubernetes API address as Vault reaches it (for TokenReview)."""
        return self.kube_api

    @property
    def pg_address_for_vault(self) -> tuple[str, int]:
        return self.pg_address

    pg_admin_user = "root"

    @property
    def pg_admin_password(self) -> str:
        return str(self.state.secrets().get("postgres_password", ""))

    @property
    def pg_address_for_pods(self) -> tuple[str, int]:
        return self.pg_address

    def app_url(self, namespace: str, name: str) -> str:
        """Base URL of a Ready pod of Deployment ``name``: the node agent's port annotation."""
        from . import k8s
        from .agent import PORT_ANNOTATION

        for pod in k8s.ready_pods(self.kube, namespace, f"app={name}"):
            port = (pod.metadata.annotations or {}).get(PORT_ANNOTATION)
            if port:
                return f"http://127.0.0.1:{port}"
        raise SyncError(f"Checked for a Ready pod of {namespace}/{name} with a port: there is none.",
                        ["Deploy the app first.", "Wait for its pod to be Ready: `kubectl get pods -n " + namespace + "`.",
                         "Run `labkit status` to check the node agent."])

    def events_supported(self) -> tuple[bool, str]:
        from .vault import events_supported

        return events_supported(self)


def _parallel(*steps: Callable[[], None], abort: threading.Event | None = None) -> None:
    """Run ``steps`` in threads; re-raise the first error (a LabkitError reaches the user as is).

    The first failure sets ``abort``, so the other steps stop waiting for their components (which may
    depend on the failed one) instead of running into their own timeouts.
    """
    errors: list[BaseException] = []

    def run(step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
            if abort is not None:
                abort.set()

    threads = [threading.Thread(target=run, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _kubeconfig(server: str, cluster: str, user_name: str, *, user: dict[str, str], ca_file: str) -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user_name}}],
    })


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _pod_serving(lab: LocalLab, pod: dict[str, Any]) -> bool:
    """Ready, and about the manager process that runs now: after a crash of the whole lab the API server still
    holds the old pod status (Ready, with the dead process's containerID) until the node agent has restarted it."""
    if not _pod_ready(pod):
        return False
    st: dict[str, Any] = next((c for c in (pod.get("status") or {}).get("containerStatuses") or []
                               if c.get("name") == "manager"), {})
    cid = str(st.get("containerID") or "")
    if not cid.startswith("local://") or not cid[8:].isdigit():
        return False
    return int(cid[8:]) in {p.pid for p in _procs.tagged(f"{lab.state.lab_id}:pod:{pod['metadata']['uid']}")}


def _pod_pid(lab: LocalLab, uid: str, program: str = "vso-manager") -> int | None:
    """The pid of a pod's process running ``program`` (the node agent tags them ``<lab id>:pod:<uid>``)."""
    for proc in _procs.tagged(f"{lab.state.lab_id}:pod:{uid}"):
        with contextlib.suppress(psutil.Error, IndexError):
            if Path(proc.cmdline()[0]).name == program:
                return proc.pid
    return None
