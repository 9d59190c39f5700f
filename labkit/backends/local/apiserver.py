"""kube-apiserver on 127.0.0.1, backed by etcd; RBAC, the node agent's kubelet API over TLS."""

from __future__ import annotations

import requests

from .component import Component


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
