# VSO Lab on one JupyterHub host (The Littlest JupyterHub style): every attendee is a Unix user, and the hub starts
# each attendee's JupyterLab as that user with LocalProcessSpawner. Each server starts its own lab (notebook 00 runs
# `labkit up`) in a state directory under the attendee's home, with the lab's binaries from one shared, read-only
# cache. No Docker, no sudo, no privilege for the user servers; the hub and its proxy listen on 127.0.0.1 unless told
# otherwise (put a TLS reverse proxy in front, or set VSOLAB_HUB_BIND_URL).
#
#   sudo env PATH=/opt/vsolab/npm/node_modules/.bin:$PATH jupyterhub -f /opt/vsolab/repo/jupyterhub/jupyterhub_config.py
#
# docs/instructor.md ("JupyterHub") gives the whole setup. The hub runs as root (it must switch to each attendee's
# user); everything it starts for an attendee runs as that attendee, with the kernel's no_new_privs flag set, so no
# setuid program (sudo, su) gives a user server more than the attendee has.
#
# Settings read from the hub's environment (defaults in brackets):
#   VSOLAB_HUB_ENV       the attendees' Python environment, readable by all, writable by root [/opt/vsolab/venv]:
#                        jupyterhub-singleuser, JupyterLab and the kit (`pip install -e /opt/vsolab/repo`)
#   VSOLAB_CACHE         the lab's binaries, installed once by `labkit install`, read-only for attendees [/opt/vsolab/cache]
#   VSOLAB_REPO          this repository; its notebooks/ are copied into each new attendee's ~/vsolab [/opt/vsolab/repo]
#   VSOLAB_HUB_DATA      the hub's database, cookie secret and proxy pid file, root's only [/srv/vsolab-hub]
#   VSOLAB_HUB_BIND_URL  where attendees reach the hub [http://127.0.0.1:8000]
#   VSOLAB_HUB_GROUP     the Unix group whose members may log in [vsolab-attendees]
#   VSOLAB_CULL_TIMEOUT  seconds without activity before a server (and its lab) is stopped [3600]
#   VSOLAB_MEM_LIMIT, VSOLAB_CPU_LIMIT  per attendee [1G, 1]: see "Memory and CPU" below
#
# tests/test_jupyterhub_config.py loads this file; tests/test_jupyterhub.py runs a hub with it (as root, two attendees).
import asyncio
import ctypes
import os
import pwd
import shutil
import sys

from jupyterhub.spawner import LocalProcessSpawner

c = get_config()  # type: ignore[name-defined]  # noqa: F821 (JupyterHub's config loader defines it)

ENV = os.environ.get("VSOLAB_HUB_ENV", "/opt/vsolab/venv")
CACHE = os.environ.get("VSOLAB_CACHE", "/opt/vsolab/cache")
REPO = os.environ.get("VSOLAB_REPO", "/opt/vsolab/repo")
DATA = os.environ.get("VSOLAB_HUB_DATA", "/srv/vsolab-hub")
#: the lab's state directory, relative to the attendee's home: one lab per attendee, 0700, theirs (labkit checks it)
STATE = ".local/state/vsolab/hub"
#: the folder in the attendee's home that receives a copy of the notebooks (theirs to edit and save)
NOTEBOOKS = "vsolab"
#: what a user server may run: the attendees' environment first, then the OS (postgres from /usr/lib/postgresql)
PATH = f"{ENV}/bin:/usr/local/bin:/usr/bin:/bin"
#: util-linux's runuser: how the hooks below act as the attendee (it lives in sbin, often not on a service's PATH)
RUNUSER = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"

