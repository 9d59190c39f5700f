"""The prebuilt source of ``labkit install``: the projects' official release binaries, each checked against its
published SHA-256 checksum (:mod:`labkit.install._checksums`), cached like a build.

VSO's CRDs and ClusterRole come from its Go module zip, checked against the ``h1:`` hash in
``labkit/install/_gomod/vso/go.sum``. Every base URL can point at a mirror (``VSOLAB_K8S_RELEASES``,
``VSOLAB_ETCD_RELEASES``, ``VSOLAB_HASHICORP_RELEASES``, and ``GOPROXY`` for VSO's CRDs), laid out as the real
sites are; tests/test_install_mirror.py serves one over loopback HTTP. Whether to use it: :mod:`labkit.install._source`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError, DownloadError, ParameterError
from ._checksums import _refuse, go_sum_hash, module_zip_hash, parse_checksums, verify_sha256
from ._products import GOMOD_DIR, VSO_MODULE, Product, say

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager")

# Base URLs; each can point at a mirror (a workshop proxy, or file:// for a local copy).
RELEASE_BASES: dict[str, tuple[str, str]] = {
    "k8s": ("VSOLAB_K8S_RELEASES", "https://dl.k8s.io/release"),
    "etcd": ("VSOLAB_ETCD_RELEASES", "https://github.com/etcd-io/etcd/releases/download"),
    "hashicorp": ("VSOLAB_HASHICORP_RELEASES", "https://releases.hashicorp.com"),
}
DEFAULT_GOPROXY = "https://proxy.golang.org"
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class Artifact:
    """One download: the file, where its checksum is published, and what to take out of it."""

    url: str
    checksum_url: str
    checksum_name: str | None  # its line in a SHA256SUMS file; None: the checksum file holds only its digest
    members: dict[str, str] = field(default_factory=dict)  # cache output -> path in the archive ("" = the file itself)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _base(key: str, env: Mapping[str, str]) -> str:
    var, default = RELEASE_BASES[key]
    return (env.get(var) or default).rstrip("/")


def machine_arch(machine: str | None = None) -> str:
    """Go's name for this machine's architecture, as release archives use it."""
    m = (machine or platform.machine()).lower()
    if m not in _ARCHES:
        raise BuildError(
            f"Checked for release binaries for this machine's architecture ({m}): only amd64 and arm64 are published.",
            [
                "Build from source instead: `labkit install --source build`.",
                "Or run the lab on an amd64 or arm64 Linux machine (a VM, Binder, a JupyterHub).",
                "Or copy a VSOLAB_CACHE built on a machine of this architecture.",
            ],
        )
    return _ARCHES[m]


def release_artifacts(name: str, version: str, arch: str, env: Mapping[str, str] | None = None) -> list[Artifact]:
    """The official release downloads that provide product ``name`` at ``version``."""
    env = os.environ if env is None else env
    if name == "etcd":
        base, tgz = _base("etcd", env), f"etcd-v{version}-linux-{arch}.tar.gz"
        return [Artifact(f"{base}/v{version}/{tgz}", f"{base}/v{version}/SHA256SUMS", tgz,
                         {"etcd": f"etcd-v{version}-linux-{arch}/etcd"})]
    if name == "kube":
        base = _base("k8s", env)
        return [
            Artifact(f"{base}/v{version}/bin/linux/{arch}/{b}", f"{base}/v{version}/bin/linux/{arch}/{b}.sha256", None, {b: ""})
            for b in KUBE_BINARIES
        ]
    if name == "vso":
        base, zipname = f"{_base('hashicorp', env)}/vault-secrets-operator/{version}", f"vault-secrets-operator_{version}_linux_{arch}.zip"
        return [Artifact(f"{base}/{zipname}", f"{base}/vault-secrets-operator_{version}_SHA256SUMS", zipname,
                         {"vso-manager": "vault-secrets-operator"})]
    raise ParameterError(f"Checked the product name {name!r}: labkit knows etcd, kube, vso.",
                         ["Use one of those names.", "Or call `install()` without a product list.",
                          "See labkit/install/_products.py PRODUCTS."])


def goproxy_base(env: Mapping[str, str]) -> str:
    """The first HTTP(S) or file:// entry of GOPROXY, else the public proxy."""
    for entry in re.split(r"[,|]", env.get("GOPROXY", "")):
        entry = entry.strip()
        if entry.startswith(("https://", "http://", "file://")):
            return entry.rstrip("/")
    return DEFAULT_GOPROXY


