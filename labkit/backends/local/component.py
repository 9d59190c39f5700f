"""A lab process of the local backend: how to start, reuse, repair and stop it (mirakuru, via labkit/_procs.py).

Each component lives in a module of its own (``etcd``, ``apiserver``, ``kcm``, ``postgres``, ``openbao``,
``nodeagent``, ``charts``); a component sees the lab through :class:`LabContext`, not the whole ``LocalLab``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import psutil

from ... import _procs
from ..._state import State
from ...errors import ComponentError
from ..contract import Health


class LabContext(Protocol):
    """What a component needs of its lab: the state directory, the ports, the binaries, the abort flag of ``up``."""

    state: State
    #: set when one of ``up``'s parallel start-up chains failed: the others stop waiting at once
    _abort: threading.Event

    @property
    def ports(self) -> dict[str, int]: ...

    @property
    def bin(self) -> dict[str, Path]: ...

    def pg_dsn(self, user: str = "root", password: str | None = None, dbname: str = "postgres") -> str: ...


class _Aborted(ComponentError):
    """Another component of the same ``up`` failed; this one stopped waiting (the other's error is reported)."""

    def __init__(self) -> None:
        super().__init__("Stopped starting a component because another one failed.", ["See the other error."])


class Component:
    """A lab process: how to start it and how to tell it is healthy."""

    name = ""
    timeout = 60.0
    #: other ports (names in ``state.json``) the process binds besides its own
    extra_ports: tuple[str, ...] = ()

    def __init__(self, lab: LabContext) -> None:
        self.lab = lab
        self.state = lab.state

    # subclasses override these ----------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def version(self) -> str:
        return ""

    def env(self) -> dict[str, str] | None:
        return None

    def user(self) -> str | None:
        return None

    def prepare(self) -> None:
        """Create config and data before the first start."""

    def after_start(self) -> None:
        """Work that needs the process up (e.g. unseal)."""

    def outdated(self, pid: int) -> bool:
        """The running process was started with settings this labkit no longer uses (so it is replaced)."""
        return False

    # common -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.lab.ports[self.name]

    @property
    def tag(self) -> str:
        return f"{self.state.lab_id}:{self.name}"

    @property
    def pidfile(self) -> Path:
        return self.state.path("run", f"{self.name}.pid")

    @property
    def log(self) -> Path:
        return self.state.path("logs", f"{self.name}.log")

    def pid(self) -> int | None:
        return _procs.read_pid(self.pidfile, self.tag)

    def check(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:  # any failure means "not healthy yet"
            return False

    def status(self) -> Health:
        pid = self.pid()
        ok = pid is not None and self.check()
        version = ""
        if ok:
            try:
                version = self.version()
            except Exception:
                version = "?"
        return Health(self.name, pid, self.address(), ok, version, "" if pid else "not running")

    def ensure(self) -> str:
        """Reuse, repair or start this component; return what was done."""
        pid = self.pid()
        action = "started"
        if pid and self.outdated(pid):
            _procs.stop_pid(pid)
            pid, action = None, "restarted (its settings were outdated)"
        if pid and self.check():
            self.after_start()
            return "reused"
        if pid:
            # Running but unhealthy: give it a moment (it may be starting), then replace it.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not self.check():
                time.sleep(0.2)
            if self.check():
                self.after_start()
                return "reused"
            _procs.stop_pid(pid)
            action = "restarted (it was unhealthy)"
        elif self.pidfile.exists() and action == "started":
            action = "restarted (it had died)"
        self._kill_orphans()
        self.pidfile.unlink(missing_ok=True)
        self.state.check_port_free(self.name, self.port, f"See {self.log}.")
        for extra in self.extra_ports:
            self.state.check_port_free(extra, self.lab.ports[extra], f"See {self.log}.")
        self.prepare()
        command = self.command()
        abort = self.lab._abort

        def check() -> bool:
            if abort.is_set():
                raise _Aborted
            return self.check()

        daemon = _procs.Daemon(
            command, check=check, tag=self.tag, log=self.log, env=self.env(), timeout=self.timeout,
            user=self.user(), cwd=str(self.state.root) if not self.user() else "/",
        )
        try:
            _procs.start(daemon, self.pidfile)
        except _Aborted:
            daemon.kill()
            raise
        except _procs.ProcessExitedWithError as exc:
            raise ComponentError(
                f"Started {self.name} and checked that it stays up: it exited with code {exc.exit_code}.",
                [f"Read its log: {self.log}", "Run `labkit doctor` to check prerequisites.",
                 "Run `labkit down --purge` then `labkit up` if its data is damaged (data is lost)."],
                detail=_procs.log_tail(self.log),
            ) from None
        except _procs.TimeoutExpired:
            raise ComponentError(
                f"Started {self.name} and waited {self.timeout:.0f}s for its health check: it never passed.",
                [f"Read its log: {self.log}", "Check free memory (`free -m`) and CPU load.",
                 "Run `labkit up` again; healthy parts are reused."],
                detail=_procs.log_tail(self.log),
            ) from None
        except OSError as exc:  # the binary is missing, not executable, or built for another machine
            raise ComponentError(
                f"Started {self.name} from {command[0]}: the program could not be run ({exc.strerror or exc}).",
                ["Reinstall the lab's binaries: `labkit install --force`.",
                 "Check that VSOLAB_CACHE points at a complete cache built for this machine (`labkit doctor`).",
                 f"Check the file is a program for this machine: `file {command[0]}`."],
            ) from None
        self.after_start()
        return action

    def _kill_orphans(self) -> None:
        for proc in _procs.tagged(self.tag):
            try:
                mine = _procs.tag_of(proc) == self.tag
            except psutil.Error:  # it exited meanwhile
                continue
            if mine:
                _procs.stop_pid(proc.pid, grace=3)

    def stop(self) -> bool:
        pid = self.pid()
        if pid:
            _procs.stop_pid(pid)
        self._kill_orphans()
        self.pidfile.unlink(missing_ok=True)
        return pid is not None
