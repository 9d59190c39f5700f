"""Check that a running lab at stage ≥ 4 really works end to end: VSO syncs a changed static secret, and the
dynamic secret's app is connected. Used by tests/test_state.py and by hand: python3 scripts/lab_works.py STATE."""

from __future__ import annotations

import sys
import time

from labkit import connect, dynamic, static
from labkit.backends.local import LocalLab


def static_follows(lab: LocalLab, timeout: float = 40) -> bool:
    new = f"changed-{time.time_ns()}"
    static.write_creds(lab, password=new)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if static.read_secret(lab).get("password") == new:
            return True
        time.sleep(0.5)
    return False


def dynamic_ok(lab: LocalLab, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dynamic.check(lab).passed:
            return True
        time.sleep(1)
    print(dynamic.check(lab))
    return False


def main(state: str) -> int:
    lab = LocalLab(state)
    ok = {"connect": connect.check(lab).passed, "static": static_follows(lab), "dynamic": dynamic_ok(lab)}
    print(ok)
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
