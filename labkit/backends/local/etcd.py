"""etcd, the lab's Kubernetes store: mutual TLS on its client and peer ports."""

from __future__ import annotations

from typing import Any

import psutil
import requests

from ...errors import ComponentError
from .component import Component
from .pki import ETCD_PEER_CN


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
