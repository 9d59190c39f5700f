"""Local users the tests run as (created when missing), safe when two test processes create the same one at once."""

from __future__ import annotations

import pwd
import subprocess
import time

#: useradd(8)'s exit status for "username already in use": another test process made it first
USERADD_EXISTS = 9


def ensure_user(name: str, *, home: bool = False) -> pwd.struct_passwd:
    """``name``'s passwd entry, made with ``useradd`` when missing (a system user without a home, unless ``home``).

    The unit tests run in parallel workers, and the unprivileged test beside them: two of them may create the same
    user at the same moment, so useradd's "already in use" (exit status 9) is the other one's success, not a failure,
    and a useradd that failed while the other held /etc/passwd's lock is tried again.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    args = ["--create-home", "--shell", "/bin/bash"] if home else \
        ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
    for _attempt in range(10):
        made = subprocess.run(["useradd", *args, name], capture_output=True, text=True)
        if made.returncode in (0, USERADD_EXISTS):
            return pwd.getpwnam(name)
        try:  # useradd also fails while another one holds /etc/passwd's lock: made meanwhile, or try again
            return pwd.getpwnam(name)
        except KeyError:
            time.sleep(0.5)
    raise RuntimeError(f"useradd {name} failed with exit status {made.returncode}: {made.stderr.strip()}")
