"""A pod's service-account credentials, as the node agent gives them to its containers.

A kubelet projects a bound service-account token, the cluster CA and the namespace into
``/var/run/secrets/kubernetes.io/serviceaccount`` inside the container, and in-cluster clients find the API
server through ``KUBERNETES_SERVICE_HOST``. Local processes share the host's filesystem and have no mount
namespace, so that path cannot be mounted for them. The agent does the next best real thing: it asks the API
server for a token of the pod's service account bound to the pod (the TokenRequest API, as the kubelet does),
writes it with the CA and the namespace to ``<pod dir>/serviceaccount/`` (mode 0600), and gives every container
``KUBECONFIG=<pod dir>/serviceaccount/kubeconfig``, a kubeconfig that reads that token file. Clients built on
client-go (VSO, kube-rbac-proxy) load it as they would the in-cluster config, and re-read the token file, which
the agent renews at 80 % of its lifetime, as the kubelet does.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kclient

from ..._state import _write_private

#: What the kubelet asks for (one hour and a few seconds); renewed at 80 %.
TOKEN_SECONDS = 3607
RENEW_AT = 0.8


@dataclass
class Credentials:
    """Where a pod's credentials are, and when to renew its token."""

    dir: Path
    renew_at: float

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"


def wanted(pod: Any) -> bool:
    """The kubelet's rule: a token unless the pod (or, when the pod says nothing, its account) opts out."""
    return pod.spec.automount_service_account_token is not False


def issue(core: kclient.CoreV1Api, pod: Any, pod_dir: Path, server: str, ca_file: Path) -> Credentials:
    """Request a token for the pod's service account bound to the pod; write it, the CA, the namespace and a
    kubeconfig to ``<pod_dir>/serviceaccount``."""
    ns, account = pod.metadata.namespace, pod.spec.service_account_name or "default"
    body = kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(
        audiences=[], expiration_seconds=TOKEN_SECONDS,
        bound_object_ref=kclient.V1BoundObjectReference(api_version="v1", kind="Pod", name=pod.metadata.name,
                                                        uid=pod.metadata.uid)))
    resp = core.create_namespaced_service_account_token(account, ns, body)
    assert resp.status is not None and resp.status.token is not None  # the API server answers with the token
    d = pod_dir / "serviceaccount"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(d / "token", resp.status.token)
    _write_private(d / "namespace", ns)
    if not (d / "ca.crt").exists():
        shutil.copyfile(ca_file, d / "ca.crt")
        os.chmod(d / "ca.crt", 0o600)
    _write_private(d / "kubeconfig", yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
        "clusters": [{"name": "in-cluster", "cluster": {"server": server, "certificate-authority": str(d / "ca.crt")}}],
        "users": [{"name": f"system:serviceaccount:{ns}:{account}", "user": {"tokenFile": str(d / "token")}}],
        "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "namespace": ns,
                                                         "user": f"system:serviceaccount:{ns}:{account}"}}],
    }))
    expires = resp.status.expiration_timestamp.timestamp() if resp.status.expiration_timestamp else \
        time.time() + TOKEN_SECONDS
    return Credentials(d, time.time() + RENEW_AT * (expires - time.time()))
