"""labkit install: choosing prebuilt or built binaries, verifying downloads, and the cache layout.

No test here uses the network: release "mirrors" are file:// trees made in tmp_path, and an
autouse fixture makes any socket connection fail the test. The real cache is never touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from labkit import cli, install
from labkit.errors import BuildError, ChecksumMismatch, DownloadError, LabkitError, MissingTool, ParameterError
from labkit.install import _build, _checksums, _installer, _prebuilt, _products, _source

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
GOMOD = ROOT / "labkit/install/_gomod"  # the committed wrapper modules


@pytest.fixture(autouse=True)
def offline_and_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("unit tests must not use the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("VSOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(_source.SOURCE_ENV, raising=False)
    return tmp_path / "cache"


# -- choosing the source ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "mem", "env", "have_go", "order"),
    [
        ("build", 1 * GiB, {}, True, ("build",)),
        ("prebuilt", 64 * GiB, {}, True, ("prebuilt",)),
        ("auto", 2 * GiB, {}, True, ("prebuilt", "build")),  # Binder: 2 GB
        ("auto", 24 * GiB, {}, True, ("build",)),  # a laptop or CI
        ("auto", None, {}, True, ("build",)),  # memory unknown: as CI does
        ("auto", _source.BUILD_MIN_MEMORY, {}, True, ("build",)),
        ("auto", _source.BUILD_MIN_MEMORY - 1, {}, True, ("prebuilt", "build")),
        ("auto", 24 * GiB, {"VSOLAB_INSTALL_SOURCE": "prebuilt"}, True, ("prebuilt", "build")),
        ("auto", 24 * GiB, {"VSOLAB_INSTALL_SOURCE": " Prebuilt "}, True, ("prebuilt", "build")),
        ("auto", 1 * GiB, {"VSOLAB_INSTALL_SOURCE": "build"}, True, ("build",)),
        ("auto", 1 * GiB, {"VSOLAB_INSTALL_SOURCE": "auto"}, True, ("prebuilt", "build")),
        ("build", 24 * GiB, {"VSOLAB_INSTALL_SOURCE": "prebuilt"}, True, ("build",)),  # the flag wins
        ("auto", 24 * GiB, {}, False, ("prebuilt",)),  # no Go: nothing to fall back to
        ("auto", 24 * GiB, {"VSOLAB_INSTALL_SOURCE": "prebuilt"}, False, ("prebuilt",)),
    ],
)
def test_choose_source(requested: str, mem: int | None, env: dict[str, str], have_go: bool, order: tuple[str, ...]) -> None:
    choice = _source.choose_source(requested, mem, env, have_go=have_go)
    assert choice.order == order
    assert choice.reason


def test_choose_source_says_why_it_took_prebuilt() -> None:
    assert "2.0 GiB" in _source.choose_source("auto", 2 * GiB, {}).reason


ANSWERED = _source.HostProbe(True, "dl.k8s.io HTTP 200, github.com HTTP 302")
SILENT = _source.HostProbe(False, "dl.k8s.io: [Errno -2] Name or service not known")


@pytest.mark.parametrize(
    ("mem", "env", "have_go", "hosts", "order", "says"),
    [
        (24 * GiB, {}, True, ANSWERED, ("prebuilt", "build"), "the release hosts answered: dl.k8s.io HTTP 200"),
        (2 * GiB, {}, True, ANSWERED, ("prebuilt", "build"), "answered"),
        (24 * GiB, {}, True, SILENT, ("build",), "did not answer (dl.k8s.io: [Errno -2]"),
        (2 * GiB, {}, True, SILENT, ("build",), "2.0 GiB of memory is less than"),
        (24 * GiB, {"VSOLAB_INSTALL_SOURCE": "build"}, True, ANSWERED, ("build",), "VSOLAB_INSTALL_SOURCE=build"),
        (24 * GiB, {"VSOLAB_INSTALL_SOURCE": "prebuilt"}, True, SILENT, ("prebuilt", "build"), "VSOLAB_INSTALL_SOURCE=prebuilt"),
        (24 * GiB, {}, False, SILENT, ("prebuilt",), "no Go toolchain"),
    ],
)
def test_auto_prefers_release_binaries_when_their_hosts_answer(
    mem: int, env: dict[str, str], have_go: bool, hosts: _source.HostProbe, order: tuple[str, ...], says: str
) -> None:
    choice = _source.choose_source("auto", mem, env, have_go=have_go, hosts=hosts)
    assert choice.order == order
    assert says in choice.reason


def test_probe_urls_name_one_checksum_per_release_host() -> None:
    env = {"VSOLAB_K8S_RELEASES": "http://m/k8s", "VSOLAB_ETCD_RELEASES": "http://m/etcd",
           "VSOLAB_HASHICORP_RELEASES": "http://m/hc", "GOPROXY": "http://m/goproxy,direct"}
    urls = _source.probe_urls([("etcd", "3.6.16"), ("kube", "1.36.3"), ("vso", "1.5.0")], "amd64", env)
    assert urls == [
        "http://m/etcd/v3.6.16/SHA256SUMS",
        "http://m/k8s/v1.36.3/bin/linux/amd64/kube-apiserver.sha256",
        "http://m/hc/vault-secrets-operator/1.5.0/vault-secrets-operator_1.5.0_SHA256SUMS",
    ]


def test_probe_of_a_file_mirror(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text("")
    assert _source.probe_release_hosts([(tmp_path / "SHA256SUMS").as_uri()]).answered
    probe = _source.probe_release_hosts([(tmp_path / "gone").as_uri()])
    assert not probe.answered and "gone is missing" in probe.detail


@pytest.mark.parametrize(("requested", "env"), [("download", {}), ("auto", {"VSOLAB_INSTALL_SOURCE": "binary"})])
def test_choose_source_refuses_unknown_sources(requested: str, env: dict[str, str]) -> None:
    with pytest.raises(ParameterError) as err:
        _source.choose_source(requested, 8 * GiB, env)
    assert err.value.checked.startswith("Checked") and len(err.value.fixes) == 3


def _fake_root(tmp_path: Path, meminfo_gib: int, cgroup: dict[str, str]) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text(f"MemTotal:       {meminfo_gib * 1024 * 1024} kB\nMemFree: 1 kB\n")
    for rel, text in cgroup.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ({}, 24 * GiB),
        ({"sys/fs/cgroup/memory.max": f"{2 * GiB}\n"}, 2 * GiB),  # Binder's limit, cgroup v2
        ({"sys/fs/cgroup/memory.max": "max\n"}, 24 * GiB),
        ({"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 24 * GiB),  # v1, unlimited
        ({"sys/fs/cgroup/memory/memory.limit_in_bytes": f"{GiB}\n"}, GiB),
        ({"proc/self/cgroup": "0::/user.slice/lab\n", "sys/fs/cgroup/user.slice/lab/memory.max": f"{3 * GiB}"}, 3 * GiB),
    ],
)
def test_memory_limit_reads_ram_and_cgroup(tmp_path: Path, cgroup: dict[str, str], expected: int) -> None:
    assert _source.memory_limit(_fake_root(tmp_path, 24, cgroup)) == expected


def test_memory_limit_unknown(tmp_path: Path) -> None:
    assert _source.memory_limit(tmp_path) is None


# -- checksums --------------------------------------------------------------------------------
def test_verify_sha256_accepts_the_right_digest(tmp_path: Path) -> None:
    f = tmp_path / "kube-apiserver"
    f.write_bytes(b"real binary")
    _checksums.verify_sha256(f, hashlib.sha256(b"real binary").hexdigest().upper())


def test_verify_sha256_refuses_a_wrong_digest(tmp_path: Path) -> None:
    f = tmp_path / "kube-apiserver"
    f.write_bytes(b"tampered binary")
    fake = hashlib.sha256(b"real binary").hexdigest()
    with pytest.raises(ChecksumMismatch) as err:
        _checksums.verify_sha256(f, fake, url="https://example.invalid/kube-apiserver", checksum_source="kube-apiserver.sha256")
    exc = err.value
    assert isinstance(exc, BuildError) and isinstance(exc, LabkitError)
    assert exc.checked.startswith("Checked") and "refused" in exc.checked
    assert len(exc.fixes) == 3 and any("--source build" in f for f in exc.fixes)
    assert fake in exc.detail and hashlib.sha256(b"tampered binary").hexdigest() in exc.detail


def test_parse_checksums() -> None:
    a, b = "a" * 64, "B" * 64
    sums = f"{a}  etcd-v3.6.16-linux-arm64.tar.gz\n{b} *etcd-v3.6.16-linux-amd64.tar.gz\n{'c' * 64}  ./other.zip\n"
    assert _checksums.parse_checksums(sums, "etcd-v3.6.16-linux-amd64.tar.gz", source="SHA256SUMS") == b.lower()
    assert _checksums.parse_checksums(sums, "other.zip", source="SHA256SUMS") == "c" * 64
    assert _checksums.parse_checksums(f"{a}\n", None, source="kube-apiserver.sha256") == a  # dl.k8s.io's .sha256 files
    assert _checksums.parse_checksums(f"{a}  kube-apiserver\n", None, source="x.sha256") == a
    with pytest.raises(BuildError, match="not listed"):
        _checksums.parse_checksums(sums, "etcd-v3.6.16-darwin-amd64.zip", source="SHA256SUMS")
    with pytest.raises(BuildError):
        _checksums.parse_checksums("<html>Not Found</html>", None, source="x.sha256")


def test_module_zip_hash_matches_go(tmp_path: Path) -> None:
    """Our h1: hash equals Go's own, for the VSO module zip Go downloaded and recorded in go.sum."""
    expected = _checksums.go_sum_hash(_products.VSO_MODULE, install.VSO_VERSION, install.GOMOD_DIR / "vso" / "go.sum")
    assert expected.startswith("h1:")
    cached = _build._gomodcache() / "cache/download" / _products.VSO_MODULE / "@v" / f"v{install.VSO_VERSION}.zip"
    if not cached.exists():
        pytest.skip(f"the Go module cache has no {cached.name} (run `labkit install --source build` once)")
    assert _checksums.module_zip_hash(cached) == expected
    ziphash = cached.with_suffix(".ziphash")
    if ziphash.exists():
        assert ziphash.read_text().strip() == expected


