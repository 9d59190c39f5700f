"""The local lab: etcd, kube-apiserver, kube-controller-manager, PostgreSQL,
OpenBao, the node agent and the chart repository, as processes on 127.0.0.1; VSO
is the pod of a Helm release (labkit/helm.py, operator.py) that the node agent runs.

``LocalLab.up()`` is idempotent: healthy components are reused, dead ones are
started again from the state directory, so Vault data, leases and PostgreSQL
roles survive ``down`` followed by ``up``. ``down(purge=True)`` wipes the state.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import urllib3

from ... import _procs, install
from ..._state import State, port_free
from ...errors import NotRunning, StateError, SyncError
from ...names import Names
from ..contract import CACHE_MODELS as CACHE_MODELS  # shared with the other backends and helm; re-exported
from ..contract import Health as Health
from . import bootstrap, operator, repair, runas
from .apiserver import APIServer
from .bootstrap import _parallel
from .charts import ChartRepo
from .component import Component
from .etcd import Etcd
from .kcm import ControllerManager
from .nodeagent import NodeAgent
from .openbao import OpenBao
from .pki import ca_pem, ensure_etcd_pki, ensure_kubelet_pki, ensure_pki
from .postgres import Postgres

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

NODE_NAME = "vsolab-node"

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
        from ... import _env, helm

        # `vault` is OpenBao's CLI here (same arguments), so the tutorial's commands run as written
        return _env.lab_env(self, tools_dir=self.tools_dir, helm_env=helm.env(self), shared_operator=False)

    @property
    def tools_dir(self) -> Path:
        """``<state>/bin``: ``vault`` and ``bao`` (OpenBao's CLI) and ``kubectl``, made by ``up``."""
        return self.state.path("bin")

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
        repair.check_secrets(self)
        lost = repair.pki_lost(self)
        if lost:
            repair.reset_pki(self, say)
        ensure_pki(self.state)
        ensure_etcd_pki(self.state)
        ensure_kubelet_pki(self.state)
        self._ensure_tools()
        old = repair.stale(self) | ({"ca": "lost"} if lost else {})
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
                repair.retoken(self)
            self._ensure_crds()  # helm installs them too, but the lab's code needs the kinds before notebook 01
            if old:
                self._ensure_crds()  # propagate lists VaultConnections (a fresh lab's new CA reads as "old" too)
                repair.propagate(self, old, say)
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
        self.state.update(last_up=time.time(), applied=repair.applied(self))
        return actions

    def down(self, purge: bool = False) -> list[str]:
        """Stop every component (pods first, Vault data kept unless ``purge``); no process or port is left.

        Works on damaged state too: processes are found by pid file and by the lab's tag, not by ``state.json``.
        """
        if not self.state.root.exists():
            stopped = self._down()
            if purge:
                runas.purge_pod_root(self.state)
                self.state.purge()
            return stopped
        with self.state.lock("labkit down" + (" --purge" if purge else "")):
            stopped = self._down()
            if purge:
                runas.purge_pod_root(self.state)
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

    def healthy(self) -> bool:
        return all(h.healthy for h in self.status())

    def kill(self, name: str) -> None:
        """SIGKILL one component, or with ``name="operator"`` the manager container's process (fault drills, tests)."""
        pid = self.components[name].pid() if name != "operator" else self._manager_pid()
        if pid:
            psutil.Process(pid).kill()
            # Gone, or a zombie its parent has not collected yet (a lab started by another process, e.g. a kernel's).
            _procs._wait_gone(pid, 5)
            _procs._reap(pid, 0)

    # -- start-up steps (bootstrap.py) and VSO's Helm release (operator.py) ------------------------
    _ensure_tools = bootstrap.ensure_tools
    _ensure_crds = bootstrap.ensure_crds
    _preflight = bootstrap.preflight
    _write_admin_kubeconfig = bootstrap.write_admin_kubeconfig
    operator_installed = operator.operator_installed
    _release_installed = operator.release_installed
    _operator_pods = operator.operator_pods
    _ensure_operator = operator.ensure_operator
    _operator_health = operator.operator_health
    restart_operator = operator.restart_operator
    install_operator = operator.install_operator
    uninstall_operator = operator.uninstall_operator
    #: VSO is the Helm release's pod, whose chart renders the transit VaultAuth of the encrypted cache
    helm_managed_operator = True
    operator_settings = operator.operator_settings
    _manager_pid = operator.manager_pid

    # -- what the stages need ----------------------------------------------------------------------
    @property
    def kube(self) -> Any:
        """A kubernetes ApiClient for the lab's admin (cached)."""
        if self._kube is None:
            from ... import k8s

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
        from ... import k8s
        from .kubelet import PORT_ANNOTATION

        for pod in k8s.ready_pods(self.kube, namespace, f"app={name}"):
            port = (pod.metadata.annotations or {}).get(PORT_ANNOTATION)
            if port:
                return f"http://127.0.0.1:{port}"
        raise SyncError(f"Checked for a Ready pod of {namespace}/{name} with a port: there is none.",
                        ["Deploy the app first.", "Wait for its pod to be Ready: `kubectl get pods -n " + namespace + "`.",
                         "Run `labkit status` to check the node agent."])

    def events_supported(self) -> tuple[bool, str]:
        from ...vault import events_supported

        return events_supported(self)
