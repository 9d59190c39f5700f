"""The external backend: a Vault, a Kubernetes cluster and a PostgreSQL your team already runs.

``VAULT_ADDR``, ``VAULT_TOKEN`` and ``KUBECONFIG`` point at them (e.g. HCP Vault
Dedicated and a workshop's shared cluster); PostgreSQL comes from
``VSOLAB_PG_ADDR``/``VSOLAB_PG_PASSWORD``. VSO is detected (its namespace and
version are reported) or installed with Helm at the pinned chart version.

Attendees sharing one cluster and one Vault each get a prefix (``VSOLAB_PREFIX``,
by default the login name) that :class:`~labkit.names.Names` puts on every
namespace, mount, policy and binding the lab creates, so nobody touches anyone
else's objects or the team's own.

It builds on :class:`~labkit.backends.cluster.ClusterLab`, which holds what every
backend with a real cluster shares (VSO via Helm, the app through ``kubectl
port-forward``, the kubeconfig's CA); so does the minikube backend.
"""

from __future__ import annotations

import getpass
import os
import re
import time
from pathlib import Path

import requests

from .. import install, k8s
from .._state import State
from ..errors import LabkitError, NotRunning, ParameterError
from ..names import Names
from .cluster import ClusterLab, SharedOperator, run
from .cluster_plan import CHART_REPO, CHART_VERSION, HELM_FIX, KUBECTL_FIX, RELEASE, helm_uninstall_command, kubeconfig_cluster
from .contract import Health, Progress, Result, tool

__all__ = ["ExternalLab", "SharedOperator", "default_prefix", "doctor_checks", "parse_hostport", "validate_prefix"]


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
    def up(self, progress: Progress | None = None, *, operator: bool = True) -> dict[str, str]:
        """Check Vault, the cluster and PostgreSQL answer; find VSO or install it. Creates nothing else.
        (``operator`` is the contract's; a shared cluster's operator is found or installed either way.)"""
        from .. import pg, vault

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
            from .. import pg

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

        from .. import vault

        made, c, done = self.names.made, vault.client(self), []  # what the stages make (names.py)
        mounts = c.sys.list_mounted_secrets_engines()["data"]
        for m in made.secrets_engines:
            if f"{m}/" in mounts:
                c.sys.disable_secrets_engine(m)
                done.append(f"vault mount {m}/")
        methods = c.sys.list_auth_methods()["data"]
        for m in made.auth_methods:  # its roles go with it
            if f"{m}/" in methods:
                c.sys.disable_auth_method(m)
                done.append(f"vault auth {m}/")
        for p in made.policies:
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
