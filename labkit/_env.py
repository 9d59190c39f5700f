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
* ``VSO_CHART_REPO``, ``LAB_HELM_VALUES`` and ``LAB_HELM_POSTRENDERER``: where the chart comes from, the values
  file the backend needs and a post-renderer executable (a pass-through where the backend needs none), so that
  the Helm cell is one command on every backend;
* ``VSOLAB_SHARED_OPERATOR=1`` when VSO belongs to the team (a shared cluster): Helm cells then look and do not
  touch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: HashiCorp's chart repository (``helm repo add hashicorp …``)
HASHICORP_CHART_REPO = "https://helm.releases.hashicorp.com"
PASSTHROUGH = "#!/bin/sh\n# A Helm post-renderer that changes nothing: this backend needs no change to the chart.\nexec cat\n"
EMPTY_VALUES = "# This backend adds nothing to the VSO chart's defaults.\n{}\n"


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


def helm_home(state: Any) -> dict[str, str]:
    base = state.path("helm")
    return {"HELM_CONFIG_HOME": str(base / "config"), "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_DATA_HOME": str(base / "data")}


def helm_files(state: Any, values: str = EMPTY_VALUES) -> tuple[Path, Path]:
    """``<state>/helm/values.yaml`` and the pass-through post-renderer ``<state>/helm/postrender``, written once."""
    state.ensure()
    vals, post = state.path("helm", "values.yaml"), state.path("helm", "postrender")
    if not vals.exists() or vals.read_text() != values:
        state.write_private("helm/values.yaml", values)
    if not post.exists() or post.read_text() != PASSTHROUGH:
        state.write_private("helm/postrender", PASSTHROUGH)
    post.chmod(0o700)
    return vals, post


def lab_env(lab: Any, *, tools_dir: Path, chart_repo: str, helm_values: Path, post_renderer: Path,
            shared_operator: bool) -> dict[str, str]:
    """The variables for shells and kernels, from the contract's properties (see the module docstring)."""
    host, port = lab.pg_address
    rest = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != str(tools_dir)]
    token = lab.vault_token
    env = {
        "VAULT_ADDR": lab.vault_addr, "BAO_ADDR": lab.vault_addr, "VAULT_TOKEN": token, "BAO_TOKEN": token,
        "KUBECONFIG": str(lab.kubeconfig),
        "PGHOST": str(host), "PGPORT": str(port), "PGUSER": str(lab.pg_admin_user), "PGDATABASE": "postgres",
        "PGPASSWORD": str(lab.pg_admin_password),
        "VSOLAB_BACKEND": lab.backend, "VSOLAB_STATE": str(lab.state.root),
        **helm_home(lab.state),
        "PATH": os.pathsep.join([str(tools_dir), *rest]),
        "PREFIX": lab.names.prefix,
        "VSO_CHART_REPO": chart_repo, "LAB_HELM_VALUES": str(helm_values), "LAB_HELM_POSTRENDERER": str(post_renderer),
    }
    if shared_operator:
        env["VSOLAB_SHARED_OPERATOR"] = "1"
    return env