def test_module_zip_hash_changes_with_content(tmp_path: Path) -> None:
    def make(body: bytes) -> Path:
        p = tmp_path / f"m{len(body)}.zip"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("m@v1.0.0/b.txt", body)
            z.writestr("m@v1.0.0/a.txt", b"a")
        return p

    assert _checksums.module_zip_hash(make(b"one")) != _checksums.module_zip_hash(make(b"other"))


# -- URLs and versions ------------------------------------------------------------------------
def _gomod_version(product: str, module: str) -> str:
    text = (GOMOD / product / "go.mod").read_text()
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} v(\S+)", text, re.M)
    assert m, f"{module} not in labkit/install/_gomod/{product}/go.mod"
    return m.group(1)


def test_pins_agree_between_build_and_prebuilt() -> None:
    """Both sources give the same versions: the pins equal what the Go wrapper modules build."""
    assert install.PRODUCTS["etcd"].version == install.ETCD_VERSION == _gomod_version("etcd", "go.etcd.io/etcd/server/v3")
    assert install.PRODUCTS["kube"].version == install.KUBE_VERSION == _gomod_version("kube", "k8s.io/kubernetes")
    assert install.PRODUCTS["vso"].version == install.VSO_VERSION == _gomod_version("vso", _products.VSO_MODULE)


