"""The kit as an administrator shares it with other Unix users (a hub's attendees, the density benchmark's): a
root-owned copy of this checkout and one venv with the kit installed, both readable by everyone, writable by root."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from test_unprivileged import PYTHON, _copy_repo


def readable_by_all(root: Path, *, dir_mode: int = 0o755) -> None:
    """Every directory under ``root`` gets ``dir_mode`` added, every file (not a symlink) read for all."""
    for d, _dirs, files in os.walk(root):
        os.chmod(d, os.stat(d).st_mode | dir_mode)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)


def copy_repo(dest: Path) -> None:
    """This checkout into ``dest``, root's and readable by all: the shared venv installs the kit from it."""
    _copy_repo(dest, 0, 0)
    readable_by_all(dest)


def venv(path: Path, repo: Path, extra: Sequence[str] = ()) -> float:
    """A venv from the OS's Python (root's Python often lives in root's 0700 home) with ``extra`` and the kit
    (editable, so `labkit stage N` and `run-notebooks` find the notebooks beside it), readable by all. Kept between
    runs: only the first one downloads from PyPI. Returns the seconds it took."""
    t0 = time.monotonic()
    if not (path / "bin" / "python").exists():
        made = subprocess.run([PYTHON, "-m", "venv", "--system-site-packages", str(path)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    pip = subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *extra, "-e", str(repo)],
                         capture_output=True, text=True, timeout=1800, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    readable_by_all(path)
    return time.monotonic() - t0
