"""Find, fetch or build, and cache the lab's binaries: the public API of ``labkit install``.

Everything here is re-exported from the package's private modules; import from ``labkit.install``.
"""

from __future__ import annotations

from ._installer import (
    CHART_DIR,
    ETCD_VERSION,
    HELM_VERSION,
    KUBE_RBAC_PROXY_VERSION,
    KUBE_VERSION,
    PRODUCTS,
    TOOLS,
    VSO_VERSION,
    Product,
    bao_binary,
    binaries,
    build,
    build_metrics,
    cache_root,
    go_binary,
    install,
    install_product,
    installed_source,
    kubectl_binary,
    postgres_bindir,
    tools,
)
from ._prebuilt import GOMOD_DIR, SourceChoice, lay_out_vso_scripts

__all__ = [
    "CHART_DIR",
    "ETCD_VERSION",
    "GOMOD_DIR",
    "HELM_VERSION",
    "KUBE_RBAC_PROXY_VERSION",
    "KUBE_VERSION",
    "PRODUCTS",
    "TOOLS",
    "VSO_VERSION",
    "Product",
    "SourceChoice",
    "bao_binary",
    "binaries",
    "build",
    "build_metrics",
    "cache_root",
    "go_binary",
    "install",
    "install_product",
    "installed_source",
    "kubectl_binary",
    "lay_out_vso_scripts",
    "postgres_bindir",
    "tools",
]