def test_tool_pins_agree_with_their_wrapper_modules_and_go_sum() -> None:
    """helm and kube-rbac-proxy build what labkit/install/_products.py pins, checked against a committed go.sum."""
    assert install.TOOLS["helm"].version == install.HELM_VERSION == _gomod_version("helm", "helm.sh/helm/v3")
    krp = install.TOOLS["kube-rbac-proxy"]
    assert krp.version == install.KUBE_RBAC_PROXY_VERSION == _gomod_version("kube-rbac-proxy", "github.com/brancz/kube-rbac-proxy")
    for name, module in (("helm", "helm.sh/helm/v3"), ("kube-rbac-proxy", "github.com/brancz/kube-rbac-proxy")):
        assert _checksums.go_sum_hash(module, install.TOOLS[name].version, GOMOD / name / "go.sum").startswith("h1:")
    assert install.TOOLS["helm"].extra == [f"charts/vault-secrets-operator-{install.VSO_VERSION}.tgz", "charts/index.yaml"]
    assert not set(install.TOOLS) & set(install.PRODUCTS)  # `labkit up` does not need them


def test_release_urls_for_the_pinned_versions() -> None:
    e, k, v = install.ETCD_VERSION, install.KUBE_VERSION, install.VSO_VERSION
    etcd = _prebuilt.release_artifacts("etcd", e, "amd64", {})
    assert [(a.url, a.checksum_url, a.checksum_name) for a in etcd] == [(
        f"https://github.com/etcd-io/etcd/releases/download/v{e}/etcd-v{e}-linux-amd64.tar.gz",
        f"https://github.com/etcd-io/etcd/releases/download/v{e}/SHA256SUMS",
        f"etcd-v{e}-linux-amd64.tar.gz",
    )]
    kube = _prebuilt.release_artifacts("kube", k, "amd64", {})
    assert [(a.url, a.checksum_url, a.checksum_name) for a in kube] == [
        (f"https://dl.k8s.io/release/v{k}/bin/linux/amd64/{b}", f"https://dl.k8s.io/release/v{k}/bin/linux/amd64/{b}.sha256", None)
        for b in ("kube-apiserver", "kube-controller-manager")
    ]
    vso = _prebuilt.release_artifacts("vso", v, "arm64", {})
    base = f"https://releases.hashicorp.com/vault-secrets-operator/{v}"
    assert [(a.url, a.checksum_url, a.checksum_name) for a in vso] == [
        (f"{base}/vault-secrets-operator_{v}_linux_arm64.zip", f"{base}/vault-secrets-operator_{v}_SHA256SUMS",
         f"vault-secrets-operator_{v}_linux_arm64.zip")
    ]
    # Every output of every product comes out of some artifact.
    for name, product in install.PRODUCTS.items():
        outputs = {o for a in _prebuilt.release_artifacts(name, product.version, "amd64", {}) for o in a.members}
        assert outputs == set(product.outputs)