def module_zip_url(module: str, version: str, env: Mapping[str, str]) -> str:
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), module)  # the proxy protocol's case escaping
    return f"{goproxy_base(env)}/{escaped}/@v/v{version}.zip"


def _open(url: str):
    from .._version import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"vsolab-labkit/{__version__} (+labkit install)"})
    return urllib.request.urlopen(req, timeout=60)  # https, or a file:// mirror the user chose


def _download_failed(url: str, what: str, exc: BaseException) -> DownloadError:
    return DownloadError(
        f"Checked that {what} downloads from {url}: it failed ({exc}).",
        [
            f"Check that this machine reaches it: `curl -sIL {url}`.",
            "Behind a proxy, set HTTPS_PROXY, or point the VSOLAB_*_RELEASES variable at a mirror (docs/install.md).",
            "Or build from source instead: `labkit install --source build`.",
        ],
    )


def _download(url: str, dest: Path, what: str) -> int:
    """Stream ``url`` to ``dest``, saying how far it got every 10 s; return the byte count."""
    start = last = time.monotonic()
    n = 0
    try:
        with _open(url) as resp, open(dest, "wb") as fh:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                fh.write(chunk)
                n += len(chunk)
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    say(f"  {what}: {n / 1e6:.0f} MB, {last - start:.0f}s")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _download_failed(url, what, exc) from exc
    return n


def _fetch_text(url: str, what: str) -> str:
    try:
        with _open(url) as resp:
            return resp.read(4 << 20).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _download_failed(url, what, exc) from exc


def _extract(archive: Path, members: dict[str, str], out: Path) -> None:
    """Copy the named members (only those) of a .tar.gz, a .zip or a bare binary to ``out/<output>``."""
    out.mkdir(parents=True, exist_ok=True)
    for output, member in members.items():
        dest = out / output
        try:
            if not member:
                os.replace(archive, dest)
            elif archive.name.endswith((".tar.gz", ".tgz")):
                with tarfile.open(archive, "r:gz") as tf:
                    info = tf.getmember(member)
                    src = tf.extractfile(info) if info.isfile() else None
                    if src is None:
                        raise KeyError(member)
                    with src, open(dest, "wb") as fh:
                        shutil.copyfileobj(src, fh)
            else:
                with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as fh:
                    shutil.copyfileobj(src, fh)
        except (KeyError, tarfile.TarError, zipfile.BadZipFile) as exc:
            raise BuildError(
                f"Checked the release archive {archive.name} for {member}: it is not there ({exc}).",
                [
                    "The archive layout changed with this release: read it with `tar tzf` or `unzip -l`.",
                    "Update the member paths in labkit/install/_prebuilt.py release_artifacts().",
                    "Or build from source instead: `labkit install --source build`.",
                ],
            ) from exc
        os.chmod(dest, 0o755)


