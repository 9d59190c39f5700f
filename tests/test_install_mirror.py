"""``labkit install`` from a release mirror, for real and offline.

A loopback HTTP server serves a mirror laid out exactly as the real sites are (the paths and the checksum files
as they name them), made from the binaries this machine already built (the real cache, read only):

* ``dl.k8s.io/release/v<K>/bin/linux/<arch>/<binary>`` and ``<binary>.sha256`` (the bare digest);
* etcd's GitHub releases: ``v<E>/etcd-v<E>-linux-<arch>.tar.gz`` (a folder of the same name inside) and ``SHA256SUMS``;
* ``releases.hashicorp.com/vault-secrets-operator/<V>/vault-secrets-operator_<V>_linux_<arch>.zip`` and
  ``vault-secrets-operator_<V>_SHA256SUMS``;
* a Go module proxy holding the VSO module zip (its CRDs and ClusterRole, checked against go.sum).

``labkit install`` runs as a subprocess with the base-URL variables pointing at the mirror, into a temporary
``VSOLAB_CACHE``: ``auto`` finds the hosts answering and downloads; the binaries run. A corrupted archive is refused
with one paragraph naming the checksum mismatch; a missing one makes ``auto`` build that product from source (etcd:
the Go build cache of the first build makes it a link step, about half a minute).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _mirror import REAL, Mirror, mirror_env, serve

from labkit import install
from labkit.install import _checksums, _source

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[1]
E, K, V = install.ETCD_VERSION, install.KUBE_VERSION, install.VSO_VERSION


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mirror, dict[str, Path]]]:
    needed = [REAL / f"kube-{K}" / "kube-apiserver", REAL / f"etcd-{E}" / "etcd", REAL / f"vso-{V}" / "vso-manager"]
    if not all(p.exists() for p in needed):
        pytest.skip(f"the mirror is made from built binaries: run `labkit install` first ({REAL})")
    root = tmp_path_factory.mktemp("mirror")
    server, files = serve(root)
    yield server, files
    server.shutdown()
    server.server_close()


def _install(server: Mirror, cache: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != _source.SOURCE_ENV}
    env.update(VSOLAB_CACHE=str(cache), **mirror_env(server))
    return subprocess.run([sys.executable, "-m", "labkit", "install", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _version(path: Path, flag: str = "--version") -> str:
    out = subprocess.run([str(path), flag], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_auto_installs_the_release_binaries_from_the_mirror(mirror: tuple[Mirror, dict[str, Path]], tmp_path: Path) -> None:
    server, _files = mirror
    server.overrides.clear()
    server.requests.clear()
    cache = tmp_path / "cache"
    res = _install(server, cache, "etcd", "kube", "vso")
    assert res.returncode == 0, res.stderr
    host = server.url.removeprefix("http://")
    assert f"Install source: prebuilt then build (the release hosts answered: {host} HTTP 200)" in res.stderr
    assert "Building" not in res.stderr and not (cache / "build").exists()
    for name in ("etcd", "kube", "vso"):
        product = install.PRODUCTS[name]
        assert f"{name}: downloaded and verified" in res.stderr
        for out in product.outputs:
            got = cache / f"{name}-{product.version}" / out
            assert _checksums.sha256_file(got) == _checksums.sha256_file(REAL / f"{name}-{product.version}" / out)
            assert got.stat().st_mode & 0o777 == 0o755
        assert '"source": "prebuilt"' in (cache / f"{name}-{product.version}" / "build-metrics.json").read_text()
    assert f"Kubernetes v{K}" in _version(cache / f"kube-{K}" / "kube-apiserver")
    assert f"Kubernetes v{K}" in _version(cache / f"kube-{K}" / "kube-controller-manager")
    assert f"etcd Version: {E}" in _version(cache / f"etcd-{E}" / "etcd")
    assert "version.Info" in _version(cache / f"vso-{V}" / "vso-manager", "-version")
    assert not (cache / f"etcd-{E}" / "README.md").exists()  # only what the lab runs
    vso = cache / f"vso-{V}"
    assert sorted(p.name for p in (vso / "crds").iterdir()) == sorted(p.name for p in (REAL / f"vso-{V}" / "crds").iterdir())
    assert (vso / "rbac" / "role.yaml").read_bytes() == (REAL / f"vso-{V}" / "rbac" / "role.yaml").read_bytes()
    # the chart's pre-upgrade hook runs scripts/upgrade-crds: laid out at install time (a shared cache is read-only later)
    assert os.readlink(vso / "scripts" / "upgrade-crds") == "../vso-manager"
    assert (vso / "scripts" / "crds").resolve() == (vso / "crds").resolve()
    # the probe asked each release host with HEAD; then each checksum file and archive was fetched once
    heads = [p for m, p in server.requests if m == "HEAD"]
    assert f"/k8s/release/v{K}/bin/linux/amd64/kube-apiserver.sha256" in heads and f"/etcd/v{E}/SHA256SUMS" in heads
    gets = [p for m, p in server.requests if m == "GET"]
    assert gets.count(f"/etcd/v{E}/etcd-v{E}-linux-amd64.tar.gz") == 1
    # a second run downloads nothing
    server.requests.clear()
    again = _install(server, cache, "etcd", "kube", "vso")
    assert again.returncode == 0 and server.requests == []
    assert f"etcd {E}: cached in {cache / f'etcd-{E}'} (prebuilt)" in again.stderr


def test_a_corrupted_archive_is_refused(mirror: tuple[Mirror, dict[str, Path]], tmp_path: Path) -> None:
    server, files = mirror
    data = bytearray(files["kube-controller-manager"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed on the way
    path = f"/k8s/release/v{K}/bin/linux/amd64/kube-controller-manager"
    server.overrides = {path: bytes(data)}
    cache = tmp_path / "cache"
    res = _install(server, cache, "--source", "prebuilt", "kube")
    assert res.returncode == 2, res.stderr
    first = [line for line in res.stderr.splitlines() if line.startswith("labkit install:")]
    assert first == [f"labkit install: Checked kube-controller-manager ({server.url}{path}) against its published checksum "
                     f"({server.url}{path}.sha256): it does not match, so it was refused."]
    assert f"expected {_checksums.sha256_file(files['kube-controller-manager'])}" in res.stderr
    assert f"got {hashlib.sha256(bytes(data)).hexdigest()}" in res.stderr
    assert "To fix it:" in res.stderr and "  3. " in res.stderr and "Traceback" not in res.stderr
    kube = cache / f"kube-{K}"
    assert not (kube / "kube-controller-manager").exists() and not (kube / "kube-apiserver").exists()  # nothing half-installed
    assert not (kube / ".prebuilt").exists()


def test_a_missing_archive_is_built_from_source(mirror: tuple[Mirror, dict[str, Path]], tmp_path: Path) -> None:
    if not shutil.which("go"):
        pytest.skip("building needs Go")
    server, _files = mirror
    missing = f"/etcd/v{E}/etcd-v{E}-linux-amd64.tar.gz"
    server.overrides = {missing: None}
    cache = tmp_path / "cache"
    res = _install(server, cache, "etcd")
    assert res.returncode == 0, res.stderr
    assert "Install source: prebuilt then build (the release hosts answered" in res.stderr
    assert (f"etcd: prebuilt failed, falling back to build: Checked that etcd {E} (etcd-v{E}-linux-amd64.tar.gz) downloads "
            f"from {server.url}{missing}: it failed (HTTP Error 404: File not found).") in res.stderr
    assert f"Building etcd {E} from the Go module proxy" in res.stderr
    assert '"source": "build"' in (cache / f"etcd-{E}" / "build-metrics.json").read_text()
    assert f"etcd Version: {E}" in _version(cache / f"etcd-{E}" / "etcd")