def test_mirrors_and_goproxy() -> None:
    env = {"VSOLAB_K8S_RELEASES": "https://mirror.example/k8s/", "GOPROXY": "direct"}
    (a, _) = _prebuilt.release_artifacts("kube", "1.36.3", "amd64", env)
    assert a.url == "https://mirror.example/k8s/v1.36.3/bin/linux/amd64/kube-apiserver"
    assert _prebuilt.module_zip_url(_products.VSO_MODULE, "1.5.0", env) == (
        "https://proxy.golang.org/github.com/hashicorp/vault-secrets-operator/@v/v1.5.0.zip")
    env = {"GOPROXY": "https://goproxy.corp/,https://proxy.golang.org,direct"}
    assert _prebuilt.module_zip_url("github.com/BurntSushi/toml", "1.0.0", env) == (
        "https://goproxy.corp/github.com/!burnt!sushi/toml/@v/v1.0.0.zip")


def test_machine_arch() -> None:
    assert _prebuilt.machine_arch("x86_64") == "amd64"
    assert _prebuilt.machine_arch("aarch64") == "arm64"
    with pytest.raises(BuildError, match="only amd64 and arm64"):
        _prebuilt.machine_arch("riscv64")


# -- the cache, filled from a local file:// "release server" ---------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Lay out the pinned releases the way the real servers do, with fake binaries, and point labkit at them."""
    m = tmp_path / "mirror"
    e, k, v = install.ETCD_VERSION, install.KUBE_VERSION, install.VSO_VERSION
    files: dict[str, Path] = {}
    kdir = m / "k8s" / f"v{k}/bin/linux/amd64"
    kdir.mkdir(parents=True)
    for b in ("kube-apiserver", "kube-controller-manager"):
        (kdir / b).write_bytes(f"#!/bin/sh\necho {b} v{k}\n".encode())
        (kdir / f"{b}.sha256").write_text(_sha((kdir / b).read_bytes()))
        files[b] = kdir / b
    edir = m / "etcd" / f"v{e}"
    edir.mkdir(parents=True)
    tgz = edir / f"etcd-v{e}-linux-amd64.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name in ("etcd", "etcdctl"):
            data = f"#!/bin/sh\necho {name} {e}\n".encode()
            info = tarfile.TarInfo(f"etcd-v{e}-linux-amd64/{name}")
            info.size, info.mode = len(data), 0o755
            tf.addfile(info, io.BytesIO(data))
    (edir / "SHA256SUMS").write_text(f"{'0' * 64}  etcd-v{e}-darwin-arm64.zip\n{_sha(tgz.read_bytes())}  {tgz.name}\n")
    files["etcd"] = tgz
    vdir = m / "hashicorp" / "vault-secrets-operator" / v
    vdir.mkdir(parents=True)
    vzip = vdir / f"vault-secrets-operator_{v}_linux_amd64.zip"
    with zipfile.ZipFile(vzip, "w") as z:
        z.writestr("vault-secrets-operator", "#!/bin/sh\necho vso\n")
        z.writestr("LICENSE.txt", "MPL-2.0\n")
    (vdir / f"vault-secrets-operator_{v}_SHA256SUMS").write_text(f"{_sha(vzip.read_bytes())}  {vzip.name}\n")
    files["vso"] = vzip
    # VSO's module zip on a file:// GOPROXY, and a go.sum that records its hash.
    mdir = m / "goproxy" / _products.VSO_MODULE / "@v"
    mdir.mkdir(parents=True)
    mzip = mdir / f"v{v}.zip"
    prefix = f"{_products.VSO_MODULE}@v{v}/"
    with zipfile.ZipFile(mzip, "w") as z:
        z.writestr(prefix + "chart/crds/secrets.hashicorp.com_vaultauths.yaml", "kind: CustomResourceDefinition\n")
        z.writestr(prefix + "chart/crds/secrets.hashicorp.com_vaultstaticsecrets.yaml", "kind: CustomResourceDefinition\n")
        z.writestr(prefix + "config/rbac/role.yaml", "kind: ClusterRole\n")
        z.writestr(prefix + "main.go", "package main\n")
    gomod = tmp_path / "gomod"
    (gomod / "vso").mkdir(parents=True)
    (gomod / "vso" / "go.sum").write_text(
        f"{_products.VSO_MODULE} v{v} {_checksums.module_zip_hash(mzip)}\n{_products.VSO_MODULE} v{v}/go.mod h1:x=\n")
    files["module"] = mzip
    monkeypatch.setattr(_prebuilt, "GOMOD_DIR", gomod)
    monkeypatch.setattr(_prebuilt, "machine_arch", lambda machine=None: "amd64")
    for key, sub in (("VSOLAB_K8S_RELEASES", "k8s"), ("VSOLAB_ETCD_RELEASES", "etcd"), ("VSOLAB_HASHICORP_RELEASES", "hashicorp"),
                     ("GOPROXY", "goproxy")):
        monkeypatch.setenv(key, (m / sub).as_uri())
    return files


