"""What every stage's undo (and notebook 07's sweep) uses to remove what the lab made, quietly when it is gone."""

from __future__ import annotations

import contextlib
from typing import Any

from hvac import exceptions as hvexc
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from . import k8s, vso
from .backends.contract import Lab


def delete_namespace(lab: Lab, ns: str) -> None:
    """Empty the namespace first, then delete it.

    The namespace controller retries a namespace that still has content with a growing delay
    (about 10 s here); deleting the VSO resources, the Deployment and the pods first lets it finish
    on its first pass.
    """
    if k8s.namespace_gone(lab.kube, ns):
        return
    res = lambda kind: k8s.dynamic(lab.kube).resources.get(api_version=vso.API_VERSION, kind=kind)
    # Secrets first: VSO revokes a VaultDynamicSecret's lease with the client its VaultAuth gives it,
    # so the VaultAuth and VaultConnection must outlive them.
    for kinds in (("VaultDynamicSecret", "VaultStaticSecret", "VaultPKISecret"), ("VaultAuth", "VaultConnection")):
        for kind in kinds:
            for obj in res(kind).get(namespace=ns).items:
                vso.delete(lab, kind, obj.metadata.name, ns)
        def finalised(kinds: tuple[str, ...] = kinds) -> bool:
            return not any(res(kind).get(namespace=ns).items for kind in kinds)

        k8s.wait_for(f"VSO to finalise the {' and '.join(kinds)} resources in {ns}", finalised, 60,
                     hint="VSO removes its finalizers; check that VSO runs (`labkit status`)")
    apps, core = kclient.AppsV1Api(lab.kube), kclient.CoreV1Api(lab.kube)
    apps.delete_collection_namespaced_deployment(ns)
    apps.delete_collection_namespaced_replica_set(ns)
    k8s.wait_for(f"the pods in {ns} to stop", lambda: not core.list_namespaced_pod(ns).items, 60,
                 hint="the node agent stops pods; check `labkit status`")
    try:
        k8s.delete(lab.kube, "v1", "Namespace", ns)
    except ApiException as exc:
        if exc.status != 404:
            raise
    k8s.wait_for(f"namespace {ns} to be deleted", lambda: k8s.namespace_gone(lab.kube, ns), 120,
                 hint="a namespace waits for its pods and VSO resources; check `kubectl get all -n " + ns + "`")


def vault_quiet(fn: Any, *a: Any, **kw: Any) -> None:
    """``fn(*a, **kw)``, where Vault's 404 (the thing is already gone) is no error."""
    with contextlib.suppress(hvexc.InvalidPath):
        fn(*a, **kw)


def leases(c: Any, prefix: str) -> list[str]:
    """Lease ids under ``prefix`` (``LIST sys/leases/lookup/<prefix>``); [] when there are none."""
    try:
        keys = c.sys.list_leases(prefix)["data"]["keys"]
    except hvexc.InvalidPath:  # 404: no lease under the prefix
        return []
    return [prefix.rstrip("/") + "/" + k for k in keys]
