#!/usr/bin/env python3
"""Refresh the pictures in the README and docs/ from the real notebooks: one command.

Runs the learner test (tests/test_learner_browser.py: every notebook in JupyterLab in headless Chromium at its
defaults, the exercises' solutions typed in, a lab of its own) with ``VSOLAB_SCREENSHOTS=docs/img``, so the cells
and widgets listed in that test's ``SHOTS`` are screenshotted into docs/img/ as the series passes them. Takes the
series' own time (about ten minutes). Exits non-zero when the series fails or a listed cell was not found (the
pictures that were found are written all the same).

    python3 scripts/screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder for the pictures (default: docs/img)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    art = Path(os.environ.get("VSOLAB_ARTIFACTS") or ROOT / "artifacts")
    env = {**os.environ, "VSOLAB_SCREENSHOTS": str(out), "VSOLAB_ARTIFACTS": str(art)}
    env.pop("VSOLAB_CI", None)
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", "learner",
                          "tests/test_learner_browser.py"], cwd=ROOT, env=env)
    missing_file = art / "browser" / "screenshots-missing.txt"
    missing = missing_file.read_text().split() if missing_file.exists() else []
    taken = sorted(p.name for p in (art / "browser" / "screenshots").glob("*.png"))
    print(f"\nscreenshots in {out}: {', '.join(taken) or 'none'}")
    if missing:
        print(f"not found in these notebooks: {', '.join(missing)}")
    if rc:
        print(f"the learner series failed (pytest exit {rc}): see {art / 'browser'}", file=sys.stderr)
    return 1 if rc or missing else 0


if __name__ == "__main__":
    sys.exit(main())