def test_cache_layout(offline_and_private_cache: Path) -> None:
    cache = offline_and_private_cache
    assert install.cache_root() == cache
    assert install.PRODUCTS["kube"].dir == cache / f"kube-{install.KUBE_VERSION}"
    assert install.PRODUCTS["vso"].paths() == {"vso-manager": cache / f"vso-{install.VSO_VERSION}" / "vso-manager"}
    assert not any(p.built() for p in install.PRODUCTS.values())


def test_prebuilt_fills_the_same_cache_as_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  offline_and_private_cache: Path) -> None:
    _mirror(tmp_path, monkeypatch)
    for name, product in install.PRODUCTS.items():
        paths = _prebuilt.fetch_prebuilt(product)
        assert product.built(), name
        assert product.dir == offline_and_private_cache / f"{name}-{product.version}"
        for p in paths.values():
            assert p.stat().st_mode & 0o777 == 0o755
        metrics = json.loads((product.dir / "build-metrics.json").read_text())
        assert metrics["source"] == "prebuilt" and metrics["version"] == product.version
        assert install.installed_source(product) == "prebuilt"
        assert not (product.dir / ".prebuilt").exists()
    kube = install.PRODUCTS["kube"].dir
    assert (kube / "kube-apiserver").read_text() == f"#!/bin/sh\necho kube-apiserver v{install.KUBE_VERSION}\n"
    assert (install.PRODUCTS["etcd"].dir / "etcd").read_text().startswith("#!/bin/sh\necho etcd ")
    assert not (install.PRODUCTS["etcd"].dir / "etcdctl").exists()  # only what the lab runs
    vso = install.PRODUCTS["vso"].dir
    assert sorted(p.name for p in (vso / "crds").iterdir()) == [
        "secrets.hashicorp.com_vaultauths.yaml", "secrets.hashicorp.com_vaultstaticsecrets.yaml"]
    assert (vso / "rbac" / "role.yaml").read_text() == "kind: ClusterRole\n"
    assert not (vso / "LICENSE.txt").exists()
    # install() now finds everything cached and downloads nothing.
    monkeypatch.setattr(_prebuilt, "_download", lambda *a, **k: pytest.fail("downloaded a cached product"))
    monkeypatch.setattr(_installer, "bao_binary", lambda: tmp_path / "bao")
    monkeypatch.setattr(_installer, "postgres_bindir", lambda: tmp_path / "pg")
    assert install.install(source="prebuilt")["vso-crds"] == vso / "crds"


