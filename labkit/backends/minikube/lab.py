"""The minikube backend's execution: :class:`MinikubeLab` runs the plan (:mod:`labkit.backends.minikube.plan`)
with minikube's CLI, the Docker SDK and Helm, and reads back what runs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import port_for
import requests

from ... import k8s
from ..._state import State
from ...errors import ComponentError, LabkitError, MissingTool, NotRunning
from ...names import Names
from ..cluster import ClusterLab, run
from ..cluster_plan import CHART_VERSION, HELM_FIX, RELEASE, helm_uninstall_command
from ..contract import Health, Progress
from .doctor import docker_client, doctor_checks
from .plan import (
    COMMUNITY_LOSES,
    LABEL,
    MINIKUBE_FIX,
    ContainerSpec,
    Plan,
    Settings,
    Wiring,
    minikube_command,
    minikube_start_command,
    plan,
    wiring,
)


class MinikubeLab(ClusterLab):
    """The tutorial's lab on minikube, Docker and Helm, rooted in one state directory."""

    backend = "minikube"
    reuse_helm_values = False  # the lab owns this VSO release: every upgrade sends the full values

    def __init__(self, state: State | str | Path | None = None, **options: Any) -> None:
        super().__init__(state, "minikube")
        self.settings = Settings.from_env(**options)
        self.kube_context = self.settings.profile
        self._say: Any = lambda m: print(m, flush=True)

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def names(self) -> Names:
        return Names()

    @property
    def kubeconfig(self) -> Path:  # type: ignore[override]
        return self.state.path("kube", "minikube.kubeconfig")

    def _facts(self) -> dict[str, Any]:
        return dict(self.state.read().get("minikube", {}))

    def _ports(self) -> dict[str, int]:
        facts = self._facts()
        ports = dict(facts.get("ports", {}))
        for name in ("vault", "postgres"):
            if name not in ports:
                ports[name] = port_for.select_random(exclude_ports=set(ports.values()))
        if ports != facts.get("ports"):
            self.state.ensure()
            self.state.update(minikube={**facts, "ports": ports})
        return ports

    def _secret(self, key: str) -> str:
        value = self.state.secrets().get(key)
        if not value:
            self.state.ensure()
            value = secrets.token_urlsafe(18)
            self.state.update_secrets(**{key: value})
        return str(value)

    @property
    def wiring(self) -> Wiring:
        facts = self._facts()
        if not facts.get("subnet") or not facts.get("node_ip"):
            raise NotRunning(f"Checked {self.state.path('state.json')} for minikube's network addresses: none yet.",
                             ["Start the lab: `labkit up --backend minikube` (or notebook 00 with BACKEND='minikube').",
                              "If you use another state directory, set VSOLAB_STATE to it.", "Run `labkit doctor --backend minikube`."])
        return wiring(self.settings.network, facts["subnet"], facts["node_ip"])

    def plan(self, *, subnet: str | None = None, node_ip: str | None = None, model: str | None = None) -> Plan:
        facts = self._facts()
        ports = self._ports()
        return plan(self.settings, subnet=subnet or facts.get("subnet", ""), node_ip=node_ip or facts.get("node_ip", ""),
                    vault_port=ports["vault"], pg_port=ports["postgres"], root_token=self.vault_token,
                    pg_password=self.pg_admin_password, kubeconfig=self.kubeconfig, values_file=self.values_file,
                    model=model or self.state.read().get("vso", {}).get("client_cache_persistence_model", "none"), names=self.names)

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self._ports()['vault']}"

    @property
    def vault_token(self) -> str:
        return self._secret("vault_root_token")

    @property
    def vault_addr_for_cluster(self) -> str:
        return self.wiring.vault_addr_for_cluster

    @property
    def kube_api_for_vault(self) -> str:
        return self.wiring.kube_api_for_vault

    @property
    def pg_address(self) -> tuple[str, int]:
        return "127.0.0.1", self._ports()["postgres"]

    @property
    def pg_address_for_vault(self) -> tuple[str, int]:
        return self.wiring.pg_address_for_vault

    @property
    def pg_address_for_pods(self) -> tuple[str, int]:
        return self.wiring.pg_address_for_pods

    @property
    def pg_admin_password(self) -> str:
        return self._secret("postgres_password")

    def events_supported(self) -> tuple[bool, str]:
        ok, why = super().events_supported()
        if not ok and not self.settings.enterprise:
            why += " Set VAULT_LICENSE and run `labkit up --backend minikube` to use the Enterprise image."
        return ok, why

    # -- running things ----------------------------------------------------------------------------------------
    def _minikube(self, verb_or_cmd: str | list[str], what: str, *, check: bool = True, timeout: float = 900) -> str:
        cmd = verb_or_cmd if isinstance(verb_or_cmd, list) else minikube_command(verb_or_cmd, self.settings.profile)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        if check:
            return run(cmd, what, [MINIKUBE_FIX, f"Read `minikube logs -p {self.settings.profile}`.",
                                   "Run `labkit doctor --backend minikube`."], env=env, timeout=timeout)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    def cluster_status(self) -> dict[str, Any]:
        out = self._minikube("status", "read the profile's status", check=False).strip()
        try:
            return json.loads(out.splitlines()[-1]) if out else {}
        except ValueError:
            return {}

    def _ensure_cluster(self, say: Any) -> str:
        st = self.cluster_status()
        running = st.get("Host") == "Running" and st.get("APIServer") == "Running"
        if running and self.kubeconfig.exists():
            # Cheap, and repairs the kubeconfig if a restart moved the API's address or port.
            self._minikube("update-context", "update the kubeconfig", check=False)
            return "reused"
        say(f"  minikube   starting profile {self.settings.profile} (a few minutes the first time)")
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self._minikube(minikube_start_command(self.settings), f"start the minikube profile {self.settings.profile}")
        if not self.kubeconfig.exists():
            raise ComponentError(f"Started the minikube profile {self.settings.profile}: it wrote no kubeconfig at {self.kubeconfig}.",
                                 ["Check minikube honours KUBECONFIG (`minikube update-context -p <profile>`).",
                                  "Upgrade minikube.", "Run `labkit up --backend minikube` again."])
        os.chmod(self.kubeconfig, 0o600)
        if not running:
            self.state.update(minikube={**self._facts(), "started_profile": True})
        self._kube = None
        return "configured" if running else ("restarted" if st else "started")

    def _discover_network(self, client: Any) -> tuple[str, str]:
        import docker

        node_ip = self._minikube("ip", "read the node's IP").strip()
        try:
            net = client.networks.get(self.settings.network)
        except docker.errors.NotFound:
            raise ComponentError(
                f"Checked Docker for minikube's network {self.settings.network!r}: it does not exist.",
                ["The minikube docker driver creates it: check `minikube profile list` shows the docker driver.",
                 f"Recreate the profile: `minikube delete -p {self.settings.profile}` then `labkit up --backend minikube`.",
                 "Run `docker network ls`."]) from None
        configs = (net.attrs.get("IPAM") or {}).get("Config") or []
        subnet = next((c["Subnet"] for c in configs if c.get("Subnet") and ":" not in c["Subnet"]), "")
        if not subnet:
            raise ComponentError(f"Checked the Docker network {self.settings.network!r} for an IPv4 subnet: it has none.",
                                 [f"Recreate the profile: `minikube delete -p {self.settings.profile}`, then up again.",
                                  "Or start it with `minikube start --subnet 192.168.49.0/24`.",
                                  f"Inspect it: `docker network inspect {self.settings.network}`."])
        self.state.update(minikube={**self._facts(), "subnet": subnet, "node_ip": node_ip})
        return subnet, node_ip

    def _ensure_container(self, client: Any, spec: ContainerSpec) -> str:
        import docker

        action = "created"
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            self._say(f"  {spec.role:<10} pulling {spec.image}")
            try:
                client.images.pull(spec.image)
            except docker.errors.DockerException as exc:
                raise ComponentError(f"Pulled {spec.image} for the {spec.role} container: Docker could not ({exc}).",
                                     [f"Try it yourself: `docker pull {spec.image}`.", "Check your network or registry mirror.",
                                      "Set VSOLAB_VAULT_IMAGE to an image you can pull (for Vault)."]) from None
        try:
            c = client.containers.get(spec.name)
            if c.labels.get(f"{LABEL}.spec") == spec.fingerprint():
                if c.status == "running":
                    return "reused"
                c.start()
                return "started"
            c.remove(force=True)
            action = "recreated (its settings changed)"
        except docker.errors.NotFound:
            pass
        try:
            client.containers.run(**spec.docker_run_kwargs(client.api.api_version))
        except docker.errors.DockerException as exc:
            raise ComponentError(f"Ran the {spec.role} container {spec.name} from {spec.image}: Docker refused ({exc}).",
                                 ["Check the image can be pulled: `docker pull " + spec.image + "`.",
                                  f"Check nothing else uses {spec.ipv4_address} on the {spec.network} network.",
                                  f"Remove a stale container: `docker rm -f {spec.name}`."]) from None
        return action

    def _wait(self, what: str, probe: Any, timeout: float, fixes: list[str]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if probe():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        raise ComponentError(f"Waited {timeout:.0f}s for {what}: it did not become ready.", fixes)

    def _vault_ok(self) -> bool:
        return requests.get(f"{self.vault_addr}/v1/sys/health", timeout=3).status_code == 200

    def _pg_ok(self) -> bool:
        import psycopg

        with psycopg.connect(self.pg_dsn(), connect_timeout=3) as conn:
            return conn.execute("select 1").fetchone() == (1,)

    # -- life cycle ---------------------------------------------------------------------------------------------
    def up(self, progress: Progress | None = None, *, operator: bool = True) -> dict[str, str]:
        """Start or reuse the profile, the Vault and PostgreSQL containers, and VSO (unless ``operator=False``: then
        notebook 01's Helm cell installs it). Idempotent."""
        say = self._say = progress or (lambda m: print(m, flush=True))
        missing = [r for r in doctor_checks() if not r.ok]
        if missing:
            raise MissingTool("Checked the minikube backend's tools: " + ", ".join(r.name for r in missing) + " missing.",
                              [f"{r.name}: {r.fix}" for r in missing])
        self.state.ensure()
        if not self.settings.enterprise:
            say(f"  note: {COMMUNITY_LOSES}")
        client = docker_client(timeout=300)
        actions = {"minikube": self._ensure_cluster(say)}
        subnet, node_ip = self._discover_network(client)
        p = self.plan(subnet=subnet, node_ip=node_ip)
        for spec in (p.vault, p.postgres):
            actions[spec.role] = self._ensure_container(client, spec)
        self._wait("Vault's /v1/sys/health to answer 200", self._vault_ok, 90,
                   [f"Read its log: `docker logs {p.vault.name}`.", "With VAULT_LICENSE: check the license is valid.",
                    "Run `labkit up --backend minikube` again."])
        self._wait("PostgreSQL to accept the admin login", self._pg_ok, 90,
                   [f"Read its log: `docker logs {p.postgres.name}`.", "Run `labkit up --backend minikube` again.",
                    f"Remove it to start afresh: `docker rm -f {p.postgres.name}`."])
        try:
            op = self.operator()
            actions["vso"] = "reused" if op.release and op.chart_version == CHART_VERSION else ""
        except NotRunning:
            actions["vso"] = ""
        if actions["vso"]:
            self.wait_operator_ready()
        elif not operator:
            actions["vso"] = "not installed (notebook 01 installs it)"
        else:
            say(f"  vso        installing chart {CHART_VERSION} with Helm")
            actions["vso"] = self.install_operator(p.vso_values["controller"]["manager"]["clientCache"]["persistenceModel"])
        self.state.update(last_up=time.time())
        for name, action in actions.items():
            if action != "reused":
                say(f"  {name:<10} {action}")
        return actions

    def status(self) -> list[Health]:
        if not self.state.root.exists():
            return [Health(c, None, "", False, "", "no state: run `labkit up --backend minikube`")
                    for c in ("minikube", "vault", "postgres", "vso")]
        st = self.cluster_status() if shutil.which("minikube") else {}
        up = st.get("Host") == "Running" and st.get("APIServer") == "Running"
        out = [Health("minikube", None, f"profile {self.settings.profile}", up, "",
                      "" if up else ("minikube is not installed" if not shutil.which("minikube") else f"host {st.get('Host', 'absent')}"))]
        try:
            client = docker_client(timeout=5)
        except LabkitError as exc:
            client, why = None, exc.checked[:120]
        addresses = {"vault": self.vault_addr, "postgres": "{}:{}".format(*self.pg_address)}
        for role, probe in (("vault", self._vault_ok), ("postgres", self._pg_ok)):
            name = f"{self.settings.profile}-{role}"
            if client is None:
                out.append(Health(role, None, addresses[role], False, "", why))
                continue
            try:
                c = client.containers.get(name)
                ok = c.status == "running" and bool(probe())
                out.append(Health(role, None, addresses[role], ok, (c.image.tags or [""])[0],
                                  "" if ok else f"container {name} is {c.status}"))
            except Exception as exc:  # status never raises
                out.append(Health(role, None, name, False, "", type(exc).__name__))
        out.append(self._operator_health() if up else Health("vso", None, "", False, "", "the cluster is not running"))
        return out

    def down(self, purge: bool = False, *, delete_profile: bool = False) -> list[str]:
        """Remove the lab's namespaces, the VSO release and the containers; stop the profile if the lab started it.

        ``delete_profile`` also deletes the minikube profile; ``purge`` also wipes the state directory.
        """
        done = [f"{n} port-forward(s)" for n in [self.port_forwards.stop_all()] if n]
        st = self.cluster_status() if shutil.which("minikube") else {}
        if st.get("APIServer") == "Running" and self.kubeconfig.exists():
            done += self._delete_lab_objects()  # while VSO and Vault still run, so finalizers and revocations complete
            try:
                op = self.operator()
                run(helm_uninstall_command(release=op.release or RELEASE, namespace=op.namespace, kubeconfig=self.kubeconfig,
                                           context=self.kube_context), "uninstall VSO", [HELM_FIX])
                done.append(f"helm release {op.release or RELEASE}")
            except NotRunning:
                pass
            if k8s.delete(self.kube, "v1", "Namespace", self.names.operator_ns):
                done.append(f"namespace {self.names.operator_ns}")
        try:
            client = docker_client(timeout=5)
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}.profile={self.settings.profile}"}):
                c.remove(force=True)
                done.append(f"container {c.name}")
        except LabkitError:
            pass
        if delete_profile and shutil.which("minikube"):
            self._minikube("delete", f"delete the minikube profile {self.settings.profile}")
            done.append(f"minikube profile {self.settings.profile} (deleted)")
        elif self._facts().get("started_profile") and st.get("Host") == "Running":
            self._minikube("stop", f"stop the minikube profile {self.settings.profile}")
            done.append(f"minikube profile {self.settings.profile} (stopped)")
        self._kube = None
        if purge:
            self.state.purge()
        elif self.state.root.exists():
            # Vault and VSO are gone: the next up starts them with the defaults again.
            self.state.update(vso={}, port_forwards={})
        return done
