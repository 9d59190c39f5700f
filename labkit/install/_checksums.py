"""Checking downloads: SHA-256 digests against the published checksum files, and Go module zips against go.sum."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

from ..errors import BuildError, ChecksumMismatch

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


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
            "The go.sum and the pinned version disagree: check VSO_VERSION in labkit/install/_products.py.",
            f"Regenerate go.sum: `cd {go_sum.parent} && go mod tidy`.",
            "Or build from source instead: `labkit install --source build`.",
        ],
    )
