"""The minikube backend: the tutorial's own setup, without its tunnel.

A minikube profile (``vsolab``) runs Kubernetes in a Docker container. Vault (dev
mode, in memory) and PostgreSQL run as Docker containers next to it, started with
the Docker SDK and attached to minikube's own Docker network (named after the
profile) at fixed addresses. So Vault reaches the Kubernetes API directly at the
node's IP on port 8443, over TLS with the cluster's CA: no ngrok tunnel and no
``kubectl proxy`` serving the API over plain HTTP, as the tutorial's workaround
does. Pods reach Vault and PostgreSQL at their addresses on that network.

With ``VAULT_LICENSE`` set, Vault is the Enterprise image, which instant updates
(Vault event notifications) need; otherwise the community image runs and the
instant-updates stage explains why it cannot work. VSO is installed with Helm at
the pinned chart version, and upgraded with the client-cache values by
``restart_operator(client_cache_persistence_model=...)``. The example app runs in
the cluster on the stock Python image and is reached by ``kubectl port-forward``.

The PLAN (container specs, network wiring, Helm values and command lines) is made
of pure functions, unit-tested without Docker; :class:`MinikubeLab` executes it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import port_for
import requests

from . import install, k8s
from ._contract import Health, Result
from ._contract import tool_version as _version
from ._state import State
from .display import mask
from .errors import ComponentError, LabkitError, MissingTool, NotRunning, ParameterError
from .external import (
    CHART_VERSION,
    HELM_FIX,
    KUBECTL_FIX,
    RELEASE,
    ClusterLab,
    helm_uninstall_command,
    helm_upgrade_command,
    run,
    vso_values,
)
from .names import Names

PROFILE = "vsolab"
APISERVER_PORT = 8443
VAULT_PORT = 8200
PG_PORT = 5432
VAULT_VERSION = "1.21"
VAULT_ENTERPRISE_IMAGE = f"hashicorp/vault-enterprise:{VAULT_VERSION}-ent"
VAULT_COMMUNITY_IMAGE = f"hashicorp/vault:{VAULT_VERSION}"
PG_IMAGE = "postgres:17"
LABEL = "org.vsolab"
COMMUNITY_LOSES = (
    "VAULT_LICENSE is not set, so Vault runs the community image. Every stage works except instant updates: "
    "VSO's syncConfig.instantUpdates needs Vault Enterprise 1.16.3+ event notifications (sys/events/subscribe). "
    "Set VAULT_LICENSE and run `labkit up --backend minikube` again to switch (Vault dev mode keeps no data)."
)

DOCKER_FIX = ("Install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop "
              "(https://www.docker.com/products/docker-desktop/).")
DOCKER_ENGINE_FIX = ("Start the Docker engine (`sudo systemctl start docker`, or open Docker Desktop), check `docker info`; "
                     "on Linux add yourself to the docker group (`sudo usermod -aG docker $USER`, then log in again).")
MINIKUBE_FIX = ("Install minikube: https://minikube.sigs.k8s.io/docs/start/ (`brew install minikube`, or "
                "`curl -LO https://storage.googleapis.com/minikube/releases/latest/minikube-linux-amd64 && "
                "sudo install minikube-linux-amd64 /usr/local/bin/minikube`).")


@dataclass(frozen=True)
class Tool:
    name: str
    version_args: tuple[str, ...]
    minimum: tuple[int, ...]
    fix: str


TOOLS = (
    Tool("docker", ("version", "--format", "{{.Client.Version}}"), (20, 10), DOCKER_FIX),
    Tool("minikube", ("version", "--short"), (1, 30), MINIKUBE_FIX),
    Tool("helm", ("version", "--short"), (3, 8), HELM_FIX),
    Tool("kubectl", ("version", "--client"), (1, 27), KUBECTL_FIX),
)


# -- the plan ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the user chose: profile, images, cluster size; ``VAULT_LICENSE`` picks the Vault edition."""

    profile: str = PROFILE
    vault_license: str = field(default="", repr=False)
    vault_image_override: str = ""
    pg_image: str = PG_IMAGE
    kubernetes_version: str = ""
    cpus: int = 2
    memory: str = "4g"
    driver: str = "docker"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Settings:
        env = os.environ if environ is None else environ
        base = cls(profile=env.get("VSOLAB_MINIKUBE_PROFILE", PROFILE), vault_license=env.get("VAULT_LICENSE", "").strip(),
                   vault_image_override=env.get("VSOLAB_VAULT_IMAGE", ""),
                   kubernetes_version=env.get("VSOLAB_KUBERNETES_VERSION", ""))
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"Checked the minikube backend's options: {', '.join(sorted(unknown))} unknown.",
                                 [f"Use only {', '.join(cls.__dataclass_fields__)}.", "See labkit/minikube.py.",
                                  "Or set them through VSOLAB_MINIKUBE_PROFILE, VAULT_LICENSE, VSOLAB_VAULT_IMAGE."])
        s = replace(base, **options)
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", s.profile):
            raise ParameterError(f"Checked the minikube profile name {s.profile!r}: use lower-case letters, digits and dashes.",
                                 ["e.g. VSOLAB_MINIKUBE_PROFILE=vsolab", "It names the cluster and its Docker network.",
                                  "Run `minikube profile list` to see existing profiles."])
        return s

    @property
    def enterprise(self) -> bool:
        return bool(self.vault_license)

    @property
    def vault_image(self) -> str:
        if self.vault_image_override:
            return self.vault_image_override
        return VAULT_ENTERPRISE_IMAGE if self.enterprise else VAULT_COMMUNITY_IMAGE

    @property
    def network(self) -> str:
        """minikube's Docker network: the docker driver names it after the profile."""
        return self.profile


