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

This module is the PLAN (container specs, network wiring, Helm values and command
lines): pure functions, unit-tested without Docker. :class:`~labkit.backends.minikube.lab.MinikubeLab`
executes it; :mod:`labkit.backends.minikube.doctor` checks the tools it needs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...display import mask
from ...errors import ParameterError
from ...names import Names
from ..cluster_plan import CHART_VERSION, HELM_FIX, KUBECTL_FIX, RELEASE, helm_upgrade_command, vso_values

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
                                 [f"Use only {', '.join(cls.__dataclass_fields__)}.", "See labkit/backends/minikube/plan.py.",
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
