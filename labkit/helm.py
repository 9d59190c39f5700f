"""VSO installed the tutorial's way on the local lab: ``helm upgrade --install`` from the lab's chart repository.

The repository alias is ``hashicorp``, as in the tutorial, but on the local lab it names the lab's loopback copy
of HashiCorp's chart (the chart of exactly the built manager's version, served by the ``charts`` component; see
labkit/backends/local/chartrepo.py), so the notebook's commands are the tutorial's, offline.

The release's manager pod runs on the node agent like any pod (images → the binaries ``labkit install`` built,
see :data:`labkit.backends.local.containers.IMAGES`), with its service account's token
(:mod:`labkit.backends.local.satoken`). The notebook's Helm cell is the same on every backend::

    helm repo add hashicorp "$VSO_CHART_REPO" --force-update
    helm upgrade --install vault-secrets-operator hashicorp/vault-secrets-operator --version 1.5.0 \\
      -n vault-secrets-operator --create-namespace \\
      -f "$LAB_HELM_VALUES" -f - --post-renderer "$LAB_HELM_POSTRENDERER" --wait <<EOF
    (the tutorial's values)
    EOF

What the local lab must add to the chart's defaults is in the two files those variables name (``labkit env``
prints them; ``up`` writes them), and labkit's own installs (``up``, ``restart_operator``, the tests) use the very
same two files:

* ``$LAB_HELM_VALUES`` (:func:`lab_values`): ``controller.strategy: Recreate`` (pods share the host's network, so
  a new pod cannot listen beside the old one as a rolling update would have it); through
  ``controller.manager.extraArgs`` (after the chart's fixed flags, and the last flag wins) the manager's
  addresses on the lab's recorded loopback ports and leader election off (controller-runtime finds the lease's
  namespace only in the service-account volume); VSO's back-off (1 s to 10 s, so the lab's drills are quick);
  ``OPERATOR_NAMESPACE`` (in a real pod VSO reads its namespace from the service-account volume, which local
  processes cannot have); and the pod annotation ``vsolab.dev/ports`` that tells the node agent which local port
  stands for each containerPort. The tutorial's own values (``defaultVaultConnection``, ``clientCache``) are
  not in it: the learner passes them in the second ``-f``.
* ``$LAB_HELM_POSTRENDERER`` (:func:`write_post_renderer`): ``<state>/bin/vsolab-post-renderer``, a two-line
  script that runs :mod:`labkit.helm_postrender` with this lab's ports, for kube-rbac-proxy, whose addresses the
  chart fixes with no value, and which finds the API server only through ``--kubeconfig``; and the manager's
  readiness probe at 1 s and every 1 s (:data:`READINESS_PROBE`; the chart fixes 5 s and every 10 s), so that
  ``--wait``, ``up`` and rollouts wait about 1 s for a manager that answers within about 1 s here.

On minikube and external clusters the same variables name HashiCorp's repository, an empty values file and a
post-renderer that passes the manifests through unchanged (:func:`passthrough_env`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from . import install
from .backends.contract import Lab
from .errors import LabkitError, ParameterError

if TYPE_CHECKING:
    from ._state import State
    from .backends.local import LocalLab

RELEASE = "vault-secrets-operator"
NAMESPACE = "vault-secrets-operator"
REPO = "hashicorp"  # the tutorial's alias; on the local lab it names the lab's loopback copy of the chart
CHART = f"{REPO}/vault-secrets-operator"
DEPLOYMENT = f"{RELEASE}-controller-manager"
SELECTOR = "control-plane=controller-manager"
POST_RENDERER = Path(__file__).with_name("helm_postrender.py")
HASHICORP_REPO = "https://helm.releases.hashicorp.com"
#: where ``up`` writes the lab's files (``LAB_HELM_VALUES``, ``LAB_HELM_POSTRENDERER``), under the state dir
VALUES_FILE = ("helm", "lab-values.yaml")
RENDERER_FILE = ("bin", "vsolab-post-renderer")
#: labkit's own copy of "the tutorial's values" (the learner's second ``-f``), for ``up`` and ``restart_operator``
RELEASE_VALUES_FILE = "helm/release-values.yaml"
#: the notebook's command, the same on every backend (tests run it with bash and ``lab.env()``)
INSTALL_COMMAND = f"""helm repo add {REPO} "$VSO_CHART_REPO" --force-update
helm upgrade --install {RELEASE} {CHART} \\
  --version {install.VSO_VERSION} -n {NAMESPACE} --create-namespace \\
  -f "$LAB_HELM_VALUES" -f - --post-renderer "$LAB_HELM_POSTRENDERER" --wait <<EOF
defaultVaultConnection:
  enabled: true
  address: "$VAULT_ADDR_FOR_CLUSTER"
  skipTLSVerify: false
controller:
  manager:
    clientCache:
      persistenceModel: none