def test_a_tampered_download_is_refused_and_leaves_no_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mirror(tmp_path, monkeypatch)
    files["kube-controller-manager"].write_bytes(b"#!/bin/sh\necho evil\n")
    kube = install.PRODUCTS["kube"]
    with pytest.raises(ChecksumMismatch, match="kube-controller-manager"):
        _prebuilt.fetch_prebuilt(kube)
    assert not kube.built()
    assert not (kube.dir / "kube-apiserver").exists()  # nothing half-installed
    assert not (kube.dir / ".prebuilt").exists()


def test_a_tampered_module_zip_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mirror(tmp_path, monkeypatch)
    with zipfile.ZipFile(files["module"], "a") as z:
        z.writestr(f"{_products.VSO_MODULE}@v{install.VSO_VERSION}/extra.go", "package evil\n")
    with pytest.raises(ChecksumMismatch, match=r"go\.sum"):
        _prebuilt.fetch_prebuilt(install.PRODUCTS["vso"])
    assert not install.PRODUCTS["vso"].built()


def _fake_build(calls: list[str]):
    def build(product: install.Product, *, force: bool = False) -> dict[str, Path]:
        calls.append(product.name)
        product.dir.mkdir(parents=True, exist_ok=True)
        for p in product.paths().values():
            p.write_text("built\n")
        for extra in product.extra:  # crds/ (a directory), rbac/role.yaml (a file)
            target = product.dir / extra
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.suffix:
                target.write_text("")
            else:
                target.mkdir(exist_ok=True)
        (product.dir / "build-metrics.json").write_text(json.dumps({"source": "build"}))
        return product.paths()

    return build


def test_auto_falls_back_to_build_when_prebuilt_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mirror(tmp_path, monkeypatch)
    files["kube-apiserver"].write_bytes(b"corrupted")
    calls: list[str] = []
    monkeypatch.setattr(_installer, "build", _fake_build(calls))
    choice = _source.choose_source("auto", 2 * GiB, {})
    assert install.install_product(install.PRODUCTS["kube"], choice) == "build"
    assert install.install_product(install.PRODUCTS["etcd"], choice) == "prebuilt"
    assert calls == ["kube"]
    assert install.installed_source(install.PRODUCTS["kube"]) == "build"


