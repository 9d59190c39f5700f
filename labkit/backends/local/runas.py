"""Who runs what when root runs the lab, and where pods keep their files.

PostgreSQL refuses to run as root, and pods must not run as root: when the lab runs as root, PostgreSQL
runs as ``VSOLAB_PG_USER``, ``postgres`` or ``nobody``, and the node agent runs pod processes as
``VSOLAB_POD_USER`` or ``nobody`` (never as PostgreSQL's user, which owns the database's files). No user is
created at run time. When the lab runs as a normal user, everything runs as that user, as before.

A pod process cannot enter the 0700 state directory, so under root its files live in
``/var/lib/vsolab/pods/<lab id>`` (override: ``VSOLAB_POD_ROOT``): a path whose every directory is owned by
root and writable by nobody else, so no other user can plant a directory or a symlink there. Per pod::

    <ns>_<pod>/           root, 0711
        home/             the pod user, 0700: HOME and working directory
        volumes/<name>/   root:<pod group>, 0750; files 0640: Secret and ConfigMap volumes, read-only to the pod

The pod's log file is opened by the agent (root) in the state directory and handed to the process, so the
pod never needs to read the state directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..._state import State
from ...errors import MissingTool, StateError

DEFAULT_POD_ROOT = "/var/lib/vsolab/pods"


def _existing(candidates: tuple[str | None, ...]) -> str | None:
    for cand in candidates:
        if cand:
            try:
                pwd.getpwnam(cand)
                return cand
            except KeyError:
                continue
    return None


def postgres_user() -> str | None:
    """The user PostgreSQL runs as when root runs the lab (None: the lab's own user)."""
    if os.getuid() != 0:
        return None
    user = _existing((os.environ.get("VSOLAB_PG_USER"), "postgres", "nobody"))
    if user is None:
        raise MissingTool(
            "Checked for an unprivileged user to run PostgreSQL as (PostgreSQL refuses to run as root): none found.",
            ["Create one: `useradd --system postgres`.", "Or name an existing user in VSOLAB_PG_USER.",
             "Or run the lab as a normal user instead of root."],
        )
    return user


def pod_user() -> str | None:
    """The user pod processes run as when root runs the lab (None: the lab's own user)."""
    if os.getuid() != 0:
        return None
    user = _existing((os.environ.get("VSOLAB_POD_USER"), "nobody"))
    pg = postgres_user()
    if user is None or user == pg or pwd.getpwnam(user).pw_uid == 0:
        found = "none found" if user is None else f"the only one found, {user!r}, " + (
            "is root" if pwd.getpwnam(user).pw_uid == 0 else "also runs PostgreSQL and owns its data")
        raise MissingTool(
            f"Checked for an unprivileged user to run the lab's pods as (the lab runs as root): {found}.",
            ["Create one: `useradd --system --no-create-home --shell /usr/sbin/nologin vsolab-pod`, "
             "then set VSOLAB_POD_USER=vsolab-pod.",
             "Or run PostgreSQL as another user: `useradd --system postgres` (or set VSOLAB_PG_USER).",
             "Or run the lab as a normal user instead of root."],
        )
    return user


def pod_root(state: State) -> Path:
    """The directory holding the lab's pod directories."""
    if os.getuid() != 0:
        return state.path("pods")
    base = Path(os.path.realpath(os.environ.get("VSOLAB_POD_ROOT", DEFAULT_POD_ROOT)))
    return base / state.lab_id


def ensure_pod_root(state: State) -> Path:
    """Create the pod root; under root, check that no other user can change any directory on its path."""
    root = pod_root(state)
    if os.getuid() != 0:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root
    cur = Path("/")
    for part in root.parts[1:]:
        cur = cur / part
        try:
            os.mkdir(cur, 0o711)
            os.chmod(cur, 0o711)  # whatever the umask: the pod user must be able to pass through
        except FileExistsError:
            pass
        except OSError as exc:
            raise _untrusted(root, cur, f"it cannot be created ({exc.strerror})") from None
        st = os.lstat(cur)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise _untrusted(root, cur, "it is not a directory (a symlink or a file)")
        if st.st_uid != 0:
            raise _untrusted(root, cur, f"it is owned by {_owner(st.st_uid)}, not root")
        if st.st_mode & 0o022:
            raise _untrusted(root, cur, f"others can write to it (mode {stat.S_IMODE(st.st_mode):o})")
    return root


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _untrusted(root: Path, where: Path, why: str) -> StateError:
    return StateError(
        f"Checked that no user but root can change the pods' directory {root}: {where} fails, {why}.",
        [f"Remove {where} if another user planted it, then run `labkit up` again.",
         "Or point VSOLAB_POD_ROOT at a directory on a path owned by root and writable only by root "
         f"(default {DEFAULT_POD_ROOT}).", "Or run the lab as a normal user instead of root."],
    )


class PodHost:
    """The pods' user and directories, as the node agent uses them."""

    def __init__(self, state: State) -> None:
        self.user = pod_user()
        self.ids = (pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid) if self.user else None
        self.root = ensure_pod_root(state)
        self._python: str | None = None
        self._mirrored: dict[Path, Path] = {}

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.root / f"{namespace}_{name}"

    def _dir(self, path: Path, *, pod_owned: bool = False, pod_readable: bool = False) -> Path:
        """Create ``path`` in a directory only the agent can write to; owned by the agent and private, except:
        ``pod_owned`` hands it to the pod user (0700), ``pod_readable`` lets the pod's group read it (0750),
        and under root anything else is 0711 (the pod user passes through)."""
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        mine = st.st_uid == os.getuid() or (pod_owned and self.ids is not None and st.st_uid == self.ids[0])
        if not stat.S_ISDIR(st.st_mode) or not mine:
            raise StateError(f"Checked the pod directory {path}: it is not a directory the node agent made.",
                             ["Run `labkit down --purge` and `labkit up`.", f"Remove {path} by hand.",
                              "Report it: something else writes to the lab's pod directories."])
        if self.ids is None:
            os.chmod(path, 0o700)
        elif pod_owned:
            os.chown(path, *self.ids, follow_symlinks=False)
            os.chmod(path, 0o700)
        elif pod_readable:
            os.chown(path, 0, self.ids[1], follow_symlinks=False)
            os.chmod(path, 0o750)
        else:
            os.chmod(path, 0o711)
        return path

    def home(self, namespace: str, name: str) -> Path:
        """The pod's HOME and working directory, writable by the pod's user only."""
        return self._dir(self._dir(self.pod_dir(namespace, name)) / "home", pod_owned=True)

    def volume_dir(self, namespace: str, name: str, volume: str) -> Path:
        """Where a Secret or ConfigMap volume is written: readable by the pod, writable by the agent only."""
        volumes = self._dir(self._dir(self.pod_dir(namespace, name)) / "volumes", pod_readable=True)
        return self._dir(volumes / volume, pod_readable=True)

    def write_volume_file(self, path: Path, text: str) -> None:
        path.write_text(text)  # in a directory no one but the agent can change, so no planted symlink
        os.chmod(path, 0o640 if self.ids else 0o600)
        if self.ids:
            os.chown(path, 0, self.ids[1], follow_symlinks=False)

    def shim(self, python: str) -> Path:
        """A directory for the pods' PATH with ``python`` and ``python3`` pointing at ``python``."""
        shim = self.root / ".bin"
        shim.mkdir(mode=0o755, exist_ok=True)
        for name in ("python", "python3"):
            link = shim / name
            if not link.is_symlink() or os.readlink(link) != python:
                link.unlink(missing_ok=True)
                link.symlink_to(python)
        return shim

    def runnable(self, path: str) -> str:
        """``path`` as the pod's user can run it.

        The lab's binaries live in the starting user's cache (``~/.cache/vsolab``); under root that is inside
        ``/root``, which the pods' user cannot enter. Their product folder (a binary with what it reads beside it,
        e.g. VSO's ``scripts/`` and ``crds/``) is mirrored once into ``<pod root>/.images``, root's and read-only for
        everyone else, with hard links where the file system allows. Anything else is returned as it is.
        """
        from ...install import cache_root

        if self.ids is None:
            return path
        try:
            rel = Path(path).relative_to(cache_root())
        except ValueError:
            return path
        product = cache_root() / rel.parts[0]
        dest = self._mirrored.get(product)
        if dest is None:
            dest = self._mirrored[product] = self._mirror(product)
        return str(dest.joinpath(*rel.parts[1:]))

    def _mirror(self, product: Path) -> Path:
        """Mirror ``product`` (once per agent process: its folder is walked for a stamp, then reused)."""
        images = self.root / ".images"
        images.mkdir(mode=0o711, exist_ok=True)
        os.chmod(images, 0o711)
        dest = images / product.name
        stamp = str(max((p.stat().st_mtime_ns for p in product.rglob("*") if p.is_file() and not p.is_symlink()), default=0))
        if not (dest / ".stamp").is_file() or (dest / ".stamp").read_text() != stamp:
            tmp = images / f".{product.name}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)

            def link_or_copy(src: str, dst: str) -> None:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

            shutil.copytree(product, tmp, symlinks=True, copy_function=link_or_copy)
            for p in [tmp, *tmp.rglob("*")]:
                if p.is_dir() and not p.is_symlink():
                    os.chmod(p, 0o755)
            (tmp / ".stamp").write_text(stamp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        return dest

    def share_with_pod(self, folder: Path) -> None:
        """Let the pod's user read ``folder``'s files (root's, group = the pod's primary group); no write."""
        if self.ids is None:
            return
        os.chown(folder, 0, self.ids[1], follow_symlinks=False)
        os.chmod(folder, 0o750)
        for f in folder.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chown(f, 0, self.ids[1], follow_symlinks=False)
                os.chmod(f, 0o640)

    def python(self) -> str | None:
        """A Python the pod's user can run (cached once found)."""
        if self._python is None:
            self._python = pod_python(self.user)
        return self._python

    def as_pod_user(self) -> dict[str, Any]:
        """Popen arguments that drop to the pod user (its uid, primary gid, no supplementary groups)."""
        return _as_user(self.user)


def _as_user(user: str | None) -> dict[str, Any]:
    if not user:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def pod_python(user: str | None) -> str | None:
    """A Python ``user`` can run, preferring one that has psycopg (the example app uses it); None if there is none.

    Under root, the lab's own Python may sit in root's 0700 home; then a system Python is used.
    """
    if not user:
        return sys.executable
    found = [p for p in dict.fromkeys((sys.executable, "/usr/local/bin/python3", "/usr/bin/python3")) if os.access(p, os.X_OK)]
    for code in ("import psycopg", "pass"):
        for python in found:
            try:
                if subprocess.run([python, "-c", code], **_as_user(user), cwd="/", capture_output=True, timeout=30,
                                  env={"PATH": "/usr/bin:/bin", "HOME": "/"}).returncode == 0:
                    return python
            except (OSError, subprocess.SubprocessError):
                continue
    return None


def purge_pod_root(state: State) -> None:
    """Remove the lab's pod directories (``down --purge``); symlinks inside are removed, not followed."""
    root = pod_root(state)
    if root.is_dir() and not root.is_symlink():
        shutil.rmtree(root, ignore_errors=True)
