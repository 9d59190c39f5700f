"""A real JupyterHub with jupyterhub/jupyterhub_config.py: two attendees log in, each runs notebook 00, labs apart.

The hub runs as root (as on a TLJH-style host; CI runs as root) on 127.0.0.1, with the single-host config loaded
unchanged and only what a test needs on top (tests' own config file, below): random ports, the
SharedPasswordAuthenticator that JupyterHub ships (one password, two allowed names), the app exposed to the page, and
an API token for this test. configurable-http-proxy comes from npm (scripts/setup.sh installs it into
~/.cache/vsolab-npm), jupyterhub and jupyterhub-idle-culler from the test extra.

What root prepares is what an administrator does once (docs/instructor.md, "JupyterHub"): the attendees' Unix
accounts (``vsolab-hub-ada``, ``vsolab-hub-bob``, made when missing), the binary cache shared read-only (hard links,
as tests/test_unprivileged.py does), a root-owned copy of this checkout, and the attendees' Python environment, a venv
from the OS's Python that every user can read and only root can write (``/var/tmp/vsolab-hub-venv``, kept between
runs so only the first one downloads from PyPI; the kit is installed into it again from the copy each run).

Then, in headless Chromium, each attendee logs in on the hub's login page in a browser context of their own; the hub
spawns their JupyterLab as their Unix user (the config's pre-spawn hook copies the notebooks into ``~/vsolab``);
each opens notebook 00 there and runs all its cells (both at once), and every code cell must finish without an
error: the lab is up. Isolation is then checked: the two labs have different state directories and ports, every
process of a lab runs as its attendee with no_new_privs, and neither attendee can list the other's state directory
or read its ``secrets.json`` (Vault's root token and unseal key) through ``runuser``. Stopping a server through the
hub's API (what the idle culler does) stops its lab (the config's post-stop hook). At the end the hub is stopped,
each lab is purged as its attendee, and the temporary folder goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from _jupyterlab import CHROMIUM, CHROMIUM_ARGS, errors, run_all, wait_for_prompts, write_settings
from _users import ensure_user

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.hub, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("VSOLAB_ARTIFACTS") or ROOT / "artifacts")
CONFIG = ROOT / "jupyterhub" / "jupyterhub_config.py"
ATTENDEES = ("vsolab-hub-ada", "vsolab-hub-bob")
NOTEBOOK = "00-welcome-and-setup.ipynb"
PYTHON = "/usr/bin/python3"  # the OS's Python: root's own (pyenv, conda) often lives in root's 0700 home
VENV = Path("/var/tmp/vsolab-hub-venv")
NPM_BIN = Path(os.environ.get("VSOLAB_NPM_PREFIX") or Path.home() / ".cache" / "vsolab-npm") / "node_modules" / ".bin"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
STATE = ".local/state/vsolab/hub"  # jupyterhub_config.py's STATE


def _runuser(user: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = env or {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def _attendee_env(user: pwd.struct_passwd, cache: Path) -> dict[str, str]:
    return {"HOME": user.pw_dir, "USER": user.pw_name, "LANG": "C.UTF-8", "PATH": f"{VENV}/bin:{SYSTEM_PATH}",
            "VSOLAB_CACHE": str(cache), "VSOLAB_STATE": f"{user.pw_dir}/{STATE}"}


def _lab_processes(state: Path) -> list[psutil.Process]:
    from labkit import _procs
    from labkit._state import State

    return _procs.tagged(State(state).lab_id + ":")


def _no_new_privs(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return any(line.split() == ["NoNewPrivs:", "1"] for line in status.splitlines())


@dataclass
class Hub:
    url: str
    token: str  # this test's API token (a service with admin:servers)
    password: str
    proc: subprocess.Popen[bytes]
    log: Path
    cache: Path
    users: dict[str, pwd.struct_passwd]
    times: dict[str, float] = field(default_factory=dict)

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=30, **kw)

    def state(self, name: str) -> Path:
        return Path(self.users[name].pw_dir) / STATE

    def log_tail(self) -> str:
        return "hub log, last lines:\n" + self.log.read_text(errors="replace")[-4000:]


def _test_config(base: Path, ports: list[int], password: str, token: str) -> Path:
    path = base / "test_config.py"
    path.write_text(f"""# the single-host config as shipped, and what this test needs on top