@dataclass(frozen=True)
class Wiring:
    """Addresses on minikube's Docker network, where the node, Vault and PostgreSQL meet."""

    network: str
    subnet: str
    node_ip: str
    vault_ip: str
    pg_ip: str

    @property
    def kube_api_for_vault(self) -> str:
        return f"https://{self.node_ip}:{APISERVER_PORT}"

    @property
    def vault_addr_for_cluster(self) -> str:
        return f"http://{self.vault_ip}:{VAULT_PORT}"

    @property
    def pg_address_for_vault(self) -> tuple[str, int]:
        return self.pg_ip, PG_PORT

    @property
    def pg_address_for_pods(self) -> tuple[str, int]:
        return self.pg_ip, PG_PORT


def wiring(network: str, subnet: str, node_ip: str) -> Wiring:
    """Fixed addresses for Vault and PostgreSQL near the top of minikube's subnet, away from its nodes."""
    net = ipaddress.ip_network(subnet, strict=False)
    if net.version != 4 or net.num_addresses < 16:
        raise ParameterError(f"Checked the Docker network {network}'s subnet {subnet}: it needs to be IPv4 and /28 or larger.",
                             [f"Recreate the profile: `minikube delete -p {network}` then `labkit up --backend minikube`.",
                              "Or start it with `minikube start --subnet 192.168.49.0/24`.", "Check `docker network inspect`."])
    node = ipaddress.ip_address(node_ip)
    if node not in net:
        raise ParameterError(f"Checked minikube's node IP {node_ip}: it is not in its network's subnet {subnet}.",
                             ["Run `minikube ip -p <profile>` and `docker network inspect <profile>`.",
                              "Recreate the profile with `minikube delete -p <profile>`.", "Check the driver is docker."])
    vault_ip, pg_ip = net[-6], net[-5]
    return Wiring(network, str(net), node_ip, str(vault_ip), str(pg_ip))