EOF"""
#: ``helm uninstall`` that leaves nothing stuck (see :func:`uninstall_release`)
UNINSTALL_COMMAND = (f"kubectl delete vaultauths,vaultconnections -n {NAMESPACE} -l app.kubernetes.io/instance={RELEASE}\n"
                     f"helm uninstall {RELEASE} -n {NAMESPACE} --wait")


class HelmError(LabkitError):
    """A helm command failed."""


def helm_home(lab: Lab) -> dict[str, str]:
    """Helm's config, cache and data dirs in the lab's state: two labs' ``hashicorp`` repos never mix."""
    base = lab.state.path("helm")
    return {"HELM_CONFIG_HOME": str(base / "config"), "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_DATA_HOME": str(base / "data")}


def repo_url(lab: LocalLab) -> str:
    return f"http://127.0.0.1:{lab.ports['charts']}"


def values_path(state: State) -> Path:
    return state.path(*VALUES_FILE)


def renderer_path(state: State) -> Path:
    return state.path(*RENDERER_FILE)


def lab_values(lab: LocalLab) -> dict[str, Any]:
    """What the local lab adds to the chart's defaults (see the module docstring for why each is there)."""
    p = lab.ports
    return {
        "controller": {
            # The lab's pods share the host's network, so a second operator pod cannot listen on the same ports
            # while the first still runs: replace the pod (Recreate) instead of rolling (surge, then remove).
            "strategy": {"type": "Recreate"},
            "annotations": {"vsolab.dev/ports": json.dumps({"8081": p["operator_probe"], "8443": p["operator_https"]})},
            "manager": {
                "backoffOnSecretSourceError": {"initialInterval": "1s", "maxInterval": "10s"},
                "extraEnv": [{"name": "OPERATOR_NAMESPACE", "value": NAMESPACE}],
                "extraArgs": [f"--health-probe-bind-address=127.0.0.1:{p['operator_probe']}",
                              f"--metrics-bind-address=127.0.0.1:{p['operator_metrics']}",
                              # controller-runtime finds the lease's namespace only in the service-account volume
                              # (there is no flag for it); one replica, replaced (Recreate), needs no election.
                              "--leader-elect=false"],
            },
        },
    }


# The manager's readiness probe on the local lab (the chart fixes initialDelaySeconds: 5, periodSeconds: 10; see
# labkit/helm_postrender.py for why the lab probes sooner). Applied by the post-renderer, so the pod's spec says it.
READINESS_PROBE = {"initialDelaySeconds": 1, "periodSeconds": 1}


def post_renderer_args(lab: LocalLab) -> list[str]:
    """kube-rbac-proxy's addresses on the lab's loopback ports (the chart fixes them; see helm_postrender), and
    the manager's readiness probe timings (:data:`READINESS_PROBE`)."""
    p = lab.ports
    return [f"--secure-listen-address=127.0.0.1:{p['operator_https']}",
            f"--upstream=http://127.0.0.1:{p['operator_metrics']}/", "+--kubeconfig=$(KUBECONFIG)",
            *(f"readinessProbe.{k}={v}" for k, v in READINESS_PROBE.items())]


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.exists() and path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
    return True


def write_post_renderer(state: State, args: list[str]) -> Path:
    """``<state>/bin/vsolab-post-renderer``: labkit/helm_postrender.py with ``args`` (none: pass through)."""
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, str(POST_RENDERER), *args])
    text = ("#!/bin/sh\n# The lab's Helm post-renderer (written by labkit; see labkit/helm_postrender.py): it sets\n"
            "# kube-rbac-proxy's addresses to this lab's loopback ports, which the chart has no value for, and\n"
            f"# probes the manager's readiness after {READINESS_PROBE['initialDelaySeconds']} s and every "
            f"{READINESS_PROBE['periodSeconds']} s (the chart: after 5 s, every 10 s).\n"
            f"exec {cmd}\n") if args else (
            "#!/bin/sh\n# The lab's Helm post-renderer (written by labkit): on this backend the manifests pass\n"
            "# through unchanged.\nexec cat\n")
    path = renderer_path(state)
    _write_if_changed(path, text, 0o700)
    return path


def write_lab_files(lab: LocalLab) -> bool:
    """Write ``$LAB_HELM_VALUES`` and ``$LAB_HELM_POSTRENDERER`` for the lab's current ports; True if either changed."""
    text = ("# The local lab's own values for the VSO chart, written by labkit (labkit/helm.py says why each is\n"
            "# here). Pass the tutorial's values in a second -f after this file.\n"
            + yaml.safe_dump(lab_values(lab), sort_keys=False))
    changed = _write_if_changed(values_path(lab.state), text, 0o600)
    before = renderer_path(lab.state).read_text() if renderer_path(lab.state).exists() else ""
    write_post_renderer(lab.state, post_renderer_args(lab))
    return changed or _renderer_args(before) != _renderer_args(renderer_path(lab.state).read_text())


