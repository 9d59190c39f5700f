"""Kubernetes helpers: clients, server-side apply, waits, and reading Secrets.

Everything goes through the official ``kubernetes`` client. Objects are applied
with server-side apply, so applying the same manifest twice is a no-op.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from .errors import NotRunning, SyncError

T = TypeVar("T")
FIELD_MANAGER = "labkit"


def api_client(kubeconfig: str | Path, context: str | None = None) -> kclient.ApiClient:
    """An ApiClient for ``kubeconfig``."""
    return kconfig.new_client_from_config(config_file=str(kubeconfig), context=context)


_dyn_cache: dict[int, DynamicClient] = {}


def dynamic(api: kclient.ApiClient) -> DynamicClient:
    key = id(api)
    if key not in _dyn_cache:
        _dyn_cache[key] = DynamicClient(api)
    return _dyn_cache[key]


def load_yaml(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _resource(api: kclient.ApiClient, obj: dict[str, Any]) -> Any:
    dyn = dynamic(api)
    try:
        return dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        # A CRD applied moments ago: refresh discovery once.
        dyn.resources.invalidate_cache() if hasattr(dyn.resources, "invalidate_cache") else None
        _dyn_cache.pop(id(api), None)
        return dynamic(api).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])


def apply(api: kclient.ApiClient, objs: dict[str, Any] | Iterable[dict[str, Any]]) -> list[Any]:
    """Server-side apply one object or many (``kubectl apply --server-side``)."""
    items = [objs] if isinstance(objs, dict) else list(objs)
    out = []
    for obj in items:
        res = _resource(api, obj)
        ns = obj.get("metadata", {}).get("namespace") if res.namespaced else None
        out.append(
            res.server_side_apply(
                body=obj, name=obj["metadata"]["name"], namespace=ns, field_manager=FIELD_MANAGER, force_conflicts=True
            )
        )
    return out


def delete(api: kclient.ApiClient, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete an object; return False when it was already gone."""
    res = dynamic(api).resources.get(api_version=api_version, kind=kind)
    try:
        res.delete(name=name, namespace=namespace if res.namespaced else None)
        return True
    except (NotFoundError, ApiException) as exc:
        if getattr(exc, "status", None) == 404:
            return False
        raise


def get(api: kclient.ApiClient, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
    res = dynamic(api).resources.get(api_version=api_version, kind=kind)
    try:
        return res.get(name=name, namespace=namespace if res.namespaced else None).to_dict()
    except NotFoundError:
        return None


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.2,
    hint: Callable[[], str] | str = "",
) -> T:
    """Poll ``probe`` until it returns a truthy value, or raise :class:`SyncError`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except ApiException as exc:
            last_exc = exc
            if exc.status in (401, 403):
                raise
        if time.monotonic() > deadline:
            h = hint() if callable(hint) else hint
            raise SyncError(
                f"Waited {timeout:.0f}s for {what}: it did not happen.",
                [h] if h else ["Check the VSO resource's events: `kubectl describe` it.", "Run `labkit status`."],
                detail=f"last error: {last_exc}" if last_exc else "",
            )
        time.sleep(interval)


def secret_data(api: kclient.ApiClient, name: str, namespace: str) -> dict[str, str] | None:
    """The decoded data of a Secret, or None when it does not exist."""
    try:
        sec = kclient.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (sec.data or {}).items()}


def secret(api: kclient.ApiClient, name: str, namespace: str) -> Any | None:
    try:
        return kclient.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def events_for(api: kclient.ApiClient, namespace: str, name: str, kind: str | None = None) -> list[Any]:
    """Events about one object, oldest first."""
    sel = f"involvedObject.name={name}" + (f",involvedObject.kind={kind}" if kind else "")
    evs = kclient.CoreV1Api(api).list_namespaced_event(namespace, field_selector=sel).items
    return sorted(evs, key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp))


def ensure_namespace(api: kclient.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    apply(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})


def namespace_gone(api: kclient.ApiClient, name: str) -> bool:
    try:
        kclient.CoreV1Api(api).read_namespace(name)
        return False
    except ApiException as exc:
        return exc.status == 404


def pods(api: kclient.ApiClient, namespace: str, selector: str) -> list[Any]:
    return kclient.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def ready_pods(api: kclient.ApiClient, namespace: str, selector: str) -> list[Any]:
    out = []
    for p in pods(api, namespace, selector):
        if p.metadata.deletion_timestamp:
            continue
        conds = {c.type: c.status for c in (p.status.conditions or [])}
        if p.status.phase == "Running" and conds.get("Ready") == "True":
            out.append(p)
    return out


def rollout_restart(api: kclient.ApiClient, namespace: str, name: str) -> None:
    """``kubectl rollout restart deployment/<name>``: a new pod template annotation, so the Deployment replaces its pods."""
    import datetime as dt

    stamp = dt.datetime.now(dt.timezone.utc).isoformat()  # to the microsecond: two restarts in a second differ
    kclient.AppsV1Api(api).patch_namespaced_deployment(name, namespace, {"spec": {"template": {"metadata": {
        "annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}})


def reachable(api: kclient.ApiClient) -> bool:
    try:
        kclient.VersionApi(api).get_code(_request_timeout=3)
        return True
    except Exception:  # any failure means "not reachable"
        return False


def require_reachable(api: kclient.ApiClient, where: str) -> None:
    if not reachable(api):
        raise NotRunning(
            f"Checked that the Kubernetes API at {where} answers: it does not.",
            ["Start the lab: `labkit up` (or run notebook 00).", "Run `labkit status` to see which part is down.",
             "Check KUBECONFIG points at the lab: `labkit env`."],
        )
