"""What ``labkit up`` checks and repairs around the components: damaged or changed state.

- before anything starts: free disk, the credentials the lab's data needs (``secrets.json``), a lost ``pki/``;
- after the cluster is up: addresses and trust that live *inside* the lab (VSO's kubeconfig, VaultConnections,
  Vault's kubernetes auth and database connection configs, the example app) follow changed ports or a new CA.

``state.json`` records under ``applied`` the ports and CA those in-lab settings were made with.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ...errors import DiskFull, StateError

if TYPE_CHECKING:
    from .lab import LocalLab

#: etcd preallocates a 64 MB WAL file; PostgreSQL's fresh cluster and OpenBao's raft need some 40 MB more
MIN_FREE = 100 * 1024 * 1024


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the file system holding ``path`` or its nearest existing parent."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def check_disk(lab: LocalLab) -> None:
    for where, what in ((lab.state.root, "the lab state (etcd's 64 MB WAL, OpenBao)"),
                        (lab.state.pg_data_dir(), "PostgreSQL's data")):
        free = free_bytes(where)
        if free < MIN_FREE:
            raise DiskFull(
                f"Checked the free disk space for {what} at {where}: {free // 2**20} MB free, the lab needs at least "
                f"{MIN_FREE // 2**20} MB (etcd alone preallocates a 64 MB write-ahead log).",
                [f"Free space on that file system (`df -h {where}`, then remove old files or `labkit down --purge` "
                 "labs you no longer need).",
                 "Or point VSOLAB_STATE at a file system with more room.", "Run `labkit doctor` to see free space."],
            )


def check_secrets(lab: LocalLab) -> None:
    """The lab's data was made with credentials that ``secrets.json`` must still hold."""
    secrets = lab.state.secrets()
    where = lab.state.path("secrets.json")
    gone = "does not exist" if not where.exists() else "has no {}"
    needs = []
    if (lab.state.pg_data_dir() / "PG_VERSION").exists() and not secrets.get("postgres_password"):
        needs.append(("postgres_password", "PostgreSQL's administrator password, set when its database was created"))
    bao = lab.state.path("data", "openbao")
    if bao.is_dir() and any(bao.iterdir()) and not secrets.get("vault_unseal_key"):
        needs.append(("vault_unseal_key", "OpenBao's unseal key, made when its data was initialised"))
    if needs:
        what = " and ".join(w for _, w in needs)
        raise StateError(
            f"Checked {where} for {what}: it {gone.format(' or '.join(k for k, _ in needs))}, so the lab's existing "
            "data cannot be opened (the lab would wait for a database or Vault it cannot log in to).",
            [f"Restore {where} from a backup, then run `labkit up`.",
             "Or start a fresh lab: `labkit down --purge`, then `labkit up` (Vault data, leases and the database are lost).",
             "Or use another state directory (VSOLAB_STATE)."],
        )


def pki_lost(lab: LocalLab) -> bool:
    """The lab had made its CA (recorded in state.json), but the CA or admin credentials are gone."""
    st = lab.state.read()
    pki = lab.state.path("pki")
    had = st.get("applied", {}).get("ca") or st.get("bootstrapped")
    return bool(had) and not all((pki / f).exists() for f in ("ca.crt", "ca.key", "admin.crt", "admin.key", "sa.key"))


def reset_pki(lab: LocalLab, say: Callable[[str], None]) -> None:
    """Stop what trusts the lost CA and clear what is left of ``pki/``; ``up`` then makes a new one."""
    say("  pki/ was lost: stopping the lab, making a new CA and re-issuing the lab's certificates and tokens.\n"
        "  The service-account signing key changes too: service-account tokens issued before stop working,\n"
        "  so the lab's pods are deleted and their Deployments start new ones (the operator's pod too).")
    for name in reversed(list(lab.components)):
        lab.components[name].stop()
    pki = lab.state.path("pki")
    for f in pki.iterdir():
        f.unlink()
    lab.state.update(bootstrapped=None)