def _renderer_args(script: str) -> list[str] | None:
    """The post-renderer's arguments in a script :func:`write_post_renderer` wrote: what decides the manifests
    (the interpreter's and the module's paths do not; a kernel and the CLI may spell the interpreter differently)."""
    line = next((ln for ln in script.splitlines() if ln.startswith("exec ")), None)
    return None if line is None else shlex.split(line)[3:]


def env(lab: LocalLab) -> dict[str, str]:
    """The variables the notebook's Helm cell uses (``labkit env`` prints them)."""
    return {"VSO_CHART_REPO": repo_url(lab), "LAB_HELM_VALUES": str(values_path(lab.state)),
            "LAB_HELM_POSTRENDERER": str(renderer_path(lab.state)), "VAULT_ADDR_FOR_CLUSTER": lab.vault_addr_for_cluster}


def passthrough_env(state: State, vault_addr_for_cluster: str, repo: str = HASHICORP_REPO) -> dict[str, str]:
    """Minikube and external clusters: HashiCorp's repository (or the team's mirror, ``repo``), an empty values
    file, a pass-through post-renderer."""
    _write_if_changed(values_path(state), "# Nothing to add to the chart's defaults on this backend.\n{}\n", 0o600)
    write_post_renderer(state, [])
    return {"VSO_CHART_REPO": repo, "LAB_HELM_VALUES": str(values_path(state)),
            "LAB_HELM_POSTRENDERER": str(renderer_path(state)), "VAULT_ADDR_FOR_CLUSTER": vault_addr_for_cluster}


def command(lab: LocalLab, *args: str) -> list[str]:
    return [str(install.tools()["helm"]), *args]


