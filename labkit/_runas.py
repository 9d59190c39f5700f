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
import stat
from pathlib import Path

from ._state import State
from .errors import MissingTool, StateError

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


def purge_pod_root(state: State) -> None:
    """Remove the lab's pod directories (``down --purge``); symlinks inside are removed, not followed."""
    import shutil

    root = pod_root(state)
    if root.is_dir() and not root.is_symlink():
        shutil.rmtree(root, ignore_errors=True)