def ca_fingerprint(lab: LocalLab) -> str:
    return hashlib.sha256(lab.state.path("pki", "ca.crt").read_bytes()).hexdigest()[:16]


def applied(lab: LocalLab) -> dict[str, Any]:
    return {"openbao": lab.ports["openbao"], "apiserver": lab.ports["apiserver"], "postgres": lab.ports["postgres"],
            "ca": ca_fingerprint(lab)}


def stale(lab: LocalLab) -> dict[str, Any]:
    """What changed since the in-lab settings were made: ``{key: old value}``.

    Without a record (a ``state.json`` moved aside or from an older labkit) the old ports are unknown (``None``):
    then every loopback address that is not the current one is repointed.
    """
    before = lab.state.read().get("applied")
    if not isinstance(before, dict):
        has_lab = lab.state.path("pki", "ca.crt").exists()
        return {"openbao": None, "apiserver": None, "postgres": None} if has_lab else {}
    now = applied(lab)
    return {k: before[k] for k in now if k in before and before[k] != now[k]}


def _outdated(addr: Any, key: str, old: dict[str, Any], current: str) -> bool:
    """``addr`` is an address of the lab's ``key`` component from before the change."""
    if not isinstance(addr, str) or key not in old or addr == current:
        return False
    if old[key] is None:
        return urllib.parse.urlsplit(addr).hostname == "127.0.0.1"
    return urllib.parse.urlsplit(addr).port == old[key]


def retoken(lab: LocalLab) -> list[str]:
    """Empty every service-account token Secret (signed with a lost key): the token controller signs new ones.
    Delete every pod: its projected token was signed with the lost key too."""
    from kubernetes import client as kclient

    from ... import k8s

    core = kclient.CoreV1Api(k8s.api_client(lab.kubeconfig))
    done = []
    for sec in core.list_secret_for_all_namespaces(field_selector="type=kubernetes.io/service-account-token").items:
        assert sec.metadata is not None and sec.metadata.name and sec.metadata.namespace  # set by the API server
        core.patch_namespaced_secret(sec.metadata.name, sec.metadata.namespace, {"data": {"token": None}})
        done.append(f"{sec.metadata.namespace}/{sec.metadata.name}")
    # A running pod holds a projected token signed with the lost key (the API server now refuses it, so the
    # operator's manager never becomes Ready): delete the pods, as after a key rotation on any cluster; their
    # controllers make new ones, and the node agent asks for new tokens.
    for pod in core.list_pod_for_all_namespaces().items:
        assert pod.metadata is not None and pod.metadata.name and pod.metadata.namespace  # set by the API server
        if pod.metadata.deletion_timestamp is None:
            core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            done.append(f"pod {pod.metadata.namespace}/{pod.metadata.name}")
    return done


