"""What every backend with a real cluster shares (:class:`ClusterLab`): VSO through Helm, the app through
``kubectl port-forward`` (or a port its node publishes on loopback), the kubeconfig's CA, ``env()`` from
:func:`labkit._env.lab_env`. The minikube and external backends build on it; their addresses come from them.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import _env, helm, k8s
from .._state import DEFAULT_STATE, State, listening
from ..errors import ComponentError, LabkitError, MissingTool, NotRunning, ParameterError
from ..names import Names
from ._portforward import PortForwards
from .cluster_plan import (
    CACHE_MODELS,
    CHART,
    CHART_REPO,
    CHART_VERSION,
    HELM_FIX,
    MANAGER_CONTAINER,
    RELEASE,
    RESTART_ANNOTATION,
    VSO_LABEL,
    cache_model_from_args,
    helm_upgrade_command,
    image_version,
    kubeconfig_cluster,
    vso_values,
)
from .contract import Health, Progress


class SharedOperator(ParameterError):
    """The operator belongs to the team: the lab does not restart or reconfigure it."""



def run(cmd: list[str], what: str, fixes: list[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run a command line; on failure raise :class:`ComponentError` with its output's tail."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MissingTool(f"Checked PATH for `{cmd[0]}` ({what}): it is not installed.", fixes) from None
    except subprocess.TimeoutExpired:
        raise ComponentError(f"Ran `{' '.join(cmd[:4])} …` ({what}) for {timeout:.0f}s: it did not finish.", fixes) from None
    if out.returncode != 0:
        raise ComponentError(f"Ran `{' '.join(cmd[:4])} …` ({what}): it exited with code {out.returncode}.", fixes,
                             detail=(out.stderr or out.stdout).strip()[-1500:])
    return out.stdout


@dataclass
class Operator:
    """The VSO install the lab talks to."""

    namespace: str
    deployment: str
    version: str
    model: str
    release: str | None = None
    chart_version: str | None = None
    ready: bool = False


def cluster_state(state: State | str | Path | None, backend: str) -> State:
    """The state directory of a cluster backend: ``state``, or VSOLAB_STATE, or ``…/vsolab/<backend>``.

    A directory holding a local lab gets a ``<backend>`` subdirectory, so that ``down(purge=True)``
    of one backend never wipes the other's state.
    """
    if isinstance(state, State):
        return state
    given = state or os.environ.get("VSOLAB_STATE")
    root = Path(given).expanduser().absolute() if given else DEFAULT_STATE.with_name(backend)
    if (root / "pki" / "ca.crt").exists() or "ports" in State(root).read():  # a local lab's CA or its ports
        root = root / backend
    return State(root)


# -- what every backend with a real cluster shares ----------------------------------------------------------------
class ClusterLab:
    """VSO through Helm, the app through port-forwarding, addresses from subclasses."""

    backend = ""
    reuse_helm_values = True  # keep settings a team gave its own VSO release

    def __init__(self, state: State | str | Path | None, backend: str) -> None:
        self.state = cluster_state(state, backend)
        self._kube: Any = None
        self.port_forwards = PortForwards(self)

    # -- subclasses provide these ----------------------------------------------------------------
    kubeconfig: Path
    kube_context: str | None = None
    pg_admin_user = "root"
    if TYPE_CHECKING:  # read-only: the subclasses make them properties (nothing exists here at run time)
        @property
        def names(self) -> Names: ...
        @property
        def vault_addr(self) -> str: ...
        @property
        def vault_token(self) -> str: ...
        @property
        def vault_addr_for_cluster(self) -> str: ...
        @property
        def kube_api_for_vault(self) -> str: ...
        @property
        def pg_address(self) -> tuple[str, int]: ...
        @property
        def pg_address_for_vault(self) -> tuple[str, int]: ...
        @property
        def pg_address_for_pods(self) -> tuple[str, int]: ...
        @property
        def pg_admin_password(self) -> str: ...

    # -- shared members of the contract --------------------------------------------------------------
    @property
    def kube(self) -> Any:
        if self._kube is None:
            self._kube = k8s.api_client(self.kubeconfig, self.kube_context)
        return self._kube

    def kube_ca(self) -> str:
        return kubeconfig_cluster(self.kubeconfig, self.kube_context)["ca"]

    def pg_dsn(self, user: str | None = None, password: str | None = None, dbname: str = "postgres") -> str:
        host, port = self.pg_address
        pw = password if password is not None else self.pg_admin_password
        return f"host={host} port={port} user={user or self.pg_admin_user} password={pw} dbname={dbname}"

    def healthy(self) -> bool:
        return all(h.healthy for h in self.status())

    def up(self, progress: Progress | None = None, *, operator: bool = True) -> dict[str, str]:
        raise NotImplementedError

    def down(self, purge: bool = False) -> list[str]:
        raise NotImplementedError

    def status(self) -> list[Health]:
        raise NotImplementedError

    #: VSO belongs to the team, not to this lab: Helm cells look and do not touch, and the lab never restarts it
    shared_operator = False

    @property
    def chart_repo(self) -> str:
        return CHART_REPO

    @property
    def tools_dir(self) -> Path:
        """``<state>/bin``: ``vault`` (OpenBao's CLI where that is what is installed), ``bao``, ``kubectl``, ``helm``."""
        return self.state.path("bin")

    def env(self) -> dict[str, str]:
        """What ``labkit env`` prints and notebook kernels get (labkit/_env.py: the same on every backend)."""
        self.state.ensure()
        _env.ensure_tools(self.tools_dir)
        return _env.lab_env(self, tools_dir=self.tools_dir, shared_operator=self.shared_operator,
                            helm_env=helm.passthrough_env(self.state, self.vault_addr_for_cluster, self.chart_repo))

    def app_url(self, namespace: str, name: str) -> str:
        """A loopback URL to the newest Ready pod of Deployment ``name``.

        A node that publishes a pod's port on this machine's loopback says so on the pod (the local lab's node
        agent: annotation ``vsolab.dev/port``, its podIP is 127.0.0.1); then that port is used as is. Otherwise
        ``kubectl port-forward``, as on any remote cluster.
        """
        from .local.kubelet import PORT_ANNOTATION

        pods = sorted(k8s.ready_pods(self.kube, namespace, f"app={name}"), key=lambda p: p.metadata.creation_timestamp)
        published = (pods[-1].metadata.annotations or {}).get(PORT_ANNOTATION) if pods else None
        if published and pods[-1].status.pod_ip == "127.0.0.1" and listening(int(published)):
            return f"http://127.0.0.1:{int(published)}"
        return self.port_forwards.url(namespace, name)

    def events_supported(self) -> tuple[bool, str]:
        from ..vault import events_supported

        return events_supported(self)

    @property
    def helm_managed_operator(self) -> bool:
        """True when VSO is a Helm release, whose chart renders the cache stage's transit VaultAuth."""
        try:
            return bool(self.operator().release)
        except LabkitError:
            return False

    # -- VSO -------------------------------------------------------------------------------------------
    def operator(self) -> Operator:
        """Find the VSO Deployment: the lab's namespace first, then (if allowed) every namespace."""
        from kubernetes import client as kclient
        from kubernetes.client.exceptions import ApiException

        apps = kclient.AppsV1Api(self.kube)
        environ = getattr(self, "environ", os.environ)
        ns = environ.get("VSOLAB_VSO_NAMESPACE") or self.state.read().get("vso_namespace") or self.names.operator_ns
        items = apps.list_namespaced_deployment(ns, label_selector=VSO_LABEL).items
        if not items:
            try:
                items = apps.list_deployment_for_all_namespaces(label_selector=VSO_LABEL).items
            except ApiException as exc:
                if exc.status != 403:
                    raise
        for dep in items:
            # the API server returns a Deployment with its metadata, name, namespace, pod spec and status
            assert dep.metadata is not None and dep.metadata.name and dep.metadata.namespace
            assert dep.spec is not None and dep.spec.template.spec is not None and dep.status is not None
            containers = {c.name: c for c in dep.spec.template.spec.containers}
            mgr = containers.get(MANAGER_CONTAINER)
            if not mgr:
                continue
            assert mgr.image is not None  # a Deployment's container always names its image
            ann, labels = dep.metadata.annotations or {}, dep.metadata.labels or {}
            chart = labels.get("helm.sh/chart", "")
            env = {e.name: e.value or "" for e in mgr.env or []}
            st = dep.status
            ready = bool(st.ready_replicas and st.ready_replicas >= (dep.spec.replicas or 1)
                         and (st.updated_replicas or 0) >= (dep.spec.replicas or 1))
            return Operator(
                namespace=dep.metadata.namespace, deployment=dep.metadata.name, version=image_version(mgr.image),
                model=cache_model_from_args(list(mgr.args or []), env), release=ann.get("meta.helm.sh/release-name"),
                chart_version=chart.rsplit("-", 1)[-1] if chart.startswith(CHART) else None, ready=ready,
            )
        raise NotRunning(
            f"Checked namespace {ns} (and, if allowed, every namespace) for a VSO Deployment labelled {VSO_LABEL}: none.",
            ["Run `labkit up` to install it with Helm.", "If VSO runs in another namespace, set VSOLAB_VSO_NAMESPACE.",
             f"Install it yourself: helm install {RELEASE} hashicorp/{CHART} --version {CHART_VERSION} -n {ns} --create-namespace"],
        )

    def operator_settings(self) -> dict[str, Any]:
        op = self.operator()
        return {"client_cache_persistence_model": op.model, "namespace": op.namespace, "deployment": op.deployment,
                "version": op.version, "release": op.release, "chart_version": op.chart_version}

    def install_operator(self, model: str = "none") -> str:
        """``helm upgrade --install`` VSO into the lab's operator namespace; return what was done."""
        self._helm(RELEASE, self.names.operator_ns, CHART_VERSION, model, reuse=False)
        self.state.update(vso_namespace=self.names.operator_ns, installed_vso=True)
        self.wait_operator_ready()
        return f"installed (chart {CHART_VERSION})"

    @property
    def values_file(self) -> Path:
        return self.state.path("helm", "vso-values.yaml")

    def helm_command(self, release: str, namespace: str, chart_version: str, *, reuse: bool) -> list[str]:
        return helm_upgrade_command(release=release, namespace=namespace, chart_version=chart_version,
                                    values_file=self.values_file, kubeconfig=self.kubeconfig, context=self.kube_context,
                                    reuse_values=reuse, repo=self.chart_repo)

    def _helm(self, release: str, namespace: str, chart_version: str, model: str, *, reuse: bool) -> None:
        helm = _env.tool_targets().get("helm")
        if not helm:
            raise MissingTool("Checked PATH for helm (it installs and configures VSO): it is not installed.", [HELM_FIX])
        n = self.names
        self.state.write_private("helm/vso-values.yaml",
                                 yaml.safe_dump(vso_values(model, n, f"{n.vault_ns}/{n.vault_connection}")))
        cmd = self.helm_command(release, namespace, chart_version, reuse=reuse)
        run([str(helm), *cmd[1:]], f"install or upgrade VSO {chart_version} in {namespace}",
            ["Check the cluster is reachable: `kubectl get nodes`.", f"Check you may install into {namespace}.",
             f"Check {CHART_REPO} is reachable (or mirror the chart)."])

    def restart_operator(self, *, client_cache_persistence_model: str | None = None) -> None:
        """Restart VSO (a rollout restart); with a model, ``helm upgrade`` it to that client-cache model first."""
        from kubernetes import client as kclient

        if client_cache_persistence_model is not None and client_cache_persistence_model not in CACHE_MODELS:
            vso_values(client_cache_persistence_model, self.names, "")  # raises ParameterError, saying which models exist
        if self.shared_operator:
            raise SharedOperator(
                f"Checked who owns VSO on this cluster: the team does (VSOLAB_SHARED_OPERATOR=1), so the lab does not "
                f"restart it{' or change its client cache' if client_cache_persistence_model else ''}: every attendee's "
                "secrets depend on it.",
                ["Ask the instructor to run the `helm upgrade` the notebook shows, once for everybody.",
                 "Read what the operator runs with: `kubectl get deploy -n vault-secrets-operator -o yaml`.",
                 "On a cluster of your own, set VSOLAB_SHARED_OPERATOR=0 (the lab may then restart VSO)."])
        op = self.operator()
        apps = kclient.AppsV1Api(self.kube)
        meta = apps.read_namespaced_deployment(op.deployment, op.namespace).metadata
        assert meta is not None  # the API server sets it
        generation = meta.generation
        if client_cache_persistence_model is not None:
            if not op.release:
                raise ParameterError(
                    f"Checked how VSO in {op.namespace} was installed: not with Helm, so the lab cannot change its "
                    "client-cache persistence model.",
                    ["Ask the cluster's admin to set controller.manager.clientCache.persistenceModel.",
                     "Or install VSO with Helm (`labkit up` does when none is found).",
                     "The other stages work without this one."],
                )
            self._helm(op.release, op.namespace, op.chart_version or CHART_VERSION, client_cache_persistence_model,
                       reuse=self.reuse_helm_values)
            self.state.update(vso={"client_cache_persistence_model": client_cache_persistence_model})
        meta = apps.read_namespaced_deployment(op.deployment, op.namespace).metadata
        assert meta is not None
        if meta.generation == generation:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            apps.patch_namespaced_deployment(op.deployment, op.namespace, {
                "spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: stamp}}}}})
        self.wait_operator_ready()

    def wait_operator_ready(self, timeout: float = 300) -> Operator:
        """Wait for the VSO rollout to finish: every replica updated and ready, no old pod left."""
        from kubernetes import client as kclient

        apps = kclient.AppsV1Api(self.kube)

        def probe() -> Operator | None:
            op = self.operator()
            dep = apps.read_namespaced_deployment(op.deployment, op.namespace)
            assert dep.metadata is not None and dep.metadata.generation is not None and dep.status is not None
            assert dep.spec is not None  # all set on a Deployment the API server returns
            st, want = dep.status, dep.spec.replicas or 1
            done = ((st.observed_generation or 0) >= dep.metadata.generation and (st.updated_replicas or 0) == want
                    and (st.ready_replicas or 0) == want and (st.replicas or 0) == want)
            return op if done else None

        return k8s.wait_for("the VSO Deployment to finish rolling out", probe, timeout,
                            hint="check `kubectl get pods -n <operator namespace>` and the manager's log")

    def _operator_health(self) -> Health:
        try:
            op = self.operator()
            return Health("vso", None, f"{op.namespace}/{op.deployment}", op.ready, op.version,
                          "" if op.ready else "not ready")
        except Exception as exc:  # status never raises
            return Health("vso", None, "", False, "", str(exc).splitlines()[0][:120])

    def _delete_lab_objects(self) -> list[str]:
        """Delete the namespaces and the cluster-wide binding the stages create under this lab's names."""
        from kubernetes import client as kclient
        from kubernetes.client.exceptions import ApiException

        n = self.names
        deleted: list[str] = []
        try:
            if not k8s.reachable(self.kube):
                return deleted
        except LabkitError:
            return deleted
        made = n.made  # what the stages make (names.py), latest stage first
        for ns in made.namespaces:
            if k8s.delete(self.kube, "v1", "Namespace", ns):
                deleted.append(f"namespace {ns}")
        for crb in made.cluster_role_bindings:
            try:
                kclient.RbacAuthorizationV1Api(self.kube).delete_cluster_role_binding(crb)
                deleted.append(f"clusterrolebinding {crb}")
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for ns in made.namespaces:
            def gone(ns: str = ns) -> bool:
                return k8s.namespace_gone(self.kube, ns)

            k8s.wait_for(f"namespace {ns} to be deleted", gone, 180,
                         hint=f"a namespace waits for its pods and VSO resources; check `kubectl get all -n {ns}`")
        return deleted
