"""A release mirror over loopback HTTP, laid out as dl.k8s.io, etcd's GitHub releases and releases.hashicorp.com, made
from the binaries this machine built (the real cache, read only): used by tests/test_install_mirror.py and
benchmarks/bench_first_notebook.py."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

from labkit import install
from labkit.install import _checksums, _prebuilt

REAL = install.cache_root()
E, K, V = install.ETCD_VERSION, install.KUBE_VERSION, install.VSO_VERSION


def gomodcache() -> Path:
    out = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True) if shutil.which("go") else None
    return Path(out.stdout.strip()) if out and out.returncode == 0 else Path.home() / "go" / "pkg" / "mod"


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_mirror(root: Path, arch: str) -> dict[str, Path]:
    """The three release sites and a module proxy under ``root``; returns the served files by short name."""
    files: dict[str, Path] = {}
    kube_dir = root / "k8s" / "release" / f"v{K}" / "bin" / "linux" / arch
    for b in _prebuilt.KUBE_BINARIES:
        _link(REAL / f"kube-{K}" / b, kube_dir / b)
        (kube_dir / f"{b}.sha256").write_text(_checksums.sha256_file(kube_dir / b))  # dl.k8s.io: the digest, no newline
        files[b] = kube_dir / b
    # etcd: etcd-v<E>-linux-<arch>.tar.gz holding etcd-v<E>-linux-<arch>/{etcd,etcdctl,etcdutl,README.md}
    etcd_dir = root / "etcd" / f"v{E}"
    etcd_dir.mkdir(parents=True)
    top = f"etcd-v{E}-linux-{arch}"
    tgz = etcd_dir / f"{top}.tar.gz"
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tf:
        tf.add(REAL / f"etcd-{E}" / "etcd", f"{top}/etcd")
        readme = b"# etcd\n"
        info = tarfile.TarInfo(f"{top}/README.md")
        info.size = len(readme)
        tf.addfile(info, io.BytesIO(readme))
    (etcd_dir / "SHA256SUMS").write_text(
        f"{'0' * 64}  etcd-v{E}-darwin-arm64.zip\n{_checksums.sha256_file(tgz)}  {tgz.name}\n{'1' * 64}  etcd-v{E}-windows-amd64.zip\n")
    files["etcd"] = tgz
    # releases.hashicorp.com: the zip holds the binary (named after the product) and its licence
    hc = root / "hashicorp" / "vault-secrets-operator" / V
    hc.mkdir(parents=True)
    vzip = hc / f"vault-secrets-operator_{V}_linux_{arch}.zip"
    with zipfile.ZipFile(vzip, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.write(REAL / f"vso-{V}" / "vso-manager", "vault-secrets-operator")
        z.writestr("LICENSE.txt", "Business Source License 1.1\n")
    (hc / f"vault-secrets-operator_{V}_SHA256SUMS").write_text(
        f"{_checksums.sha256_file(vzip)}  {vzip.name}\n{'2' * 64}  vault-secrets-operator_{V}_linux_arm64.zip\n")
    files["vso"] = vzip
    # the Go module proxy: the module zip exactly as proxy.golang.org serves it (from this machine's module cache)
    at = root / "goproxy" / "github.com" / "hashicorp" / "vault-secrets-operator" / "@v"
    for ext in ("zip", "mod", "info"):
        _link(gomodcache() / "cache" / "download" / "github.com" / "hashicorp" / "vault-secrets-operator" / "@v" / f"v{V}.{ext}",
              at / f"v{V}.{ext}")
    return files


class Mirror(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, bytes | None] = {}  # URL path -> other content, or None: 404
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.SimpleHTTPRequestHandler):
    server: Mirror

    def send_head(self):
        self.server.requests.append((self.command, self.path))
        if self.path in self.server.overrides:
            body = self.server.overrides[self.path]
            if body is None:
                self.send_error(404, "File not found")
                return None
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)
        return super().send_head()

    def log_message(self, *_a: object) -> None:
        pass


def mirror_env(server: Mirror) -> dict[str, str]:
    """The variables that point labkit install at ``server``; a build falls back to this machine's module cache."""
    return {"VSOLAB_K8S_RELEASES": f"{server.url}/k8s/release", "VSOLAB_ETCD_RELEASES": f"{server.url}/etcd",
            "VSOLAB_HASHICORP_RELEASES": f"{server.url}/hashicorp",
            "GOPROXY": f"{server.url}/goproxy,{(gomodcache() / 'cache' / 'download').as_uri()}", "GOFLAGS": "-mod=mod",
            "GONOSUMDB": "*", "GOSUMDB": "off"}


def serve(root: Path) -> tuple[Mirror, dict[str, Path]]:
    """A mirror of this machine's built binaries under ``root``, served from a daemon thread, and its files."""
    files = build_mirror(root, _prebuilt.machine_arch())
    server = Mirror(root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, files
