"""Choosing where ``labkit install`` gets the Go binaries: ``auto``, ``build`` or ``prebuilt``.

``auto`` asks the release hosts first (:func:`probe_release_hosts`, a HEAD request each with a short timeout): when
they answer it downloads the release archives and builds only a product whose download or checksum fails; when they
do not answer (a machine without internet, as CI here) it builds from the Go module proxy. :func:`choose_source` is
a pure function of memory, environment, Go and the probe; :func:`current_choice` asks this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ParameterError
from . import _prebuilt
from ._prebuilt import release_artifacts
from ._products import PRODUCTS, Product

#: How long ``auto`` waits for each release host to answer before it builds instead.
PROBE_TIMEOUT = 3.0

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


def current_choice(requested: str = "auto", products: list[Product] | None = None) -> SourceChoice:
    """:func:`choose_source` for this machine: its memory, environment and PATH, and (``auto`` only, with Go to
    build with and ``products`` to install) whether the release hosts of ``products`` answer."""
    have_go = shutil.which("go") is not None
    hosts = None
    wanted = [(p.name, p.version) for p in products or [] if p.name in PRODUCTS]
    if (requested or "auto").strip().lower() == "auto" and have_go and wanted and not auto_preference(os.environ):
        with contextlib.suppress(BuildError):  # an architecture without release binaries: build
            hosts = probe_release_hosts(probe_urls(wanted, _prebuilt.machine_arch(), os.environ))
    return choose_source(requested, memory_limit(), os.environ, have_go=have_go, hosts=hosts)