def run(lab: LocalLab, *args: str, timeout: float = 300, stdin: str | None = None) -> str:
    """Run helm against the lab (its admin kubeconfig, its own helm dirs); return stdout or raise HelmError."""
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig), **helm_home(lab),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    try:
        res = subprocess.run(command(lab, *args), env=env, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise HelmError(f"Ran `helm {' '.join(args[:2])}` against the lab: it did not finish in {timeout:.0f}s.",
                        ["Check the operator's pods: `kubectl get pods -n vault-secrets-operator`.",
                         "Read their events: `kubectl get events -n vault-secrets-operator`.",
                         "Run `labkit status` to check the node agent and kube-controller-manager."]) from None
    if res.returncode != 0:
        raise HelmError(f"Ran `helm {' '.join(args[:2])}` against the lab: it failed (exit {res.returncode}).",
                        ["Read helm's message above.", "Run `labkit status` to check the lab is up.",
                         "Check the operator's pods: `kubectl get pods -n vault-secrets-operator`."],
                        detail=res.stderr.strip()[-2000:])
    return res.stdout


def add_repo(lab: LocalLab) -> None:
    run(lab, "repo", "add", REPO, repo_url(lab), "--force-update")


def _strip(values: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the keys ``drop`` sets (recursively): the release's values less the lab's own file."""
    out = {}
    for k, v in values.items():
        if k not in drop:
            out[k] = v
        elif isinstance(v, dict) and isinstance(drop[k], dict):
            rest = _strip(v, drop[k])
            if rest:
                out[k] = rest
    return out


def release_values(lab: LocalLab) -> dict[str, Any]:
    """The values the release was installed with (``helm get values``), less the lab's own file: the tutorial's."""
    got = json.loads(run(lab, "get", "values", RELEASE, "-n", NAMESPACE, "-o", "json") or "null") or {}
    return _strip(got, lab_values(lab))


def tutorial_values(lab: LocalLab, model: str = "none") -> dict[str, Any]:
    """The notebook's second ``-f`` (the values of the tutorial), with client-cache persistence ``model``."""
    cache: dict[str, Any] = {"persistenceModel": model}
    if model == "direct-encrypted":  # the chart then renders the transit VaultAuth: stage 5's values (labkit.cache)
        from .cache import helm_values

        cache = yaml.safe_load(helm_values(lab))["controller"]["manager"]["clientCache"]
    return {"defaultVaultConnection": {"enabled": True, "address": lab.vault_addr_for_cluster, "skipTLSVerify": False},
            "controller": {"manager": {"clientCache": cache}}}


def persistence_model(values: dict[str, Any]) -> str:
    return str(((values.get("controller") or {}).get("manager") or {}).get("clientCache", {}).get("persistenceModel")
               or "none")


def _check_model(model: str | None) -> None:
    from .backends.contract import CACHE_MODELS

    if model is not None and model not in CACHE_MODELS:
        raise ParameterError(
            f"Checked the client-cache persistence model {model!r}: VSO knows {CACHE_MODELS}.",
            ["Use 'direct-encrypted' for the encrypted cache.", "Use 'none' for VSO's default.",
             "Use 'direct-unencrypted' only to experiment."])


def install_release(lab: LocalLab, *, client_cache_persistence_model: str | None = None) -> str:
    """``helm upgrade --install`` VSO from the lab's repository with the notebook's two files: the lab's values and
    the tutorial's (the release's current ones when it is installed, with ``client_cache_persistence_model``)."""
    _check_model(client_cache_persistence_model)
    write_lab_files(lab)
    add_repo(lab)
    if installed(lab):
        vals = release_values(lab)
        if client_cache_persistence_model is not None:
            want = tutorial_values(lab, client_cache_persistence_model)["controller"]["manager"]["clientCache"]
            vals.setdefault("controller", {}).setdefault("manager", {})["clientCache"] = want
    else:
        vals = tutorial_values(lab, client_cache_persistence_model or "none")
    mine = lab.state.write_private(RELEASE_VALUES_FILE, "# The tutorial's values, as labkit passes them (the notebook's "
                                   "second -f).\n" + yaml.safe_dump(vals, sort_keys=False))
    return run(lab, "upgrade", "--install", RELEASE, CHART, "--version", install.VSO_VERSION, "-n", NAMESPACE,
               "--create-namespace", "-f", str(values_path(lab.state)), "-f", str(mine),
               "--post-renderer", str(renderer_path(lab.state)), "--wait", "--timeout", "3m")


def installed(lab: LocalLab) -> bool:
    return bool(json.loads(run(lab, "list", "-n", NAMESPACE, "-o", "json", "--filter", f"^{RELEASE}$") or "[]"))


def _release_objects(lab: LocalLab, plural: str) -> list[dict[str, Any]]:
    from kubernetes import client as kclient

    res = cast(dict[str, Any], kclient.CustomObjectsApi(lab.kube).list_namespaced_custom_object(  # typed `object`: a JSON dict
        "secrets.hashicorp.com", "v1beta1", NAMESPACE, plural, label_selector=f"app.kubernetes.io/instance={RELEASE}"))
    return list(res.get("items") or [])


def uninstall_release(lab: LocalLab) -> list[str]:
    """``helm uninstall`` that leaves no operator pod and no stuck object; return what was done.

    Why a step before it: the chart's pre-delete hook removes VSO's finalizers while the manager still runs, so
    the manager can put one back on the chart's own VaultAuth (the transit one of the encrypted cache) and
    VaultConnection (``defaultVaultConnection``); Helm then deletes those after the manager's Deployment, RBAC
    and service account, and no operator is left to remove the finalizer: the object stays, ``Terminating``,
    for ever. So, as :data:`UNINSTALL_COMMAND` shows, the release's VaultAuths and VaultConnections are deleted
    first, while the manager runs and finalises them; then ``helm uninstall --wait``. If an object is still stuck
    afterwards (the manager was not running), its VSO finalizer is removed, and said so."""
    from kubernetes import client as kclient

    from . import k8s

    done: list[str] = []
    if not installed(lab):
        return done
    custom = kclient.CustomObjectsApi(lab.kube)
    ready = bool(k8s.ready_pods(lab.kube, NAMESPACE, SELECTOR))
    for plural in ("vaultauths", "vaultconnections"):  # auths first: they name the connection
        for obj in _release_objects(lab, plural):
            k8s.delete(lab.kube, "secrets.hashicorp.com/v1beta1", obj["kind"], obj["metadata"]["name"], NAMESPACE)
            done.append(f"deleted {obj['kind']} {NAMESPACE}/{obj['metadata']['name']}")
        if ready:
            def finalised(plural: str = plural) -> bool | None:
                return not _release_objects(lab, plural) or None

            k8s.wait_for(f"the operator to finalise the release's {plural}", finalised, 60, interval=0.5,
                         hint="Read the manager's log: `kubectl logs -n vault-secrets-operator "
                              f"deploy/{DEPLOYMENT} -c manager`.")
    run(lab, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m")
    done.append(f"helm uninstall {RELEASE}")
    k8s.wait_for("the operator's pods to be gone after `helm uninstall`",
                 lambda: not k8s.pods(lab.kube, NAMESPACE, SELECTOR) or None, 120, interval=0.5,
                 hint="Check the node agent: `labkit status`; and `kubectl get pods -n vault-secrets-operator`.")
    for plural in ("vaultauths", "vaultconnections"):
        for obj in _release_objects(lab, plural):  # no operator runs any more: nothing else would remove these
            if obj["metadata"].get("deletionTimestamp"):
                custom.patch_namespaced_custom_object("secrets.hashicorp.com", "v1beta1", NAMESPACE, plural,
                                                      obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                done.append(f"removed the finalizer of {obj['kind']} {obj['metadata']['name']} (no operator runs)")
    return done
