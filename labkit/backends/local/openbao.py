"""OpenBao (Vault) with raft storage on 127.0.0.1: initialised once, unsealed at every start."""

from __future__ import annotations

import os
import time

import hvac
import requests

from ...errors import ComponentError, StateError
from .component import Component


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
