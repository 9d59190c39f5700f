"""Time from a fresh clone to JupyterLab serving notebook 00, on the prebuilt path, as an ordinary user.

Run as root (it creates the user and serves the mirror): ``python3 benchmarks/bench_first_notebook.py``.

The release binaries come from a loopback mirror laid out as the real sites (tests/_mirror.py, made from the binaries
this machine built), so the download time from dl.k8s.io, GitHub and releases.hashicorp.com is not in the figure:
add about 200 MB at your bandwidth. The user ``vsolab-learner`` has no Go on PATH (a Binder-like machine): ``auto``
takes the release binaries, and helm, the chart and kube-rbac-proxy (build-only) are skipped. Steps, each timed:
``git clone`` (from a local bare copy of HEAD), a venv and ``pip install --no-cache-dir -e`` (every dependency from
PyPI), ``labkit install`` into an empty cache, then ``labkit lab --no-browser`` until ``/api/contents`` serves
notebook 00. Everything is stopped and removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from _mirror import mirror_env, serve  # noqa: E402

USER = "vsolab-learner"
NB = "00-welcome-and-setup.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: it creates the user and serves the mirror", file=sys.stderr)
        return 2
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
        user = pwd.getpwnam(USER)
    home = Path(user.pw_dir)
    work = Path(tempfile.mkdtemp(prefix="vsolab-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    bare = work / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)], check=True)
    subprocess.run(["chown", "-R", USER, str(bare)], check=True)  # git refuses a repository another user owns
    server, _files = serve(work / "mirror")
    clone, venv, cache = home / "bench-clone", home / "bench-venv", home / "bench-cache"
    state = home / ".local/state/vsolab/bench"
    port, token = free_port(), os.urandom(16).hex()
    env = {"HOME": str(home), "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8", "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
           "VSOLAB_CACHE": str(cache), "VSOLAB_STATE": str(state), "JUPYTER_TOKEN": token, **mirror_env(server)}
    argv = ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]

    def as_user(cmd: str, timeout: float = 1800) -> None:
        res = subprocess.run([*argv, "bash", "-c", cmd], cwd=home, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise SystemExit(f"`{cmd}` failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        sys.stderr.write(res.stderr[-1500:])

    times: dict[str, float] = {}
    lab: subprocess.Popen[bytes] | None = None
    try:
        for p in (clone, venv, cache):
            shutil.rmtree(p, ignore_errors=True)
        steps = [
            ("git clone", f"git clone -q {bare} {clone}"),
            ("venv + pip install -e (PyPI, no pip cache)", f"/usr/bin/python3 -m venv --system-site-packages {venv} && "
             f"pip install -q --no-cache-dir --disable-pip-version-check -e {clone}"),
            ("labkit install (auto: no Go, so the release binaries)", "labkit install"),
        ]
        for name, cmd in steps:
            t0 = time.monotonic()
            as_user(cmd)
            times[name] = round(time.monotonic() - t0, 1)
            print(f"{name}: {times[name]} s", flush=True)
        t0 = time.monotonic()
        log = open(work / "lab.log", "wb")  # noqa: SIM115 - closed below
        lab = subprocess.Popen([*argv, "labkit", "lab", "--no-browser", "--port", str(port)], cwd=home, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/api/contents/{NB}?token={token}"
        while True:
            if lab.poll() is not None:
                raise SystemExit(f"labkit lab exited ({lab.returncode}): {(work / 'lab.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200 and json.load(resp)["name"] == NB:
                    break
            time.sleep(0.2)
        times["labkit lab → notebook 00 served"] = round(time.monotonic() - t0, 1)
        print(f"labkit lab → notebook 00 served: {times['labkit lab → notebook 00 served']} s", flush=True)
        times["total"] = round(sum(times.values()), 1)
        print(json.dumps(times, indent=2))
        return 0
    finally:
        if lab is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(lab.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                lab.wait(timeout=30)
        subprocess.run([*argv, "labkit", "down", "--purge"], cwd=home, capture_output=True, timeout=300)
        server.shutdown()
        for p in (clone, venv, cache, work):
            shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
