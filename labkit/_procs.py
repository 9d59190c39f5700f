"""Detached lab processes: start with a readiness check, find, stop.

Lab processes must outlive the shell or notebook kernel that started them, so a
:class:`Daemon` is a mirakuru :class:`~mirakuru.base.Executor` whose process is
tagged with labkit's own variable ``VSOLAB_TAG`` (the lab id and the component)
and recorded in a pid file. Another process finds it again by pid file and tag,
which is how ``status`` and ``down`` work from a fresh CLI.

Why not mirakuru's own ``mirakuru_uuid``: mirakuru registers an ``atexit`` handler
in every process that imports it (each kernel, CLI run and pytest process), which
SIGKILLs every process whose ``mirakuru_uuid`` *contains* the exiting process's pid
as a substring. A tag with digits in it (a lab id, a pod UID, a prefix) would match
some pid sooner or later. So a lab process's ``mirakuru_uuid`` is digit-free
(:func:`mirakuru_mark`): no pid is a substring of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from mirakuru import Executor
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

TAG_ENV = "VSOLAB_TAG"
MIRAKURU_ENV = "mirakuru_uuid"  # mirakuru's mark; kept digit-free for lab processes
_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def mirakuru_mark(tag: str) -> str:
    """A digit-free, unique value for ``mirakuru_uuid``: no pid can be a substring of it."""
    mark = f"vsolab-{tag}-{uuid.uuid4().hex}".translate(_NO_DIGITS)
    assert not any(ch.isdigit() for ch in mark)
    return mark


def tag_of(proc: psutil.Process) -> str:
    """The lab tag a process carries ('' for none)."""
    return proc.environ().get(TAG_ENV, "")


class Daemon(Executor):
    """A lab process started detached, considered up when ``check()`` is true."""

    def __init__(
        self,
        command: list[str],
        *,
        check: Callable[[], bool],
        tag: str,
        log: Path,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        user: str | None = None,
        cwd: str | None = None,
    ) -> None:
        self._check = check
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(log, "a")  # noqa: SIM115 - handed to the child
        popen: dict[str, Any] = {}
        if user:
            popen.update(user=user, group=user, extra_groups=[])
        super().__init__(
            command,
            timeout=timeout,
            sleep=0.1,
            envvars=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            popen_kwargs=popen,
            cwd=cwd,
        )
        self.tag = tag
        # mirakuru also uses _uuid to find and kill this executor's leftovers: keep it unique, and digit-free.
        self._uuid = mirakuru_mark(tag)

    @property
    def envvars(self) -> dict[str, str]:  # mirakuru builds the child env from this
        env = dict(self._envvars) if self._envvars else dict(os.environ)
        env[TAG_ENV] = self.tag
        env[MIRAKURU_ENV] = self._uuid
        return env

    def pre_start_check(self) -> bool:
        return self._check()

    def after_start_check(self) -> bool:
        return self._check()


def start(daemon: Daemon, pidfile: Path) -> int | None:
    """Start ``daemon`` and wait for it; return its pid, or None when it already ran.

    Raises mirakuru's ``ProcessExitedWithError`` or ``TimeoutExpired``; callers turn
    them into a :class:`~labkit.errors.ComponentError` with the log's tail.
    """
    try:
        daemon.start()
    except AlreadyRunning:
        return None
    finally:
        daemon._log_fh.close()
    assert daemon.process is not None
    pidfile.write_text(str(daemon.process.pid))
    # Forget the child: it belongs to the lab now, not to this Python process.
    daemon.process = None
    return int(pidfile.read_text())


def read_pid(pidfile: Path, tag: str) -> int | None:
    """Return the live pid recorded in ``pidfile`` if that process carries ``tag``."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            # It died (a crash, a kill -9). If this process started it, collect it, or it stays a zombie.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return None
        if tag_of(proc) != tag:
            return None
    except (psutil.Error, OSError):
        return None
    return pid


def tagged(prefix: str) -> list[psutil.Process]:
    """All live processes whose tag starts with ``prefix`` (a lab id)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if tag_of(proc).startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it only waits for its parent to collect it).

    A zombie *leader* is not enough: when a multi-threaded process is killed, its main thread turns zombie while the
    other threads are still exiting, and until the last one has, the process's files, listening sockets included,
    stay open (``/proc/<pid>/task`` still lists them)."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:  # collected meanwhile, or no /proc
        return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """Stop a process group led by ``pid``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, grace):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)  # SIGKILL is delivered asynchronously: reap below only once it is dead
    _reap(pid)


def _reap(pid: int, seconds: float = 5.0) -> None:
    """Collect ``pid`` if it is our child (in tests, or a notebook kernel that started the lab); else init does.

    A multi-threaded program (kube-apiserver) shows as a zombie as soon as its main thread exits, while
    its other threads still run; waitpid then has nothing to collect yet, so try again for a moment.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except OSError:  # ChildProcessError: not our child, or already collected
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def rss(pid: int) -> int:
    """Resident memory in bytes of ``pid`` and its children."""
    try:
        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


__all__ = [
    "MIRAKURU_ENV", "TAG_ENV", "Daemon", "ProcessExitedWithError", "TimeoutExpired", "log_tail", "mirakuru_mark",
    "read_pid", "rss", "start", "stop_pid", "tag_of", "tagged",
]
