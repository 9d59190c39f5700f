"""The per-user lab state directory: paths, chosen ports, credentials.

Layout (all under one directory, mode 0700; key and credential files 0600)::

    state.json      ports, lab id, settings such as the VSO cache model, what was initialised
    lock            flock'ed by the labkit command changing the lab (labkit/_lock.py)
    secrets.json    OpenBao unseal key and root token, PostgreSQL password
    pki/            CA, serving and client certificates, service-account keys
    kube/           kubeconfigs (admin, VSO)
    data/           etcd, OpenBao and (when not root) PostgreSQL data
    logs/           one log file per component and per pod
    run/            pid files
    pods/           per-pod working directories of the node agent
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import port_for

from . import _lock
from .errors import PortTaken, StateError, UntrustedPath

DEFAULT_STATE = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "vsolab" / "default"


_LOCK = threading.RLock()  # `up` starts components in parallel; read-modify-write of the JSON files is serialised
#: ports chosen by this process for any lab: two labs made side by side never get the same one
_HANDED_OUT: set[int] = set()
#: what a lab state directory holds; an existing directory with none of these is not a lab's
LAB_ENTRIES = ("state.json", "secrets.json", "pki", "kube", "run", "lock")


def _who(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _untrusted(path: Path, why: str, *, what: str) -> UntrustedPath:
    me = _who(os.geteuid())
    return UntrustedPath(
        f"Checked that {what} {path} could only have been made by {me}: {why}, so another user could have "
        "planted or changed it (its keys, passwords or data), and the lab refuses to use it.",
        [f"Use a state directory only you own: VSOLAB_STATE=$HOME/vsolab-state (or --state), created by {me}.",
         f"If you made {path} yourself, check its content, then fix owner and mode: "
         f"`chown -R {me} {path}` and `chmod go-w {path}`.",
         "Start afresh elsewhere: a new VSOLAB_STATE directory gets its own lab."],
    )


def state_dir_from_env() -> Path:
    """Return the state directory chosen by ``VSOLAB_STATE`` or the default."""
    return Path(os.environ.get("VSOLAB_STATE", str(DEFAULT_STATE))).expanduser().absolute()


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port``, and a server can bind it the way servers do (with SO_REUSEADDR).

    ``port_for.is_available`` binds without SO_REUSEADDR, so it calls a port taken for about a minute
    after a server stopped (connections linger in TIME_WAIT); ``down`` then ``up`` must work at once.
    """
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only the owner can read (a directory it creates is private too)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class State:
    """One lab's state directory."""

    PORT_NAMES = (
        "etcd", "etcd_peer", "apiserver", "kcm", "openbao", "openbao_cluster", "postgres", "agent",
        "kubelet",
        # the Helm chart repository, and the Helm-installed operator pod's probe, metrics and kube-rbac-proxy ports
        "charts", "operator_probe", "operator_metrics", "operator_https",
    )

    def __init__(self, root: Path | str | None = None) -> None:
        #: the path as given; ``root`` is that path resolved, so one directory is one lab whatever the path
        self.given = Path(root).expanduser().absolute() if root else state_dir_from_env()
        self.root = self.given.resolve()

    # -- layout -----------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def lab_id(self) -> str:
        """A short id, letters only, unique to this state directory.

        Letters only, because process tags are matched by substring against pids.
        """
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return "".join(chr(ord("a") + int(c, 16)) for c in digest)

    def ensure(self) -> None:
        """Create the directory tree with private permissions, or explain why not."""
        self.check_trusted()
        self._check_lab_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for sub in ("pki", "kube", "data", "logs", "run", "pods"):
                d = self.root / sub
                d.mkdir(exist_ok=True)
                os.chmod(d, 0o700)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unwritable(self, exc: OSError) -> StateError:
        return StateError(
            f"Checked that the lab state directory {self.root} can be created and written: it cannot ({exc.strerror}).",
            [
                "Point VSOLAB_STATE (or --state) at a directory you own, e.g. VSOLAB_STATE=$HOME/vsolab-state.",
                f"Fix the ownership or mode of {self.root} (it must be writable by {pwd.getpwuid(os.getuid()).pw_name}).",
                "Free disk space if the disk is full (df -h).",
            ],
        )

    def _check_lab_dir(self) -> None:
        """An existing directory must be a lab's (or empty): the lab makes it private and purge deletes it."""
        if self.root.is_dir() and not any((self.root / e).exists() for e in LAB_ENTRIES) and any(self.root.iterdir()):
            raise StateError(
                f"Checked that {self.root} is a lab state directory or an empty one: it holds other files, and the "
                "lab would make it private (mode 0700) and `labkit down --purge` would delete it.",
                ["Point VSOLAB_STATE (or --state) at a new or empty directory, e.g. VSOLAB_STATE=$HOME/vsolab-state.",
                 f"Check you meant {self.given} (`ls -la {self.root}`).",
                 "Move the other files out of it first."],
            )

    # -- JSON documents -----------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any]:
        p = self.root / name
        if not p.exists():
            return {}
        try:
            text = p.read_text()
            data = json.loads(text) if text.strip() else None
            kind = {list: "an array", type(None): "null", str: "a string", bool: "a boolean"}.get(type(data), "a number")
            why = "it is empty" if not text.strip() else f"it holds {kind}, not a JSON object"
        except OSError as exc:
            data, why = None, f"it cannot be read ({exc.strerror})"
        except ValueError as exc:
            data, why = None, f"it is not valid JSON ({exc})"
        if isinstance(data, dict):
            return data
        if name == "state.json":
            fixes = [f"Move it aside and run `labkit up`: `mv {p} {p}.damaged`; the lab chooses new ports and keeps "
                     "its Vault and PostgreSQL data.",
                     "Or run `labkit down --purge` to start from a clean state (Vault data and leases are lost).",
                     f"Or restore {p} from a backup."]
        else:
            fixes = [f"Restore {p} from a backup: it holds Vault's unseal key and root token and PostgreSQL's password.",
                     "Or run `labkit down --purge` to start from a clean state (Vault data and leases are lost).",
                     "Or use another state directory with VSOLAB_STATE."]
        raise StateError(f"Checked the lab's record {p}: {why}.", fixes)

    def read(self) -> dict[str, Any]:
        return self._read("state.json")

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Hold the lab's cross-process lock (re-entrant within this process); see labkit/_lock.py."""
        self.check_trusted()
        self._check_lab_dir()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise self._unwritable(exc) from exc
        with _lock.locked(self.root, what):
            yield

    def update(self, **values: Any) -> dict[str, Any]:
        with _LOCK, self.lock("update state.json"):
            return self._update(**values)

    def _update(self, **values: Any) -> dict[str, Any]:
        data = self.read()
        data.update(values)
        _write_private(self.root / "state.json", json.dumps(data, indent=2, sort_keys=True))
        return data

    def secrets(self) -> dict[str, Any]:
        return self._read("secrets.json")

    def update_secrets(self, **values: Any) -> dict[str, Any]:
        with _LOCK, self.lock("update secrets.json"):
            return self._update_secrets(**values)

    def _update_secrets(self, **values: Any) -> dict[str, Any]:
        data = self.secrets()
        data.update(values)
        _write_private(self.root / "secrets.json", json.dumps(data, indent=2, sort_keys=True))
        return data

    def write_private(self, rel: str, text: str) -> Path:
        p = self.root / rel
        _write_private(p, text)
        return p

    # -- ports ------------------------------------------------------------------------------------
    def recorded_ports(self) -> dict[str, int]:
        """The ports ``state.json`` records for the names in ``PORT_NAMES`` (read-only; none before the first ``up``)."""
        ports = self.read().get("ports", {})
        if not isinstance(ports, dict):
            return {}
        return {k: v for k, v in ports.items() if isinstance(v, int) and k in self.PORT_NAMES}

    def ports(self) -> dict[str, int]:
        """Return the lab's ports, choosing free ones the first time."""
        if all(n in (recorded := self.recorded_ports()) for n in self.PORT_NAMES):
            return recorded
        with _LOCK, self.lock("choose ports"):
            return self._choose_ports()

    def _choose_ports(self) -> dict[str, int]:
        ports = self.recorded_ports()
        missing = [n for n in self.PORT_NAMES if n not in ports]
        if missing:
            # not the ports this lab has, nor any this process handed to another lab (both may be free right now:
            # a lab not yet started listens on nothing, and port_for would offer its ports again)
            taken = set(ports.values()) | _HANDED_OUT
            for name in missing:
                while True:
                    port = port_for.select_random()
                    if port not in taken:
                        break
                ports[name] = port
                taken.add(port)
            _HANDED_OUT.update(ports.values())
            self.update(ports=ports)
        return ports

    def check_port_free(self, name: str, port: int, owner_hint: str) -> None:
        """Raise :class:`PortTaken` when ``port`` is bound by someone other than the lab (the lab's own stopped
        processes have released theirs: :func:`labkit._procs._gone` waits for every thread)."""
        if port_free(port):
            return
        raise PortTaken(
            f"Checked that port {port} on 127.0.0.1 (for {name}) is free: another process is listening on it.",
            [
                f"Find and stop that process: `ss -ltnp 'sport = :{port}'`.",
                "Run `labkit down --purge` to let the lab choose new ports (the lab's data is reset).",
                f"Or edit the port of {name!r} in {self.root / 'state.json'} to a free port. {owner_hint}",
            ],
        )

    # -- clean-up ---------------------------------------------------------------------------------
    def purge(self) -> None:
        """Delete the state directory and PostgreSQL's data (a symlink is removed, never followed)."""
        for p in (self.root, self.pg_data_dir()):
            if p.is_symlink():
                p.unlink()
            elif p.exists():
                shutil.rmtree(p)

    def pg_root(self) -> Path:
        """The root-owned directory holding root-run labs' PostgreSQL data (``VSOLAB_PG_ROOT``)."""
        return Path(os.environ.get("VSOLAB_PG_ROOT", "/var/lib/vsolab-pg")).absolute()

    def pg_data_dir(self) -> Path:
        """PostgreSQL's data directory.

        PostgreSQL refuses to run as root, so when the lab runs as root the server runs as an
        unprivileged user, which cannot enter the 0700 state directory (nor, often, its parents).
        Its data then lives in ``/var/lib/vsolab-pg/<lab id>`` (override: ``VSOLAB_PG_ROOT``): the parent is
        root's, mode 0711, so no other user can create, replace or move anything in it, and the data directory
        is the PostgreSQL user's, mode 0700. ``down --purge`` removes it with the rest.
        """
        if os.getuid() == 0:
            return self.pg_root() / self.lab_id
        return self.root / "data" / "postgres"

    # -- trust --------------------------------------------------------------------------------------
    def check_trusted(self) -> None:
        """Refuse a state directory, ``pki/`` or credential file another user made or can change.

        A symlink on the way to the state directory must be this user's or root's (as the kernel's
        ``protected_symlinks`` demands in sticky directories), so no one else can redirect the lab.
        """
        me = os.geteuid()
        for p in [*reversed(self.given.parents), self.given]:
            try:
                st = os.lstat(p)
            except OSError:
                break
            if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
                raise _untrusted(p, f"it is a symlink owned by {_who(st.st_uid)}", what="the path to the lab state")
        if self.root.exists() and not self.root.is_dir():
            return  # ensure() explains a file where the directory should be
        self._check_owned(self.root, "the lab state directory", directory=True)
        pki = self.root / "pki"
        if self._check_owned(pki, "the lab's certificate directory", directory=True):
            for entry in pki.iterdir():
                self._check_owned(entry, "the lab's key or certificate", directory=False)
        for name in ("secrets.json", "state.json"):
            self._check_owned(self.root / name, "the lab's record", directory=False)

    @staticmethod
    def _check_owned(path: Path, what: str, *, directory: bool) -> bool:
        """False when ``path`` does not exist; raise :class:`UntrustedPath` unless it is ours and not writable by others."""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # ensure() explains a file where a directory should be
            return False
        if stat.S_ISLNK(st.st_mode):
            why = "it is a symlink"
        elif directory != stat.S_ISDIR(st.st_mode):
            why = "it is not a directory" if directory else "it is not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"it is owned by {_who(st.st_uid)}"
        elif st.st_mode & 0o022:
            why = f"its mode {stat.S_IMODE(st.st_mode):04o} lets others write to it"
        else:
            return True
        raise _untrusted(path, why, what=what)
