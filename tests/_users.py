"""Local users the tests run as (created when missing), safe when two test processes create the same one at once."""

from __future__ import annotations

import pwd
import subprocess

#: useradd(8)'s exit status for "username already in use": another test process made it first
USERADD_EXISTS = 9


def ensure_user(name: str, *, home: bool = False) -> pwd.struct_passwd:
    """``name``'s passwd entry, made with ``useradd`` when missing (a system user without a home, unless ``home``).

    The unit tests run in parallel workers, and the unprivileged test beside them: two of them may create the same
    user at the same moment, so useradd's "already in use" (exit status 9) is the other one's success, not a failure.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    args = ["--create-home", "--shell", "/bin/bash"] if home else \
        ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
    made = subprocess.run(["useradd", *args, name], capture_output=True, text=True)
    if made.returncode not in (0, USERADD_EXISTS):
        raise RuntimeError(f"useradd {name} failed with exit status {made.returncode}: {made.stderr.strip()}")
    return pwd.getpwnam(name)
