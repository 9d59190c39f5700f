"""kube-controller-manager: the controllers the lab needs (service accounts, namespaces, Deployments, Jobs)."""

from __future__ import annotations

import requests

from ... import install
from .component import Component

KCM_CONTROLLERS = ",".join([
    "serviceaccount-token-controller", "serviceaccount-controller", "namespace-controller",
    "garbage-collector-controller", "deployment-controller", "replicaset-controller",
    "root-ca-certificate-publisher-controller",
    # Jobs make pods: the VSO chart's pre-delete and pre-upgrade hooks are Jobs (`helm uninstall`, `helm upgrade`).
    "job-controller",
])


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