def test_prebuilt_asked_for_does_not_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mirror(tmp_path, monkeypatch)
    files["etcd"].write_bytes(b"corrupted")
    calls: list[str] = []
    monkeypatch.setattr(_installer, "build", _fake_build(calls))
    with pytest.raises(ChecksumMismatch):
        install.install_product(install.PRODUCTS["etcd"], _source.choose_source("prebuilt", 2 * GiB, {}))
    assert calls == []


def test_when_every_source_fails_the_error_names_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mirror(tmp_path, monkeypatch)
    files["etcd"].write_bytes(b"corrupted")

    def no_go(product: install.Product, *, force: bool = False) -> dict[str, Path]:
        raise MissingTool("Checked PATH for the Go toolchain: it is not there.", ["a", "b", "c"])

    monkeypatch.setattr(_installer, "build", no_go)
    with pytest.raises(BuildError) as err:
        install.install_product(install.PRODUCTS["etcd"], _source.choose_source("auto", 2 * GiB, {}))
    assert "prebuilt, then build" in err.value.checked
    assert "[prebuilt]" in err.value.detail and "[build]" in err.value.detail


def test_a_download_that_fails_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mirror(tmp_path, monkeypatch)
    monkeypatch.setenv("VSOLAB_ETCD_RELEASES", (tmp_path / "nowhere").as_uri())
    with pytest.raises(DownloadError) as err:
        _prebuilt.fetch_prebuilt(install.PRODUCTS["etcd"])
    assert "nowhere" in err.value.checked and len(err.value.fixes) == 3


# -- the CLI flag ------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["auto", "build", "prebuilt"])
def test_cli_passes_the_source(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(install, "install", lambda products=None, **kw: seen.update(kw) or {})
    assert cli.main(["install", "--source", source]) == 0
    assert seen == {"force": False, "source": source}
    assert cli.build_parser().parse_args(["install", "etcd"]).products == ["etcd"]


def test_cli_default_source_is_auto() -> None:
    assert cli.build_parser().parse_args(["install"]).source == "auto"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["install", "--source", "conda"])


RACER = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from labkit import install
from labkit.install import _installer

me, other, log = sys.argv[2], sys.argv[3], Path(sys.argv[4])
product = install.PRODUCTS["etcd"]

def fake_build(p, *, force=False):
    with log.open("a") as f:
        f.write(f"start {me}\n")
    # Give the other process every chance to build at the same time (it would, without the lock): go on once it
    # has started building too, or after a bounded wait.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and f"start {other}" not in log.read_text():
        time.sleep(0.05)
    p.dir.mkdir(parents=True, exist_ok=True)
    tmp = p.dir / ".tmp"
    tmp.mkdir()  # the shared output path: a second build in it at the same time fails here
    (tmp / "etcd").write_text(me)
    os.replace(tmp / "etcd", p.dir / "etcd")
    tmp.rmdir()
    (p.dir / "build-metrics.json").write_text(json.dumps({"source": "build"}))
    with log.open("a") as f:
        f.write(f"end {me}\n")
    return p.paths()

_installer.build = fake_build
(log.parent / f"ready-{me}").write_text("")
while not (log.parent / f"ready-{other}").exists():  # both processes start installing together
    time.sleep(0.02)
print(install.install_product(product, install.SourceChoice(("build",), "test")))
"""


def test_two_processes_installing_one_product_build_it_once(tmp_path: Path) -> None:
    """Two `labkit install`s at once on a fresh cache: one builds, the other waits on the product's lock and finds
    it built (without the lock both build into the same `.tmp` path)."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "VSOLAB_CACHE": str(cache)}
    log = tmp_path / "builds.log"
    log.write_text("")
    root = str(Path(__file__).resolve().parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, root, me, other, str(log)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for me, other in (("a", "b"), ("b", "a"))]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["build", "build"]  # the waiter reports the cached source
    lines = log.read_text().split()
    assert lines.count("start") == 1 and lines.count("end") == 1, log.read_text()
    assert (cache / f"etcd-{install.PRODUCTS['etcd'].version}" / "etcd").read_text() in ("a", "b")
    assert (cache / "locks" / f"etcd-{install.PRODUCTS['etcd'].version}" / "lock").exists()
