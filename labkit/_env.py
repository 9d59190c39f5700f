"""The environment a lab gives shells and notebook kernels (``labkit env``, ``notebook.setup``), once for every backend.

Built from the backend contract's properties only (``vault_addr``, ``vault_token``, ``kubeconfig``,
``pg_address``, ``pg_admin_user``, ``pg_admin_password``, ``names``, ``state``), so that a ``%%bash`` cell reads
the same variables on the local lab, on minikube and on your own cluster:

* ``VAULT_ADDR``/``VAULT_TOKEN`` (and ``BAO_*`` for OpenBao's CLI), ``KUBECONFIG``, ``PGHOST``/``PGPORT``/
  ``PGUSER``/``PGDATABASE``/``PGPASSWORD``;
* ``PATH`` with ``<state>/bin`` first: ``vault`` (OpenBao's CLI takes the same arguments), ``bao``, ``kubectl`` and
  ``helm`` where they are installed;
* ``HELM_CONFIG_HOME``/``HELM_CACHE_HOME``/``HELM_DATA_HOME`` in the state, so two labs' repositories never mix;
* ``PREFIX``: the attendee prefix that cells put before every name (``${PREFIX}static-exampleapp``), empty on a
  lab of one's own;
* ``VAULT_ADDR_FOR_CLUSTER``, ``KUBE_API_FOR_VAULT``, ``PG_ADDR_FOR_VAULT``, ``PG_HOST_FOR_PODS``/
  ``PG_PORT_FOR_PODS``: the addresses as the other side reaches them (pods, Vault);
* ``VSO_CHART_REPO``, ``LAB_HELM_VALUES`` and ``LAB_HELM_POSTRENDERER``: where the chart comes from, the values
  file the backend needs and a post-renderer executable (a pass-through where the backend needs none;
  labkit/helm.py), so that the Helm cell is one command on every backend;
* ``VSOLAB_SHARED_OPERATOR=1`` when VSO belongs to the team (a shared cluster): Helm cells then look and do not
  touch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .backends.contract import Lab


def tool_targets() -> dict[str, Path]:
    """The CLIs a lab puts on ``PATH``: ``vault``/``bao`` (OpenBao's CLI), ``kubectl`` and ``helm`` where installed."""
    import shutil

    from . import install

    targets: dict[str, Path] = {}
    bao = install.bao_binary()
    if bao is not None:
        targets["vault"] = targets["bao"] = Path(bao)
    kubectl = install.kubectl_binary()
    if kubectl is not None:
        targets["kubectl"] = Path(kubectl)
    if install.TOOLS["helm"].built():
        targets["helm"] = install.TOOLS["helm"].paths()["helm"]
    elif shutil.which("helm"):
        targets["helm"] = Path(str(shutil.which("helm")))
    return targets


def ensure_tools(tools_dir: Path, targets: dict[str, Path] | None = None) -> Path:
    """Symlinks ``tools_dir/<name>`` → each tool, replaced atomically (safe while another process reads them)."""
    tools_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, target in (tool_targets() if targets is None else targets).items():
        link = tools_dir / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        tmp = tools_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return tools_dir


def lab_env(lab: Lab, *, tools_dir: Path, helm_env: dict[str, str], shared_operator: bool) -> dict[str, str]:
    """The variables for shells and kernels, from the contract's properties (see the module docstring);
    ``helm_env`` is the backend's ``VSO_CHART_REPO``/``LAB_HELM_VALUES``/``LAB_HELM_POSTRENDERER``
    (:func:`labkit.helm.env` on the local lab, :func:`labkit.helm.passthrough_env` elsewhere)."""
    from . import helm

    host, port = lab.pg_address
    rest = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != str(tools_dir)]
    token = lab.vault_token
    env = {
        "VAULT_ADDR": lab.vault_addr, "BAO_ADDR": lab.vault_addr, "VAULT_TOKEN": token, "BAO_TOKEN": token,
        "KUBECONFIG": str(lab.kubeconfig),
        "PGHOST": str(host), "PGPORT": str(port), "PGUSER": str(lab.pg_admin_user), "PGDATABASE": "postgres",
        "PGPASSWORD": str(lab.pg_admin_password),
        # the addresses as the cluster's side reaches them: the VaultConnection (01), Vault's TokenReview (01),
        # Vault's database connection (03) and the app's DB_HOST/DB_PORT (03)
        "VAULT_ADDR_FOR_CLUSTER": lab.vault_addr_for_cluster, "KUBE_API_FOR_VAULT": lab.kube_api_for_vault,
        "PG_ADDR_FOR_VAULT": "{}:{}".format(*lab.pg_address_for_vault),
        "PG_HOST_FOR_PODS": str(lab.pg_address_for_pods[0]), "PG_PORT_FOR_PODS": str(lab.pg_address_for_pods[1]),
        "VSOLAB_BACKEND": lab.backend, "VSOLAB_STATE": str(lab.state.root),
        **helm.helm_home(lab),
        "PATH": os.pathsep.join([str(tools_dir), *rest]),
        "PREFIX": lab.names.prefix,
        **helm_env,
    }
    if shared_operator:
        env["VSOLAB_SHARED_OPERATOR"] = "1"
    return env