# --- The hub and the proxy: on loopback, the hub's files in one root-only folder -----------------------------------
c.JupyterHub.bind_url = os.environ.get("VSOLAB_HUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
c.JupyterHub.db_url = f"sqlite:///{DATA}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{DATA}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{DATA}/jupyterhub-proxy.pid"
os.makedirs(DATA, mode=0o700, exist_ok=True)

# --- Who may log in: Unix accounts (PAM, JupyterHub's default) in one group --------------------------------------
# Hand out accounts with `useradd --create-home --shell /bin/bash -G vsolab-attendees attendee01` and a password
# (chpasswd). Nothing else about an attendee is collected: no e-mail, no name, and no secret of theirs is used.
c.PAMAuthenticator.allowed_groups = {os.environ.get("VSOLAB_HUB_GROUP", "vsolab-attendees")}


def _no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): from here on, no exec (a setuid sudo or su included) gains a privilege."""
    if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


class VsolabSpawner(LocalProcessSpawner):
    """LocalProcessSpawner (the server runs as the attendee's Unix user), with no_new_privs set after the switch."""

    def make_preexec_fn(self, name):  # type: ignore[no-untyped-def]
        become_user = super().make_preexec_fn(name)

        def preexec() -> None:
            become_user()
            _no_new_privs()

        return preexec


def _home(spawner) -> str:  # type: ignore[no-untyped-def]
    return pwd.getpwnam(spawner.user.name).pw_dir


async def _as_attendee(spawner, *argv: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """``argv`` as the attendee (runuser, a clean environment: the server's own variables), never as root."""
    env = {"HOME": _home(spawner), "USER": spawner.user.name, "LANG": "C.UTF-8", "PATH": PATH,
           "VSOLAB_CACHE": CACHE, "VSOLAB_STATE": os.path.join(_home(spawner), STATE)}
    proc = await asyncio.create_subprocess_exec(
        RUNUSER, "-u", spawner.user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv,
        cwd=_home(spawner), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        spawner.log.warning("%s for %s: no answer after %.0fs", " ".join(argv), spawner.user.name, timeout)
        return
    if proc.returncode:
        spawner.log.warning("%s for %s exited %s: %s", " ".join(argv), spawner.user.name, proc.returncode,
                            out.decode(errors="replace")[-2000:])


async def copy_notebooks(spawner) -> None:  # type: ignore[no-untyped-def]
    """Before the first start: the notebooks into ~/vsolab, copied by the attendee (cp -n: their edits stay)."""
    src = os.path.join(REPO, "notebooks")
    if os.path.isdir(src):
        await _as_attendee(spawner, "cp", "-R", "-n", "-T", src, os.path.join(_home(spawner), NOTEBOOKS), timeout=60)


async def stop_lab(spawner) -> None:  # type: ignore[no-untyped-def]
    """After the server stopped (logged out and culled, stopped by an admin, the hub shut down): `labkit down`, as
    the attendee. The lab's processes are detached from the server, so without this a culled server's lab would keep
    its memory. The state stays: the next notebook 00 (or `labkit up`) brings the same lab back."""
    try:
        await _as_attendee(spawner, f"{ENV}/bin/labkit", "down", timeout=120)
    except Exception:  # the server is stopped whatever happened here
        spawner.log.exception("labkit down for %s failed", spawner.user.name)


c.JupyterHub.spawner_class = VsolabSpawner
c.Spawner.cmd = [f"{ENV}/bin/jupyterhub-singleuser"]
# Kernels over Unix sockets in a private 0700 directory, not TCP on 127.0.0.1, where every attendee on the host could
# subscribe to another's output channel without its key (labkit/_kernels.py says more; labkit lab does the same).
c.Spawner.args = ["--MultiKernelManager.kernel_manager_class=labkit._kernels_server.ServerPrivateKernelManager"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.default_url = f"/lab/tree/{NOTEBOOKS}"
c.Spawner.notebook_dir = "~"
c.Spawner.disable_user_config = True  # an attendee's ~/.jupyter cannot change how their server listens
c.Spawner.environment = {
    "PATH": PATH,
    "LANG": "C.UTF-8",
    "VSOLAB_CACHE": CACHE,
    "VSOLAB_STATE": lambda spawner: os.path.join(_home(spawner), STATE),
}
c.Spawner.pre_spawn_hook = copy_notebooks
c.Spawner.post_stop_hook = stop_lab
c.Spawner.start_timeout = 120  # a busy host: everyone starts at once
c.Spawner.http_timeout = 120

# --- Memory and CPU -------------------------------------------------------------------------------------------------
# LocalProcessSpawner does NOT enforce these: it only passes MEM_LIMIT and CPU_LIMIT to the server (which
# jupyter-resource-usage displays). Size the host instead: one lab alone is 848 MiB PSS with the app running, plus
# about 90 MiB per open kernel, and one attendee running the whole series peaked at 1088 MiB (lab and kernel;
# benchmarks/RESULTS.md, docs/instructor.md "Sizing"). Labs on one host share their binaries' pages, so plan
# N x 1.1 GiB + 1 GiB for the hub and the OS, and 2 attendees per core. The limit shown is the Kubernetes setup's.
# To enforce them, run the servers in systemd units (jupyterhub-systemdspawner, as TLJH does: MemoryMax/CPUQuota),
# or use the Kubernetes setup (jupyterhub/z2jh-values.yaml), where they are the pod's requests and limits.
c.Spawner.mem_limit = os.environ.get("VSOLAB_MEM_LIMIT", "2G")
c.Spawner.cpu_limit = float(os.environ.get("VSOLAB_CPU_LIMIT", "1"))

# --- Culling idle servers (jupyterhub-idle-culler from PyPI, in the hub's environment) ------------------------------
# An idle server is stopped after VSOLAB_CULL_TIMEOUT seconds; stop_lab above then stops its lab. Users are kept.
c.JupyterHub.load_roles = [{
    "name": "jupyterhub-idle-culler-role",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["jupyterhub-idle-culler-service"],
}]
c.JupyterHub.services = [{
    "name": "jupyterhub-idle-culler-service",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={int(os.environ.get('VSOLAB_CULL_TIMEOUT', '3600'))}",
                "--cull-every=300"],
}]
