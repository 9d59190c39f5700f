"""The prebuilt source of ``labkit install``: choosing it, and fetching the official release binaries.

``auto`` asks the release hosts first (:func:`probe_release_hosts`, a HEAD request each with a short timeout): when
they answer it downloads the release archives, each checked against its published SHA-256 checksum, and builds only
a product whose download or checksum fails; when they do not answer (a machine without internet, as CI here) it
builds from the Go module proxy. Every base URL can point at a mirror (``VSOLAB_K8S_RELEASES``,
``VSOLAB_ETCD_RELEASES``, ``VSOLAB_HASHICORP_RELEASES``, and ``GOPROXY`` for VSO's CRDs), laid out as the real
sites are; tests/test_install_mirror.py serves one over loopback HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError, ChecksumMismatch, DownloadError, ParameterError

if TYPE_CHECKING:
    from ._installer import Product

GOMOD_DIR = Path(__file__).parent / "_gomod"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager")
#: How long ``auto`` waits for each release host to answer before it builds instead.
PROBE_TIMEOUT = 3.0


def say(msg: str) -> None:
    """Progress for the person waiting: stdout in a notebook, stderr on a terminal."""
    print(msg, file=sys.stdout if "ipykernel" in sys.modules else sys.stderr, flush=True)


# -- choosing a source ---------------------------------------------------------------------------
SOURCES = ("auto", "build", "prebuilt")
SOURCE_ENV = "VSOLAB_INSTALL_SOURCE"
# Building kube-apiserver peaks at about 2 GB of resident memory (see peak_rss_bytes in
# kube-*/build-metrics.json); with Go itself and a notebook server beside it, machines below
# about 3 GiB (Binder gives 2 GB) get the release binaries instead.
BUILD_MIN_MEMORY = 3 * 1024**3


@dataclass(frozen=True)
class SourceChoice:
    """The sources to try for each missing product, in order, and why they were chosen."""

    order: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class HostProbe:
    """What :func:`probe_release_hosts` found: did any release host answer, and what each one said."""

    answered: bool
    detail: str


def choose_source(requested: str, mem_bytes: int | None, env: Mapping[str, str], *, have_go: bool = True,
                  hosts: HostProbe | None = None) -> SourceChoice:
    """Decide where the Go binaries come from; a pure function of its arguments.

    ``build`` and ``prebuilt`` are taken as asked, with no fallback. ``auto``:

    * ``VSOLAB_INSTALL_SOURCE=build`` in ``env``: build;
    * ``VSOLAB_INSTALL_SOURCE=prebuilt``, or no Go toolchain: prebuilt (falling back to build when Go is there);
    * the release hosts answered (``hosts``, from :func:`probe_release_hosts`): prebuilt, falling back to build
      for any product whose download or checksum fails: seconds instead of minutes, and no 2 GB build;
    * they did not answer: build, as CI here does (no internet, but the Go module proxy);
    * not probed (``hosts=None``): prebuilt then build below :data:`BUILD_MIN_MEMORY` (``mem_bytes``, the smaller
      of RAM and the cgroup limit), else build.
    """
    req = (requested or "auto").strip().lower()
    if req not in SOURCES:
        raise ParameterError(
            f"Checked the install source {requested!r}: it is not one of {', '.join(SOURCES)}.",
            [
                "Use `labkit install --source auto` (the default) to let labkit choose.",
                "Use `--source build` to build from the Go module proxy (needs Go and about 3 GB of memory).",
                "Use `--source prebuilt` to download the official release binaries, checked against their checksums.",
            ],
        )
    if req != "auto":
        return SourceChoice((req,), f"--source {req} was asked for")
    pref = auto_preference(env)
    fallback = ("build",) if have_go else ()
    if pref == "build":
        return SourceChoice(("build",), f"{SOURCE_ENV}=build")
    if pref == "prebuilt":
        return SourceChoice(("prebuilt", *fallback), f"{SOURCE_ENV}=prebuilt")
    if not have_go:
        return SourceChoice(("prebuilt",), "there is no Go toolchain on PATH to build with")
    gib = f"{mem_bytes / 1024**3:.1f} GiB" if mem_bytes is not None else "unknown"
    low = mem_bytes is not None and mem_bytes < BUILD_MIN_MEMORY
    if hosts is not None and hosts.answered:
        return SourceChoice(("prebuilt", "build"), f"the release hosts answered: {hosts.detail}")
    if hosts is not None:
        warn = f"; note: {gib} of memory is less than the {BUILD_MIN_MEMORY // 1024**3} GiB the build needs" if low else ""
        return SourceChoice(("build",), f"the release hosts did not answer ({hosts.detail}), so building with Go{warn}")
    if low:
        return SourceChoice(
            ("prebuilt", "build"), f"{gib} of memory is less than the {BUILD_MIN_MEMORY // 1024**3} GiB building kube-apiserver needs"
        )
    return SourceChoice(("build",), f"Go and {gib} of memory are available")


def auto_preference(env: Mapping[str, str]) -> str:
    """``VSOLAB_INSTALL_SOURCE`` checked: ``""`` or ``auto`` (labkit decides), ``build`` or ``prebuilt``."""
    pref = env.get(SOURCE_ENV, "").strip().lower()
    if pref not in ("", *SOURCES):
        raise ParameterError(
            f"Checked the environment variable {SOURCE_ENV}={env.get(SOURCE_ENV)!r}: it is not one of {', '.join(SOURCES)}.",
            [
                f"Unset it (`unset {SOURCE_ENV}`) to let labkit choose (release binaries when their hosts answer).",
                f"Set `{SOURCE_ENV}=prebuilt` for release binaries (with build as fallback) or `{SOURCE_ENV}=build`.",
                "Or pass `labkit install --source build|prebuilt`, which wins over the variable.",
            ],
        )
    return "" if pref == "auto" else pref


def probe_urls(products: Iterable[tuple[str, str]], arch: str, env: Mapping[str, str]) -> list[str]:
    """One URL per release host the products need (a checksum file). Not the Go module proxy, which VSO's CRDs come
    from on both paths: it answers where only building works (CI here)."""
    urls = [release_artifacts(name, version, arch, env)[0].checksum_url for name, version in products]
    return list(dict.fromkeys(urls))


def _ask(url: str, timeout: float) -> tuple[bool, str]:
    """HEAD ``url``: any HTTP answer (a 404 too) means its host is reachable; a refused, unresolved or silent one not."""
    host = urllib.parse.urlsplit(url).netloc or url
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        return path.exists(), f"{path} {'exists' if path.exists() else 'is missing'}"
    from .._version import __version__

    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"vsolab-labkit/{__version__} (+labkit install)"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return True, f"{host} HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return True, f"{host} HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{host}: {reason if str(reason) else type(reason).__name__}"


def probe_release_hosts(urls: list[str], timeout: float = PROBE_TIMEOUT) -> HostProbe:
    """Ask every URL at once, waiting at most ``timeout`` seconds; answered when any host answered."""
    if not urls:
        return HostProbe(False, "nothing to download")
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        results = list(pool.map(lambda u: _ask(u, timeout), urls))
    seen: dict[str, None] = {}
    for _ok, what in results:
        seen.setdefault(what)
    return HostProbe(any(ok for ok, _ in results), ", ".join(seen))


def memory_limit(root: Path = Path("/")) -> int | None:
    """The memory this process may use: the smaller of MemTotal and its cgroup's limit (containers, Binder)."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append(int(line.split()[1]) * 1024)
    cands = [root / "sys/fs/cgroup/memory.max", root / "sys/fs/cgroup/memory/memory.limit_in_bytes"]
    with contextlib.suppress(OSError):
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::/") and line.strip() != "0::/":
                cands.append(root / "sys/fs/cgroup" / line[4:].strip() / "memory.max")
    for cand in cands:
        with contextlib.suppress(OSError):
            text = cand.read_text().strip()
            if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
                found.append(int(text))
    return min(found) if found else None