def _fetch_vso_manifests(version: str, out: Path, env: Mapping[str, str]) -> tuple[int, dict[str, str]]:
    """VSO's CRDs and manager ClusterRole, from its module zip, checked against the committed go.sum."""
    url = module_zip_url(VSO_MODULE, version, env)
    go_sum = GOMOD_DIR / "vso" / "go.sum"
    expected = go_sum_hash(VSO_MODULE, version, go_sum)
    zpath = out.parent / f"vso-module-{version}.zip"
    n = _download(url, zpath, f"the VSO {version} module zip (CRDs, ClusterRole)")
    got = module_zip_hash(zpath)
    if got != expected:
        raise _refuse("the VSO module zip", zpath, url, got, expected, str(go_sum))
    prefix = f"{VSO_MODULE}@v{version}/"
    (out / "crds").mkdir(parents=True, exist_ok=True)
    (out / "rbac").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath) as z:
        crds = [i for i in z.namelist() if i.startswith(prefix + "chart/crds/") and i.endswith(".yaml")]
        if not crds or prefix + "config/rbac/role.yaml" not in z.namelist():
            raise BuildError(
                f"Checked the VSO module zip {url} for chart/crds/*.yaml and config/rbac/role.yaml: they are missing.",
                ["Check the pinned VSO_VERSION.", "Update _fetch_vso_manifests() for the new layout.",
                 "Or build from source instead: `labkit install --source build`."],
            )
        for name in crds:
            (out / "crds" / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
        (out / "rbac" / "role.yaml").write_bytes(z.read(prefix + "config/rbac/role.yaml"))
    for p in [out / "crds", *(out / "crds").iterdir(), out / "rbac", out / "rbac" / "role.yaml"]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    lay_out_vso_scripts(out)
    return n, {"url": url, "h1": expected}


def lay_out_vso_scripts(dest: Path) -> None:
    """``dest/scripts/{upgrade-crds,crds}``: relative symlinks to the manager and its CRDs, as VSO's Dockerfile lays
    out its image. Called with the binary ``upgrade-crds``, the manager upgrades the CRDs from ``crds/`` beside it
    (the chart's pre-upgrade hook). Made at install time, so a read-only shared cache already has them."""
    scripts = dest / "scripts"
    scripts.mkdir(mode=0o755, exist_ok=True)
    for name, target in (("upgrade-crds", "../vso-manager"), ("crds", "../crds")):
        link = scripts / name
        if not (link.is_symlink() and os.readlink(link) == target):
            tmp = scripts / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)


def fetch_prebuilt(
    product: Product, *, force: bool = False, arch: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Download ``product``'s official release binaries, verify them, and cache them like a build."""
    if product.built() and not force:
        return product.paths()
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        raise BuildError(
            f"Checked for release binaries of {product.name} for {sys.platform}: the lab runs Linux server binaries only.",
            ["Run the lab in a Linux VM, a container, Binder or a JupyterHub.",
             "Or build from source: `labkit install --source build`.", "Or use the minikube backend (VSOLAB_BACKEND=minikube)."],
        )
    arts = release_artifacts(product.name, product.version, arch or machine_arch(), env)
    say(f"Downloading {product.name} {product.version} release binaries (checksums verified, cached afterwards) …")
    start = time.monotonic()
    product.dir.mkdir(parents=True, exist_ok=True)
    stage = product.dir / ".prebuilt"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    out = stage / "out"
    total = 0
    record: list[dict[str, str]] = []
    try:
        for art in arts:
            what = f"{product.name} {product.version} ({art.filename})"
            expected = parse_checksums(_fetch_text(art.checksum_url, f"the checksums of {art.filename}"), art.checksum_name,
                                       source=art.checksum_url)
            archive = stage / art.filename
            total += _download(art.url, archive, what)
            verify_sha256(archive, expected, url=art.url, checksum_source=art.checksum_url)
            _extract(archive, art.members, out)
            archive.unlink(missing_ok=True)
            record.append({"url": art.url, "sha256": expected})
        if product.name == "vso":
            n, rec = _fetch_vso_manifests(product.version, out, env)
            total += n
            record.append(rec)
        # Extras first, outputs last: built() only turns true once everything is in place.
        for extra in ("crds", "rbac", "scripts"):
            if (out / extra).is_dir():
                if (product.dir / extra).exists():
                    shutil.rmtree(product.dir / extra)
                os.replace(out / extra, product.dir / extra)
        for output in product.outputs:
            os.replace(out / output, product.dir / output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    metrics = {
        "product": product.name,
        "version": product.version,
        "source": "prebuilt",
        "seconds": round(time.monotonic() - start, 1),
        "download_bytes": total,
        "artifacts": record,
    }
    (product.dir / "build-metrics.json").write_text(json.dumps(metrics, indent=2))
    say(f"  {product.name}: downloaded and verified in {metrics['seconds']:.0f}s ({total / 1e6:.0f} MB)")
    return product.paths()

