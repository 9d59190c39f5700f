"""The build source of ``labkit install``: each product built once from the Go module proxy.

Through the small wrapper modules committed in ``labkit/install/_gomod`` (their go.sum pins every module); needs Go
and about 3 GB of memory. ``vso`` also copies its CRDs and ClusterRole out of the module, and ``helm`` packages VSO's
chart as a chart repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import BuildError, MissingTool
from ._prebuilt import lay_out_vso_scripts
from ._products import CHART_DIR, GOMOD_DIR, VSO_MODULE, VSO_VERSION, Product, cache_root
from ._products import say as _say


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