# -- prebuilt: official release archives, checked against their published checksums ------------------
# Base URLs; each can point at a mirror (a workshop proxy, or file:// for a local copy).
RELEASE_BASES: dict[str, tuple[str, str]] = {
    "k8s": ("VSOLAB_K8S_RELEASES", "https://dl.k8s.io/release"),
    "etcd": ("VSOLAB_ETCD_RELEASES", "https://github.com/etcd-io/etcd/releases/download"),
    "hashicorp": ("VSOLAB_HASHICORP_RELEASES", "https://releases.hashicorp.com"),
}
DEFAULT_GOPROXY = "https://proxy.golang.org"
VSO_MODULE = "github.com/hashicorp/vault-secrets-operator"
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


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
                         ["Use one of those names.", "Or call `install()` without a product list.", "See labkit/install.py PRODUCTS."])


def parse_checksums(text: str, name: str | None, *, source: str) -> str:
    """The SHA-256 for ``name`` in a SHA256SUMS file, or the lone digest of a ``.sha256`` file (``name=None``)."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or not _HEX64.match(parts[0]):
            continue
        if name is None:
            return parts[0].lower()
        if len(parts) >= 2 and parts[1].lstrip("*").removeprefix("./") == name:
            return parts[0].lower()
    raise BuildError(
        f"Checked the published checksums at {source} for {name or 'a SHA-256 digest'}: it is not listed.",
        [
            f"Open {source} and check that the pinned version is published for this architecture.",
            "If the release moved, point the VSOLAB_*_RELEASES variable at a mirror that has it (docs/install.md).",
            "Or build from source instead: `labkit install --source build`.",
        ],
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _refuse(what: str, path: Path, url: str, got: str, expected: str, checksum_source: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"Checked {what} ({url}) against its published checksum ({checksum_source}): it does not match, so it was refused.",
        [
            "Retry `labkit install`: a download cut short or rewritten by a proxy gives a different checksum.",
            f"Compare by hand: `sha256sum {path.name}` against the line in {checksum_source}.",
            "Or build from source instead: `labkit install --source build` (the Go module proxy, checked against go.sum).",
        ],
        detail=f"expected {expected}\n     got {got}",
    )


def verify_sha256(path: Path, expected: str, *, url: str = "", checksum_source: str = "the published checksum") -> None:
    """Raise :class:`ChecksumMismatch` unless ``path``'s SHA-256 is ``expected``."""
    got = sha256_file(path)
    if got != expected.strip().lower():
        raise _refuse(path.name, path, url or str(path), got, expected, checksum_source)


def module_zip_hash(path: Path) -> str:
    """The ``h1:`` hash Go records in go.sum for a module zip (golang.org/x/mod/sumdb/dirhash.HashZip)."""
    with zipfile.ZipFile(path) as z:
        names = sorted(info.filename for info in z.infolist())
        summary = "".join(f"{hashlib.sha256(z.read(n)).hexdigest()}  {n}\n" for n in names)
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def go_sum_hash(module: str, version: str, go_sum: Path) -> str:
    """The ``h1:`` hash of ``module`` at ``version`` (its zip, not its go.mod) in a go.sum file."""
    for line in go_sum.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == module and parts[1] == f"v{version}":
            return parts[2]
    raise BuildError(
        f"Checked {go_sum} for the hash of {module} v{version}: it is not there.",
        [
            "The go.sum and the pinned version disagree: check VSO_VERSION in labkit/install.py.",
            f"Regenerate go.sum: `cd {go_sum.parent} && go mod tidy`.",
            "Or build from source instead: `labkit install --source build`.",
        ],
    )


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
                    "Update the member paths in labkit/_prebuilt.py release_artifacts().",
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
        for extra in ("crds", "rbac"):
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

