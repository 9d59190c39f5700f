"""Find, fetch or build, and cache the lab's binaries.

The Go programs (etcd, kube-apiserver, kube-controller-manager, the VSO manager)
come from one of two *sources* and land in the same versioned cache directory,
``~/.cache/vsolab/<product>-<version>/`` (or ``$VSOLAB_CACHE``); later runs reuse them:

* ``build``: built once from the Go module proxy through the small wrapper modules
  committed in ``labkit/install/_gomod``. Needs Go and about 3 GB of memory. What CI uses.
* ``prebuilt``: the projects' official release archives (dl.k8s.io, etcd's GitHub
  releases, releases.hashicorp.com), each checked against its published SHA-256
  checksum; VSO's CRDs and ClusterRole come from its Go module zip, checked against
  the ``h1:`` hash in ``labkit/install/_gomod/vso/go.sum``. Needs neither Go nor much memory.
  What Binder uses.
* ``auto`` (the default) asks the release hosts first: when they answer it downloads,
  falling back to building any product whose download fails; when they do not (no
  internet, as CI here) it builds. It says which and why (``_source.choose_source``).

OpenBao (``bao``) and ``kubectl`` come from PyPI wheels, and PostgreSQL from the
system (Debian's ``postgresql`` package or conda-forge's). See docs/install.md.

This module is the public API; the work is done in private modules, one per concern:
``_products`` (the pins, the product and tool tables, the cache), ``_source`` (choosing
the source, probing the release hosts), ``_build`` (Go builds), ``_prebuilt`` (release
downloads), ``_checksums`` (SHA-256 and go.sum checks), ``_tools`` (``bao``, ``kubectl``,
PostgreSQL, ``helm``), ``_installer`` (one product under its cross-process lock, or all).
"""

from __future__ import annotations

from ._build import build, go_binary
from ._installer import binaries, install, install_product
from ._prebuilt import lay_out_vso_scripts
from ._products import (
    CHART_DIR,
    ETCD_VERSION,
    GOMOD_DIR,
    HELM_VERSION,
    KUBE_RBAC_PROXY_VERSION,
    KUBE_VERSION,
    PRODUCTS,
    TOOLS,
    VSO_VERSION,
    Product,
    build_metrics,
    cache_root,
    installed_source,
)
from ._source import SourceChoice
from ._tools import bao_binary, kubectl_binary, postgres_bindir, tools

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
