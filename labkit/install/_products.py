"""The products ``labkit install`` puts in place: their pins, the Go wrapper modules they build from, and the cache.

Each product lands in ``~/.cache/vsolab/<product>-<version>/`` (or ``$VSOLAB_CACHE``), whichever source made it
(:mod:`labkit.install._build`, :mod:`labkit.install._prebuilt`); ``build-metrics.json`` beside the binaries says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ETCD_VERSION = "3.6.16"
KUBE_VERSION = "1.36.3"
# The task pins VSO v1.4.1, but the Go module proxy reachable here refuses that
# version's zip (HTTP 403 "This module version is not available"); v1.5.0 is the
# nearest release it serves, with the same client-go 0.36 and controller-runtime 0.24.
VSO_VERSION = "1.5.0"
# The tools that install VSO the way the tutorial does (`helm install`), and the chart's second image.
HELM_VERSION = "3.22.0"
KUBE_RBAC_PROXY_VERSION = "0.18.1"
#: The small Go wrapper modules (go.mod, go.sum) the build uses; the go.sum also checks VSO's prebuilt module zip.
GOMOD_DIR = Path(__file__).parent / "_gomod"
VSO_MODULE = "github.com/hashicorp/vault-secrets-operator"


def say(msg: str) -> None:
    """Progress for the person waiting: stdout in a notebook, stderr on a terminal."""
    print(msg, file=sys.stdout if "ipykernel" in sys.modules else sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("VSOLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "vsolab"
    )
    return Path(base).expanduser().absolute()


@dataclass
class Product:
    """One Go build: its wrapper module, packages and outputs."""

    name: str
    version: str
    packages: list[str]
    outputs: list[str]
    ldflags: str = "-s -w"
    extra: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def paths(self) -> dict[str, Path]:
        return {o: self.dir / o for o in self.outputs}

    def built(self) -> bool:
        return all(p.exists() for p in self.paths().values()) and all((self.dir / e).exists() for e in self.extra)


_K = KUBE_VERSION
PRODUCTS = {
    "etcd": Product("etcd", ETCD_VERSION, ["go.etcd.io/etcd/server/v3"], ["etcd"]),
    "kube": Product(
        "kube",
        KUBE_VERSION,
        ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager"],
        ["kube-apiserver", "kube-controller-manager"],
        ldflags=(
            f"-s -w -X k8s.io/component-base/version.gitVersion=v{_K} -X k8s.io/component-base/version.gitMajor=1"
            f" -X k8s.io/component-base/version.gitMinor={_K.split('.')[1]}"
            " -X k8s.io/component-base/version.gitTreeState=clean"
        ),
    ),
    "vso": Product(
        "vso", VSO_VERSION, ["github.com/hashicorp/vault-secrets-operator"], ["vso-manager"], extra=["crds", "rbac/role.yaml"]
    ),
}

#: Built by ``labkit install`` beside :data:`PRODUCTS` (in parallel) but not needed by ``labkit up``: ``helm`` with
#: the VSO chart of exactly the built manager's version packaged as a chart repository (``charts/``), and the
#: chart's kube-rbac-proxy. Build-only: the machines without Go (Binder) run VSO as a host process.
CHART_DIR = "charts"
CHART_FILE = f"vault-secrets-operator-{VSO_VERSION}.tgz"
TOOLS = {
    "helm": Product(
        "helm", HELM_VERSION, ["helm.sh/helm/v3/cmd/helm"], ["helm"],
        # As helm's Makefile: its version, and the Kubernetes version `helm template` assumes (client-go 0.37 → 1.37).
        ldflags=f"-s -w -X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}"
                " -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
                " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
                " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
        extra=[f"{CHART_DIR}/{CHART_FILE}", f"{CHART_DIR}/index.yaml"],
    ),
    "kube-rbac-proxy": Product(
        "kube-rbac-proxy", KUBE_RBAC_PROXY_VERSION, ["github.com/brancz/kube-rbac-proxy/cmd/kube-rbac-proxy"],
        ["kube-rbac-proxy"],
    ),
}


def installed_source(product: Product) -> str:
    """Which source produced the cached binaries (older caches, without the field, were built)."""
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads((product.dir / "build-metrics.json").read_text()).get("source", "build"))
    return "unknown source"


def build_metrics() -> list[dict[str, object]]:
    out = []
    for p in [*PRODUCTS.values(), *TOOLS.values()]:
        f = p.dir / "build-metrics.json"
        if f.exists():
            out.append(json.loads(f.read_text()))
    return out
