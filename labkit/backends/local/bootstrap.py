"""What ``LocalLab.up`` does around the components: checks before anything starts, the start-up chains run side
by side, the admin kubeconfig, the lab's tools, VSO's CRDs. ``lab.py`` binds the functions taking ``lab`` as
``LocalLab``'s methods (``_preflight = bootstrap.preflight``)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ComponentError
from . import repair
from .apiserver import APIServer

if TYPE_CHECKING:
    from .lab import LocalLab

CRD_CHECK = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/vaultstaticsecrets.secrets.hashicorp.com"


def ensure_tools(lab: LocalLab) -> None:
    from ... import _env

    _env.ensure_tools(lab.tools_dir)


def ensure_crds(lab: LocalLab) -> None:
    """VSO's CRDs (the chart's ``crds/``; ``helm install`` skips CRDs that exist), so that the lab's code and
    ``kubectl get vaultstaticsecrets`` know the kinds before notebook 01 installs the operator."""
    api = lab.components["apiserver"]
    assert isinstance(api, APIServer)
    if api._get(CRD_CHECK).ok:
        return
    from ... import k8s

    k8s.apply(lab.kube, [d for f in sorted(lab.bin["vso-crds"].glob("*.yaml")) for d in k8s.load_yaml(f.read_text())])


def preflight(lab: LocalLab) -> None:
    """Before starting anything: every binary can run, every port of a stopped component is free, disk is free."""
    if not all(comp.pid() for comp in lab.components.values()):
        repair.check_disk(lab)
    for comp in lab.components.values():
        if comp.pid():
            continue
        program = Path(comp.command()[0]) if comp.name != "agent" else Path(sys.executable)
        if not (program.is_file() and os.access(program, os.X_OK)):
            why = "it does not exist" if not program.exists() else "it is not executable (Permission denied)"
            raise ComponentError(
                f"Checked that {comp.name}'s program {program} can be run: {why}.",
                ["Reinstall the lab's binaries: `labkit install --force`.",
                 "Check that VSOLAB_CACHE points at a complete cache built for this machine (`labkit doctor`).",
                 f"Check the file: `ls -l {program}` and `file {program}`."],
            )
        for name in (comp.name, *comp.extra_ports):
            lab.state.check_port_free(name, lab.ports[name], f"See {comp.log}.")


def write_admin_kubeconfig(lab: LocalLab) -> None:
    pki = lab.state.path("pki")
    text = _kubeconfig(
        lab.kube_api, "vsolab", "vsolab-admin",
        user={"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
        ca_file=str(pki / "ca.crt"),
    )
    lab.state.write_private("kube/admin.kubeconfig", text)


def _parallel(*steps: Callable[[], None], abort: threading.Event | None = None) -> None:
    """Run ``steps`` in threads; re-raise the first error (a LabkitError reaches the user as is).

    The first failure sets ``abort``, so the other steps stop waiting for their components (which may
    depend on the failed one) instead of running into their own timeouts.
    """
    errors: list[BaseException] = []

    def run(step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
            if abort is not None:
                abort.set()

    threads = [threading.Thread(target=run, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _kubeconfig(server: str, cluster: str, user_name: str, *, user: dict[str, str], ca_file: str) -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user_name}}],
    })
