"""One lab, one writer at a time: a cross-process lock on a file inside the state directory.

``up``, ``down``, ``stage`` and every read-modify-write of ``state.json`` / ``secrets.json`` hold it. It is
``fcntl.flock`` on ``<state>/lock``, so it is released by the kernel when its holder dies (a killed ``up``
never leaves the lab locked). Within one process it is re-entrant, across threads too: ``up`` starts components
in parallel threads that update the state, and a notebook kernel calls ``up`` and the stage functions in-process.
Threads of one process are serialised where it matters by the state's own thread lock.

A second process waits (``VSOLAB_LOCK_TIMEOUT`` seconds, default 600: a cold ``up`` takes a minute or two) and
then raises :class:`~labkit.errors.LabBusy` naming the pid and the command that holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import LabBusy

_guard = threading.Lock()
#: lock file path → [fd, depth] for the locks this process holds
_held: dict[str, list[int]] = {}


def timeout() -> float:
    try:
        return float(os.environ.get("VSOLAB_LOCK_TIMEOUT", "600"))
    except ValueError:
        return 600.0


def holder(path: Path) -> str:
    """What the lock file says about its holder: ``"<pid> <command>"``, or "" when unknown."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _try(key: str, path: Path, fd: int | None, what: str) -> tuple[bool, int | None]:
    """One attempt under ``_guard``: (acquired, fd still to use)."""
    if key in _held:
        _held[key][1] += 1
        if fd is not None:
            os.close(fd)
        return True, None
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False, fd
    # The holder before us may have removed the file (``down --purge``): then lock the new one instead.
    try:
        same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return False, None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
    _held[key] = [fd, 1]
    return True, None


@contextlib.contextmanager
def locked(root: Path, what: str, *, wait: float | None = None, subject: str | None = None) -> Iterator[None]:
    """Hold the lock of ``root`` (a lab's state directory) for ``what`` (e.g. ``"labkit up"``); ``subject`` says
    what the lock guards in the error when the wait runs out (default: the lab in ``root``)."""
    path = root / "lock"
    key = str(path)
    limit = timeout() if wait is None else wait
    deadline = time.monotonic() + limit
    fd: int | None = None
    while True:
        try:
            with _guard:
                try:
                    got, fd = _try(key, path, fd, what)
                except FileNotFoundError:  # the state directory went away meanwhile (purged): recreate it
                    root.mkdir(mode=0o700, parents=True, exist_ok=True)
                    got, fd = False, None
            if got:
                break
            if time.monotonic() <= deadline:
                time.sleep(0.1)
                continue
        except BaseException:  # interrupted while waiting (a notebook's interrupt button): hold nothing
            if fd is not None:
                os.close(fd)
            raise
        if fd is not None:
            os.close(fd)
        who = holder(path) or "an unknown process"
        pid = who.split()[0] if who.split() else "?"
        raise LabBusy(
            f"Checked that {subject or f'no other labkit command is changing the lab in {root}'} (lock file {path}): "
            f"process {who} has held it for more than {limit:.0f}s.",
            [f"Wait for that command to finish, then run yours again (`ps -o pid,etime,args -p {pid}`).",
             f"If it hangs, stop it: `kill {pid}` (the lock is released when it exits).",
             "Set VSOLAB_LOCK_TIMEOUT (seconds) to wait longer."],
        )
    try:
        yield
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])


def held(root: Path) -> bool:
    """This process holds the lock of ``root``."""
    with _guard:
        return str(root / "lock") in _held