@dataclass(frozen=True)
class ContainerSpec:
    """One ``docker run``, as data."""

    name: str
    image: str
    role: str
    command: tuple[str, ...]
    environment: dict[str, str]
    ports: dict[int, int]  # container port -> host port on 127.0.0.1
    network: str
    ipv4_address: str
    profile: str
    cap_add: tuple[str, ...] = ()
    secret_env: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        body = json.dumps([self.image, self.command, sorted(self.environment.items()), sorted(self.ports.items()),
                           self.network, self.ipv4_address, self.cap_add])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def labels(self) -> dict[str, str]:
        return {f"{LABEL}.profile": self.profile, f"{LABEL}.role": self.role, f"{LABEL}.spec": self.fingerprint()}

    def describe(self) -> dict[str, Any]:
        """The spec with secret values masked, for display."""
        env = {k: (mask(v) if k in self.secret_env else v) for k, v in self.environment.items()}
        return {"name": self.name, "image": self.image, "command": list(self.command), "environment": env,
                "ports": {f"{c}/tcp": f"127.0.0.1:{h}" for c, h in self.ports.items()},
                "network": f"{self.network} ({self.ipv4_address})", "cap_add": list(self.cap_add)}

    def docker_run_kwargs(self, api_version: str) -> dict[str, Any]:
        """Keyword arguments of ``docker.from_env().containers.run`` for this spec."""
        from docker.types import EndpointConfig

        return {
            "image": self.image, "command": list(self.command) or None, "name": self.name, "detach": True,
            "environment": dict(self.environment), "labels": self.labels, "cap_add": list(self.cap_add) or None,
            "ports": {f"{c}/tcp": ("127.0.0.1", h) for c, h in self.ports.items()},
            "network": self.network,
            "networking_config": {self.network: EndpointConfig(api_version, ipv4_address=self.ipv4_address,
                                                               aliases=[self.role])},
        }


def vault_container(settings: Settings, wire: Wiring, root_token: str, host_port: int) -> ContainerSpec:
    """Vault in dev mode (in memory, unsealed, a known root token); Enterprise when a license is given."""
    env = {"VAULT_DEV_ROOT_TOKEN_ID": root_token, "VAULT_DEV_LISTEN_ADDRESS": f"0.0.0.0:{VAULT_PORT}"}
    secret_env = ["VAULT_DEV_ROOT_TOKEN_ID"]
    if settings.enterprise:
        env["VAULT_LICENSE"] = settings.vault_license
        secret_env.append("VAULT_LICENSE")
    return ContainerSpec(
        name=f"{settings.profile}-vault", image=settings.vault_image, role="vault", command=("server", "-dev"),
        environment=env, ports={VAULT_PORT: host_port}, network=wire.network, ipv4_address=wire.vault_ip,
        profile=settings.profile, cap_add=("IPC_LOCK",), secret_env=tuple(secret_env),
    )


def postgres_container(settings: Settings, wire: Wiring, password: str, host_port: int) -> ContainerSpec:
    """PostgreSQL with the tutorial's admin role ``root``."""
    return ContainerSpec(
        name=f"{settings.profile}-postgres", image=settings.pg_image, role="postgres", command=(),
        environment={"POSTGRES_USER": "root", "POSTGRES_PASSWORD": password}, ports={PG_PORT: host_port},
        network=wire.network, ipv4_address=wire.pg_ip, profile=settings.profile, secret_env=("POSTGRES_PASSWORD",),
    )


def minikube_start_command(settings: Settings) -> list[str]:
    return ["minikube", "start", "-p", settings.profile, f"--driver={settings.driver}", f"--cpus={settings.cpus}",
            f"--memory={settings.memory}", f"--apiserver-port={APISERVER_PORT}", "--embed-certs",
            "--wait=apiserver,system_pods,default_sa",
            *([f"--kubernetes-version={settings.kubernetes_version}"] if settings.kubernetes_version else [])]