c = get_config()  # noqa: F821
load_subconfig({str(CONFIG)!r})  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{ports[0]}"
c.JupyterHub.hub_port = {ports[1]}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports[2]}"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.Authenticator.allowed_users = {set(ATTENDEES)!r}
c.Spawner.args = ["--LabApp.expose_app_in_browser=True"]
c.JupyterHub.services.append({{"name": "vsolab-test", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{"name": "vsolab-test", "scopes": ["admin:servers", "list:users", "read:users"],
                                 "services": ["vsolab-test"]}})
""")
    return path


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    import port_for

    if os.geteuid() != 0:
        pytest.skip("the hub switches to each attendee's Unix user: run as root")
    for need in ("runuser", "useradd"):
        if not shutil.which(need):
            pytest.skip(f"needs {need}")
    if not os.access(PYTHON, os.X_OK) or not Path(CHROMIUM).exists():
        pytest.skip(f"needs {PYTHON} and {CHROMIUM}")
    jupyterhub = pytest.importorskip("jupyterhub")
    pytest.importorskip("jupyterhub_idle_culler")
    pytest.importorskip("playwright.sync_api")
    chp = shutil.which("configurable-http-proxy", path=f"{NPM_BIN}:{os.environ.get('PATH', '')}")
    if not chp:
        pytest.skip(f"configurable-http-proxy is missing: npm install --prefix {NPM_BIN.parent.parent} configurable-http-proxy@5.3.0")
    import _shared_kit
    from test_unprivileged import _share_cache

    base = Path(tempfile.mkdtemp(prefix="vsolab-hub.", dir="/var/tmp"))
    os.chmod(base, 0o755)
    cache, repo = base / "cache", base / "repo"
    cache.mkdir()
    _share_cache(cache)
    _shared_kit.copy_repo(repo)  # root's, readable by all: the attendees' environment installs the kit from it
    # the attendees' environment: jupyterhub-singleuser at the hub's version, and the kit
    times = {"attendees' venv (pip install)": _shared_kit.venv(VENV, repo, [f"jupyterhub=={jupyterhub.__version__}"])}

    users = {name: ensure_user(name, home=True) for name in ATTENDEES}
    for user in users.values():
        env = _attendee_env(user, cache)
        _runuser(user.pw_name, [f"{VENV}/bin/labkit", "down", "--purge"], env)  # a lab an earlier run left behind
        home = Path(user.pw_dir)
        shutil.rmtree(home / "vsolab", ignore_errors=True)  # the notebooks' copy: made again by the pre-spawn hook
        # JupyterLab's settings for the test (no news, every cell rendered): the attendee's own, in their home
        settings = home / ".jupyter" / "lab" / "user-settings"
        shutil.rmtree(settings, ignore_errors=True)
        write_settings(settings)
        for d, _dirs, files in os.walk(home / ".jupyter"):
            os.chown(d, user.pw_uid, user.pw_gid)
            for f in files:
                os.chown(os.path.join(d, f), user.pw_uid, user.pw_gid)

    ports = [port_for.select_random() for _ in range(3)]
    password, token = uuid.uuid4().hex, uuid.uuid4().hex
    config = _test_config(base, ports, password, token)
    log = base / "hub.log"
    # no sbin on the hub's PATH: the config finds runuser itself
    env = {"PATH": f"{NPM_BIN}:{Path(sys.executable).parent}:{SYSTEM_PATH}", "LANG": "C.UTF-8", "HOME": str(Path.home()),
           "VSOLAB_HUB_ENV": str(VENV), "VSOLAB_CACHE": str(cache), "VSOLAB_REPO": str(repo),
           "VSOLAB_HUB_DATA": str(base / "hub-data")}
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=base, env=env,
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    h = Hub(f"http://127.0.0.1:{ports[0]}", token, password, proc, log, cache, users, times)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{h.url}/hub/api/", timeout=2).ok:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, h.log_tail()
            time.sleep(0.5)
        yield h
    finally:
        if proc.poll() is None:  # SIGTERM: the hub stops the servers it spawned (and their labs), then the proxy
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(180)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for user in users.values():
            down = _runuser(user.pw_name, [f"{VENV}/bin/labkit", "down", "--purge"], _attendee_env(user, cache))
            print(f"as {user.pw_name}: labkit down --purge exited {down.returncode}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "jupyterhub.log")
        shutil.rmtree(base, ignore_errors=True)
        print("times:", json.dumps({k: round(v, 1) for k, v in times.items()}))


def _log_in_and_open(page: Any, hub: Hub, name: str) -> None:
    """The hub's login page, the spawn (pending page, then JupyterLab), then notebook 00 in ``~/vsolab``, its kernel idle."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", hub.password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(f"**/user/{name}/lab**", timeout=240_000)
    page.goto(f"{hub.url}/user/{name}/lab/tree/vsolab/{NOTEBOOK}?reset")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.wait_for_function("name => { const w = window.jupyterapp?.shell.currentWidget;"
                           " return w?.context?.path === name && w.sessionContext?.session?.kernel?.status === 'idle'; }",
                           arg=f"vsolab/{NOTEBOOK}", timeout=120_000)


def test_two_attendees_run_notebook_00_on_one_hub_each_in_a_lab_of_their_own(hub: Hub) -> None:
    from playwright.sync_api import sync_playwright

    code_cells = sum(c["cell_type"] == "code" for c in json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())["cells"])
    # The hub and its proxy listen on loopback only
    listen = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    port = hub.url.rsplit(":", 1)[1]
    assert all(line.split()[3].startswith("127.0.0.1:") for line in listen.splitlines() if line.split()[3].endswith(":" + port))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pages = {}
        try:
            t0 = time.monotonic()
            for name in ATTENDEES:  # a browser context each: their own cookies, as two laptops
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                _log_in_and_open(page, hub, name)
                pages[name] = page
            hub.times["both logged in, servers spawned, notebook 00 open"] = time.monotonic() - t0
            t0 = time.monotonic()
            for page in pages.values():  # both at once: two labs come up side by side
                run_all(page)
            for page in pages.values():
                wait_for_prompts(page, code_cells, 900, hub.log_tail)
            hub.times["notebook 00, Run All, both attendees"] = time.monotonic() - t0
            for name, page in pages.items():
                assert errors(page) == [], (name, errors(page))
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for name, page in pages.items():
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / f"jupyterhub-{name}-notebook-00.png"))
            browser.close()

    ada, bob = ATTENDEES
    # Two labs: different state directories, different ports, each lab's processes its attendee's, without privileges
    states = {name: hub.state(name) for name in ATTENDEES}
    ports = {name: json.loads((states[name] / "state.json").read_text())["ports"] for name in ATTENDEES}
    assert states[ada] != states[bob]
    assert set(ports[ada].values()).isdisjoint(ports[bob].values()), ports
    for name, user in hub.users.items():
        st = states[name].stat()
        assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o700)
        procs = _lab_processes(states[name])
        assert len(procs) >= 6, f"{name}'s lab has only {len(procs)} processes"
        assert {p.uids().real for p in procs} == {user.pw_uid}
        assert all(_no_new_privs(p.pid) for p in procs), name
        server = hub.api("GET", f"/users/{name}").json()["servers"][""]
        assert server["ready"] and server["url"] == f"/user/{name}/", server
        singleuser = [p for p in psutil.process_iter(["cmdline", "uids"])
                      if any("jupyterhub-singleuser" in a for a in p.info["cmdline"] or []) and p.info["uids"].real == user.pw_uid]
        assert singleuser and all(_no_new_privs(p.pid) for p in singleuser), (name, singleuser)
    # Neither attendee can look into the other's lab
    for me, other in ((ada, bob), (bob, ada)):
        for argv in (["ls", str(states[other])], ["cat", str(states[other] / "secrets.json")],
                     ["cat", str(states[other] / "state.json")]):
            peek = _runuser(me, argv, timeout=30)
            assert peek.returncode != 0 and "Permission denied" in peek.stderr, (me, argv, peek.stdout)
        # and their own works (the check above is about the other's lab, not about runuser)
        mine = _runuser(me, ["cat", str(states[me] / "secrets.json")], timeout=30)
        assert mine.returncode == 0 and mine.stdout.strip(), (me, mine.stderr)
    # The idle culler runs as the hub's service
    assert any("jupyterhub_idle_culler" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))

    # Stopping a server through the hub's API (what the culler does) stops its lab: the config's post-stop hook
    t0 = time.monotonic()
    stop = hub.api("DELETE", f"/users/{ada}/server")
    assert stop.status_code in (202, 204), stop.text
    deadline = time.monotonic() + 180
    while (hub.api("GET", f"/users/{ada}").json()["servers"] or _lab_processes(states[ada])) and time.monotonic() < deadline:
        time.sleep(1)
    hub.times["server stopped through the API, its lab down"] = time.monotonic() - t0
    assert not hub.api("GET", f"/users/{ada}").json()["servers"], hub.log_tail()
    assert _lab_processes(states[ada]) == [], "the post-stop hook did not stop ada's lab\n" + hub.log_tail()
    assert (states[ada] / "secrets.json").exists()  # `labkit down` without --purge: the lab comes back with notebook 00
    assert _lab_processes(states[bob]), "bob's lab went down with ada's server"
    print("times:", json.dumps({k: round(v, 1) for k, v in hub.times.items()}))