def propagate(lab: LocalLab, old: dict[str, Any], say: Callable[[str], None]) -> list[str]:
    """Point the lab's in-cluster and in-Vault settings at the current ports and CA; return what was changed."""
    from kubernetes import client as kclient
    from kubernetes.client.exceptions import ApiException

    from ... import k8s, vault

    done: list[str] = []
    api = lab.kube
    n = lab.names
    custom = kclient.CustomObjectsApi(api)
    try:
        # the client types a custom object list as `object`: it is the JSON dict
        connections = cast(dict[str, Any], custom.list_cluster_custom_object("secrets.hashicorp.com", "v1beta1",
                                                                             "vaultconnections"))["items"]
    except ApiException as exc:  # 404: VSO's CRDs are not installed yet (they come with the operator, after this)
        if exc.status != 404:
            raise
        connections = []
    for obj in connections:
        if _outdated(obj.get("spec", {}).get("address"), "openbao", old, lab.vault_addr_for_cluster):
            m = obj["metadata"]
            custom.patch_namespaced_custom_object("secrets.hashicorp.com", "v1beta1", m["namespace"], "vaultconnections",
                                                  m["name"], {"spec": {"address": lab.vault_addr_for_cluster}})
            done.append(f"VaultConnection {m['namespace']}/{m['name']}")
    client = vault.client(lab)
    for mount, info in client.sys.list_auth_methods()["data"].items():
        if info.get("type") != "kubernetes":
            continue
        cfg = (client.read(f"auth/{mount}config") or {}).get("data") or {}
        host = cfg.get("kubernetes_host")
        if not (_outdated(host, "apiserver", old, lab.kube_api_for_vault) or ("ca" in old and host == lab.kube_api_for_vault)):
            continue

        def reviewer() -> str | None:
            return (k8s.secret_data(api, n.reviewer_secret, n.vault_ns) or {}).get("token")

        jwt = k8s.wait_for("the token controller to sign vault-auth-secret", reviewer, 60,
                           hint="run `labkit status`; kube-controller-manager signs it") if k8s.secret(
                               api, n.reviewer_secret, n.vault_ns) else ""
        vault.configure_kubernetes_auth(lab, lab.kube_api_for_vault, lab.kube_ca(), jwt, mount=mount.rstrip("/"))
        done.append(f"Vault auth/{mount}config")
    if "postgres" in old:
        try:
            cfg = (client.read(f"{n.db_mount}/config/{n.db_connection}") or {}).get("data") or {}
        except Exception:  # no database mount yet (before notebook 03): nothing to repoint
            cfg = {}
        url = (cfg.get("connection_details") or {}).get("connection_url", "")
        if url and urllib.parse.urlsplit(url).port != lab.ports["postgres"]:
            from ... import dynamic

            dynamic.configure_connection(lab)
            done.append(f"Vault {n.db_mount}/config/{n.db_connection}")
        if _repoint_app(lab):
            done.append(f"Deployment {n.dynamic_ns}/{n.app}")
    if done:
        say("  repointed at the lab's current ports and CA: " + ", ".join(done))
    return done


def _repoint_app(lab: LocalLab) -> bool:
    """Point the example app at PostgreSQL's current address for pods and restart it; ``False`` when it was right.

    The app gets ``DB_HOST``/``DB_PORT`` either as plain env values (notebook 03's manifest) or from its ``-db``
    ConfigMap (``app.manifests``); both are followed.
    """
    from kubernetes import client as kclient
    from kubernetes.client.exceptions import ApiException

    from ... import app, k8s

    api, n = lab.kube, lab.names
    host, port = lab.pg_address_for_pods
    want = {"DB_HOST": host, "DB_PORT": str(port)}
    apps = kclient.AppsV1Api(api)
    try:
        dep = apps.read_namespaced_deployment(n.app, n.dynamic_ns)
    except ApiException as exc:
        if exc.status == 404:  # no app deployed (before notebook 03): nothing to repoint
            return False
        raise
    changed = False
    containers = []
    assert dep.spec is not None and dep.spec.template.spec is not None  # a Deployment has a pod spec
    for c in dep.spec.template.spec.containers:
        env = []
        for e in c.env or []:
            if e.name in want and e.value is not None and e.value != want[e.name]:
                changed = True
                env.append({"name": e.name, "value": want[e.name]})
        if env:
            containers.append({"name": c.name, "env": env})
    try:
        db = kclient.CoreV1Api(api).read_namespaced_config_map(f"{n.app}-db", n.dynamic_ns).data or {}
    except ApiException:
        db = {}
    if db and db.get("DB_PORT") != want["DB_PORT"]:
        k8s.apply(api, app.manifests(n.dynamic_ns, n.dynamic_secret, host, port, n.app))
        changed = True
    if not changed:
        return False
    # The pod read the old address at start: restart it, as `kubectl rollout restart` does.
    template: dict[str, Any] = {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": str(time.time())}}}
    if containers:
        template["spec"] = {"containers": containers}
    apps.patch_namespaced_deployment(n.app, n.dynamic_ns, {"spec": {"template": template}})
    app.wait_ready(lab, n.dynamic_ns, n.app)
    return True