def minikube_command(verb: str, profile: str) -> list[str]:
    """``status`` (JSON), ``ip``, ``update-context``, ``stop`` or ``delete`` for one profile."""
    return ["minikube", verb, "-p", profile, *(["-o", "json"] if verb == "status" else [])]


@dataclass(frozen=True)
class Plan:
    """Everything ``up`` does, as data."""

    settings: Settings
    wiring: Wiring
    minikube_start: list[str]
    vault: ContainerSpec
    postgres: ContainerSpec
    vso_values: dict[str, Any]
    helm_install: list[str]

    def commands(self) -> list[list[str]]:
        """Every command line the plan runs (containers are started through the Docker SDK, not a CLI)."""
        return [self.minikube_start, minikube_command("ip", self.settings.profile), self.helm_install]


def plan(settings: Settings, *, subnet: str, node_ip: str, vault_port: int, pg_port: int, root_token: str, pg_password: str,
         kubeconfig: str | Path, values_file: str | Path, model: str = "none", names: Names | None = None) -> Plan:
    names = names or Names()
    wire = wiring(settings.network, subnet, node_ip)
    return Plan(
        settings=settings, wiring=wire, minikube_start=minikube_start_command(settings),
        vault=vault_container(settings, wire, root_token, vault_port),
        postgres=postgres_container(settings, wire, pg_password, pg_port),
        vso_values=vso_values(model, names, f"{names.vault_ns}/{names.vault_connection}"),
        helm_install=helm_upgrade_command(release=RELEASE, namespace=names.operator_ns, chart_version=CHART_VERSION,
                                          values_file=values_file, kubeconfig=kubeconfig, context=settings.profile),
    )


# -- execution --------------------------------------------------------------------------------------------------
def docker_client(timeout: int = 10) -> Any:
    """A Docker SDK client whose engine answered a ping."""
    try:
        import docker
    except ImportError:
        raise MissingTool("Checked for the Python package `docker` (the Docker SDK): it is not installed.",
                          ["pip install docker", "Or reinstall labkit: pip install -e ."]) from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise MissingTool(f"Checked that the Docker engine answers (DOCKER_HOST or /var/run/docker.sock): it does not ({exc}).",
                          [DOCKER_ENGINE_FIX, DOCKER_FIX, "Or use the local backend, which needs no Docker."]) from None


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
    def up(self, progress: Any = None, *, operator: bool = True) -> dict[str, str]:
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


# -- labkit doctor --backend minikube -------------------------------------------------------------------------------
def version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


def check_tool(t: Tool) -> Result:
    path = shutil.which(t.name)
    if not path and t.name == "kubectl":
        found = install.kubectl_binary()
        path = str(found) if found else None
    if not path:
        return Result(t.name, False, "", t.fix)
    text = _version([path, *t.version_args])
    have = version_tuple(text)
    if have and have < t.minimum:
        want = ".".join(map(str, t.minimum))
        return Result(t.name, False, text, f"{t.name} {text} is older than {want}: upgrade it. {t.fix}")
    return Result(t.name, True, text or path)


def doctor_checks(environ: dict[str, str] | None = None) -> list[Result]:
    """Each tool with its version, the Docker engine, and which Vault edition ``VAULT_LICENSE`` selects."""
    env = os.environ if environ is None else environ
    out = [check_tool(t) for t in TOOLS]
    try:
        client = docker_client(timeout=5)
        out.append(Result("docker engine", True, f"server {client.version().get('Version', '?')}"))
    except LabkitError as exc:
        out.append(Result("docker engine", False, "", exc.fixes[0]))
    settings = Settings.from_env(env)
    if settings.enterprise:
        out.append(Result("VAULT_LICENSE", True, f"set: Vault Enterprise ({settings.vault_image}); instant updates work"))
    else:
        out.append(Result("VAULT_LICENSE", True, f"not set: Vault community ({settings.vault_image}); "
                                                 "instant updates (event notifications) need Enterprise"))
    return out
