"""Bad input: every mistake a learner can make gets one paragraph saying what was checked and how to fix it.

Each case is a :class:`~labkit.errors.LabkitError`; through the CLI (``python -m labkit ...``) it is exit code 2,
the message on stderr and no Python traceback. Cases already covered elsewhere are not repeated here:
``notebook.validate``'s type checks (tests/test_notebook.py), ``State.ensure`` on a file and ``check_port_free``
(tests/test_state.py), ``prepare_stage`` before ``up`` and the event hints for a wrong path or role
(tests/test_stages.py). This file covers the rest, mostly end to end through the CLI and the notebooks.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _labs import lab_fixture
from _params import ci_params

from labkit import _procs, install, notebook, static, vault, vso
from labkit._state import State
from labkit.backends.local import LocalLab
from labkit.errors import MissingTool, ParameterError, SyncError, VaultError

REPO = Path(__file__).resolve().parent.parent
PARAMS = ci_params()


# -- helpers -----------------------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m labkit ARGS`` as a learner would, without the caller's lab settings."""
    base = {k: v for k, v in os.environ.items() if k not in ("VSOLAB_STATE", "VSOLAB_BACKEND", "VSOLAB_CI")}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True, cwd=str(REPO),
                          env=base | (env or {}), timeout=timeout)


def one_paragraph(text: str) -> None:
    """A LabkitError's text: what was checked (first line), then "To fix it:" and numbered fixes; no blank line."""
    assert text[:1].isupper() and ": " in text.split("\n")[0], text
    checked, sep, fixes = text.partition("\nTo fix it:\n")
    assert sep and checked.strip(), text
    steps = fixes.rstrip("\n").splitlines()
    assert steps, text
    for i, step in enumerate(steps, 1):
        assert re.match(rf"  {i}\. \S", step), text
    assert "\n\n" not in text.strip(), f"not one paragraph:\n{text}"


def cli_error(proc: subprocess.CompletedProcess[str], command: str, *expected: str) -> str:
    """The CLI failed cleanly: exit 2, ``labkit COMMAND: Checked …`` on stderr, no traceback; return the message."""
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit code {proc.returncode}, expected 2:\n{both}"
    assert "Traceback" not in both, both
    marker = f"labkit {command}: "
    assert marker in proc.stderr, proc.stderr
    msg = proc.stderr[proc.stderr.index(marker) + len(marker):].rstrip()
    one_paragraph(msg)
    for part in expected:
        assert part in msg, f"{part!r} is not in the message:\n{msg}"
    return msg


def lab_processes(state_root: Path) -> list[Any]:
    return _procs.tagged(State(state_root).lab_id + ":")


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    """A state directory that has never held a lab (removed afterwards, with anything a test started in it)."""
    base = Path(tempfile.mkdtemp(prefix="vsolab-badinput-"))
    root = base / "state"
    try:
        yield root
    finally:
        if root.exists():
            LocalLab(root).down(purge=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def foreign_listener(port: int) -> Iterator[socket.socket]:
    """Another program listening on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


@contextlib.contextmanager
def http_server(status: int, body: bytes, content_type: str = "text/html") -> Iterator[int]:
    """A web server that is not Vault, answering every GET/PUT/POST with ``status`` and ``body``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_like(addr: str, token: str = "s.not-a-token") -> SimpleNamespace:
    return SimpleNamespace(vault_addr=addr, vault_token=token)


# -- a wrong Vault address (no lab needed) ------------------------------------------------------------
def test_vault_address_where_nothing_listens() -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VaultError) as info:
        vault.client(lab_like(addr))
    one_paragraph(str(info.value))
    assert addr in str(info.value) and "nothing is listening" in str(info.value) and "labkit up" in str(info.value)


def test_vault_address_with_the_wrong_scheme() -> None:
    with http_server(200, b"{}", "application/json") as port:
        addr = f"https://127.0.0.1:{port}"
        with pytest.raises(VaultError) as info:
            vault.client(lab_like(addr))
    one_paragraph(str(info.value))
    assert addr in str(info.value) and "scheme" in str(info.value)


@pytest.mark.parametrize("status,body", [(404, b"<html>Not Found</html>"), (200, b"<html>welcome</html>"),
                                         (503, b"<html>maintenance</html>")], ids=["404", "200-html", "503"])
def test_vault_address_of_something_that_is_not_vault(status: int, body: bytes) -> None:
    """VAULT_ADDR pointing at another web server must not be reported as a refused token."""
    with http_server(status, body) as port:
        addr = f"http://127.0.0.1:{port}"
        with pytest.raises(VaultError) as info:
            vault.client(lab_like(addr))
    text = str(info.value)
    one_paragraph(text)
    assert addr in text and "not Vault" in text and "VAULT_ADDR" in text, text
    assert "refused" not in text.split("\n")[0], "the token is blamed for a wrong address:\n" + text


# -- unknown backend, wrong parameter types -------------------------------------------------------------
@pytest.mark.parametrize("args,env", [
    (["--backend", "nope", "status"], {}),
    (["status", "--backend", "nope"], {}),
    (["env"], {"VSOLAB_BACKEND": "nope"}),
    (["up"], {"VSOLAB_BACKEND": "minkube"}),
], ids=["option-before", "option-after", "env-var", "typo-on-up"])
def test_cli_unknown_backend(args: list[str], env: dict[str, str], fresh_root: Path) -> None:
    proc = cli("--state", str(fresh_root), *args, env=env)
    cli_error(proc, args[-1] if args[0] == "--backend" else args[0], "local, minikube, external")
    assert not fresh_root.exists(), "an unknown backend must be refused before anything is created"


def test_notebook_setup_refuses_an_unknown_backend(fresh_root: Path) -> None:
    params = dict(PARAMS, BACKEND="docker-desktop", STATE_DIR=str(fresh_root))
    with pytest.raises(ParameterError) as info:
        notebook.setup(params, 1)
    one_paragraph(str(info.value))
    assert "'docker-desktop'" in str(info.value) and "minikube" in str(info.value)


def test_notebook_parameter_of_the_wrong_type_fails_its_cell_with_one_paragraph(fresh_root: Path, tmp_path: Path) -> None:
    """Papermill passes LIVE_SECONDS as a string: the setup cell fails with the message, not a traceback."""
    pm = pytest.importorskip("papermill")
    src = REPO / "notebooks" / "00-welcome-and-setup.ipynb"
    out = tmp_path / src.name
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(src), str(out), cwd=str(src.parent), progress_bar=False, kernel_name="python3",
                            parameters={"LIVE_SECONDS": "60", "STATE_DIR": str(fresh_root), "INTERACTIVE": False})
    assert info.value.ename == "ParameterError", info.value.ename
    assert "LIVE_SECONDS" in info.value.evalue and "parameters" in info.value.evalue
    failed = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(failed) == 1
    shown = "\n".join(failed[0]["traceback"])
    assert "Traceback" not in shown and 'File "' not in shown and "----> " not in shown, shown
    assert "LIVE_SECONDS" in shown and "To fix it:" in shown
    assert not lab_processes(fresh_root), "a refused parameter must not start the lab"


# -- before the lab is up ----------------------------------------------------------------------------------
def test_cli_stage_before_the_lab_is_up(fresh_root: Path) -> None:
    proc = cli("--state", str(fresh_root), "stage", "3")
    cli_error(proc, "stage", "before preparing stage 3", "labkit up")


def test_cli_env_before_the_lab_is_up(fresh_root: Path) -> None:
    proc = cli("--state", str(fresh_root), "env")
    cli_error(proc, "env", "root token", "labkit up")
    assert "export" not in proc.stdout


# -- the state directory -------------------------------------------------------------------------------------
def test_cli_state_dir_under_a_file(fresh_root: Path) -> None:
    fresh_root.parent.mkdir(parents=True, exist_ok=True)
    blocker = fresh_root.parent / "a-file"
    blocker.write_text("not a directory")
    proc = cli("--state", str(blocker / "state"), "up")
    cli_error(proc, "up", str(blocker / "state"), "VSOLAB_STATE")


def test_cli_state_dir_that_is_not_writable(fresh_root: Path) -> None:
    """The directory exists but cannot be written (immutable for root, read-only mode for anyone else)."""
    fresh_root.mkdir(parents=True)
    locked = False
    if os.getuid() == 0:
        locked = shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(fresh_root)],
                                                                       capture_output=True).returncode == 0
    else:
        fresh_root.chmod(0o500)
        locked = True
    if not locked:
        pytest.skip("cannot make a directory unwritable here (root without chattr, or a filesystem without +i)")
    try:
        proc = cli("--state", str(fresh_root), "up")
    finally:
        if os.getuid() == 0:
            subprocess.run(["chattr", "-i", str(fresh_root)], check=True)
        else:
            fresh_root.chmod(0o700)
    cli_error(proc, "up", str(fresh_root), "cannot", "VSOLAB_STATE")
    assert not lab_processes(fresh_root)


# -- binaries ---------------------------------------------------------------------------------------------------
def test_binaries_from_an_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSOLAB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingTool) as info:
        install.binaries()
    one_paragraph(str(info.value))
    assert str(tmp_path / "empty-cache") in str(info.value) and "labkit install" in str(info.value)


def test_cli_up_with_no_binaries_and_no_way_to_get_them(fresh_root: Path, tmp_path: Path) -> None:
    """An empty cache, no Go to build with, and release downloads that fail: `labkit up` says which and how to fix it."""
    nowhere = (tmp_path / "no-mirror").as_uri()
    env = {"VSOLAB_CACHE": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin", "VSOLAB_INSTALL_SOURCE": "prebuilt",
           "VSOLAB_K8S_RELEASES": nowhere, "VSOLAB_ETCD_RELEASES": nowhere, "VSOLAB_HASHICORP_RELEASES": nowhere,
           "GOPROXY": nowhere}
    proc = cli("--state", str(fresh_root), "up", env=env)
    cli_error(proc, "up", "downloads from " + nowhere, "labkit install --source build")
    assert not lab_processes(fresh_root)


def _cache_with_a_broken(binary: str, content: bytes, mode: int, where: Path) -> Path:
    """A copy of the real binary cache (symlinks) in which ``binary`` is replaced by ``content``."""
    real = install.cache_root()
    if not all(p.built() for p in install.PRODUCTS.values()):
        pytest.skip("the lab's binaries are not built here (run `labkit install`)")
    cache = where / "cache"
    for product in install.PRODUCTS.values():
        pdir = cache / product.dir.name
        pdir.mkdir(parents=True)
        for entry in (real / product.dir.name).iterdir():
            (pdir / entry.name).symlink_to(entry)
        if binary in product.outputs:
            (pdir / binary).unlink()
            (pdir / binary).write_bytes(content)
            (pdir / binary).chmod(mode)
    return cache


@pytest.mark.lab
@pytest.mark.parametrize("content,mode,says", [
    (b"\x7fELF but truncated", 0o755, "Exec format error"),
    (b"#!/bin/sh\necho hi\n", 0o644, "Permission denied"),
], ids=["not-a-program", "not-executable"])
def test_cli_up_with_a_binary_that_cannot_run(content: bytes, mode: int, says: str, fresh_root: Path, tmp_path: Path) -> None:
    cache = _cache_with_a_broken("etcd", content, mode, tmp_path)
    proc = cli("--state", str(fresh_root), "up", env={"VSOLAB_CACHE": str(cache)})
    cli_error(proc, "up", "etcd", says, "labkit install --force")
    assert not lab_processes(fresh_root)


# -- taken ports --------------------------------------------------------------------------------------------------
@pytest.mark.lab
@pytest.mark.parametrize("port_name", ["etcd", "etcd_peer"])
def test_cli_up_with_a_foreign_listener_on_a_recorded_port(port_name: str, fresh_root: Path) -> None:
    state = State(fresh_root)
    state.ensure()
    port = state.ports()[port_name]
    with foreign_listener(port):
        proc = cli("--state", str(fresh_root), "up")
    cli_error(proc, "up", f"port {port}", f"(for {port_name})", "ss -ltnp")
    assert not lab_processes(fresh_root), "nothing may be started when the first component's port is taken"


# -- against a running lab ------------------------------------------------------------------------------------------
#: A lab of its own with connect and static secrets in place (the start of notebook 03).
lab = lab_fixture(3, params=PARAMS, name="badinput-lab")


@pytest.mark.lab
def test_wrong_vault_token(lab: LocalLab) -> None:
    with pytest.raises(VaultError) as info:
        vault.client(lab_like(lab.vault_addr, "s.wrong-token"))
    one_paragraph(str(info.value))
    assert "refused" in str(info.value) and "labkit env" in str(info.value)
    assert vault.client(lab).is_authenticated()


@pytest.mark.lab
def test_sealed_vault_is_named_and_labkit_up_unseals_it(lab: LocalLab) -> None:
    """Sealed while VSO syncs: named, unsealed by `labkit up`, and the VaultStaticSecret counts as synced again.

    VSO leaves SecretSynced=False ("Vault is sealed") after the seal, because the next, successful read finds the
    same data and writes nothing; its Healthy and Ready conditions say the reconcile succeeded. This test makes
    VSO see the seal every time, so that stale condition is always there to be read right.
    """
    import hvac

    n = lab.names
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    hvac.Client(url=lab.vault_addr, token=lab.vault_token).sys.seal()
    try:
        with pytest.raises(VaultError) as info:
            vault.client(lab)
        one_paragraph(str(info.value))
        assert "sealed" in str(info.value) and "labkit up" in str(info.value)
        proc = cli("--state", str(lab.state.root), "status")
        assert proc.returncode == 1 and re.search(r"^openbao .*DOWN", proc.stdout, re.M), proc.stdout
        deadline = time.monotonic() + 30  # VSO's next poll (refreshAfter) meets the sealed Vault
        while time.monotonic() < deadline and vso.conditions(
                vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)).get("Ready", {}).get("status") != "False":
            time.sleep(0.3)
        cond = vso.conditions(vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns))
        assert cond["SecretSynced"]["status"] == "False" and "Code: 503" in cond["SecretSynced"]["message"], cond
        assert "sealed" in vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    finally:
        proc = cli("--state", str(lab.state.root), "up")
    assert proc.returncode == 0, proc.stderr
    assert vault.client(lab).is_authenticated()
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns, timeout=30)
    cond = vso.conditions(vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns))
    assert cond["SecretSynced"]["status"] == "False", "VSO refreshed SecretSynced itself: the stale-condition rule is moot"


def _wait_for_warning(lab: LocalLab, kind: str, name: str, ns: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e[0] == "Warning" for e in vso.events(lab, kind, name, ns)):
            return
        time.sleep(0.5)


@pytest.mark.lab
def test_reapplied_static_secret_with_a_path_that_does_not_exist(lab: LocalLab) -> None:
    """The learner edits spec.path (a typo) on a synced VaultStaticSecret and applies it again."""
    n = lab.names
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    vso.apply(lab, static.static_secret(lab, PARAMS["REFRESH_AFTER"], path="exampleapp/cred"))
    try:
        with pytest.raises(SyncError) as info:
            vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns, timeout=20)
        text = str(info.value)
        one_paragraph(text)
        assert "exampleapp/cred" in text, "VSO's event (the path it read) is not shown:\n" + text
        assert "path does not exist" in text and "spec.path" in text, text
    finally:
        vso.apply(lab, static.static_secret(lab, PARAMS["REFRESH_AFTER"]))
    vso.wait_synced(lab, "VaultStaticSecret", n.static_vss, n.static_ns)


@pytest.mark.lab
def test_vault_auth_whose_role_does_not_exist(lab: LocalLab) -> None:
    """A new VaultAuth naming a role Vault does not have: the sync fails with VSO's event and the hint.

    It is a VaultAuth of its own, so the tutorial's VaultStaticSecret is not touched (VSO keeps a failed
    SecretSynced condition until the data changes, even once the auth works again).
    """
    n = lab.names
    name = "wrong-role"
    auth = static.vault_auth(lab, role="no-such-role")
    auth["metadata"]["name"] = name
    vss = static.static_secret(lab, PARAMS["REFRESH_AFTER"])
    vss["metadata"]["name"] = name
    vss["spec"]["vaultAuthRef"] = name
    vss["spec"]["destination"]["name"] = name
    vso.apply(lab, auth)
    vso.apply(lab, vss)
    try:
        with pytest.raises(SyncError) as info:
            vso.wait_synced(lab, "VaultStaticSecret", name, n.static_ns, timeout=20)
        text = str(info.value)
        one_paragraph(text)
        assert 'invalid role name "no-such-role"' in text, "VSO's event is not shown:\n" + text
        assert "role does not exist" in text and "spec.kubernetes.role" in text, text
    finally:
        vso.delete(lab, "VaultStaticSecret", name, n.static_ns)
        vso.delete(lab, "VaultAuth", name, n.static_ns)
    assert vso.is_synced(vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns))


@pytest.mark.lab
@pytest.mark.parametrize("port_name", ["openbao", "openbao_cluster"])
def test_cli_up_names_the_recorded_port_someone_took_while_the_lab_was_down(lab: LocalLab, port_name: str) -> None:
    secret_before = vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"]
    lab.down()
    port = lab.ports[port_name]
    with foreign_listener(port):
        proc = cli("--state", str(lab.state.root), "up")
    cli_error(proc, "up", f"port {port}", f"(for {port_name})")
    assert not any(h.healthy for h in lab.status() if h.component == "openbao")
    proc = cli("--state", str(lab.state.root), "up")  # the port is free again
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lab.healthy()
    assert vault.kv_get(lab, lab.names.kv_mount, lab.names.kv_path)["data"] == secret_before



# -- the lab dying in the middle of a command ------------------------------------------------------------------
@pytest.mark.lab
def test_cli_stage_when_the_api_server_dies_midway(lab: LocalLab) -> None:
    """``labkit stage 4`` from a clean cluster; kube-apiserver is killed as soon as the stage has begun."""
    from kubernetes import client as kclient

    root = str(lab.state.root)
    assert cli("--state", root, "stage", "1").returncode == 0  # nothing of notebooks 01-03 is left
    core = kclient.CoreV1Api(lab.kube)
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "--state", root, "stage", "4"], cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    try:
        while proc.poll() is None and lab.names.vault_ns not in {ns.metadata.name for ns in core.list_namespace().items}:
            time.sleep(0.05)
        lab.kill("apiserver")
        out, err = proc.communicate(timeout=300)
        msg = cli_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "stage",
                        "Kubernetes API server", "stopped answering", "labkit status", "labkit up")
        assert f"127.0.0.1:{lab.ports['apiserver']}" in msg and "apiserver.log" in msg
    finally:
        proc.kill()
        proc.wait()
        lab.up(progress=lambda m: None)
        from labkit.stages import prepare_stage

        prepare_stage(lab, 3, PARAMS)


@pytest.mark.lab
def test_notebook_cell_when_the_api_server_dies(lab: LocalLab, tmp_path: Path) -> None:
    """A notebook connected to the lab; the API server dies; the next cell fails with one paragraph."""
    pm = pytest.importorskip("papermill")
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom labkit import connect, notebook\n"
                                  f"s = notebook.setup({{'STATE_DIR': {str(lab.state.root)!r}, 'INTERACTIVE': False}}, 1)\n"
                                  "lab = s.lab"),
        nbformat.v4.new_code_cell('lab.kill("apiserver")'),
        nbformat.v4.new_code_cell("connect.create_vault_namespace(lab)"),
    ]
    src, out = tmp_path / "dying.ipynb", tmp_path / "dying.out.ipynb"
    nbformat.write(nb, str(src))
    try:
        with pytest.raises(pm.PapermillExecutionError) as info:
            pm.execute_notebook(str(src), str(out), progress_bar=False, kernel_name="python3")
        assert info.value.ename == "LostConnection", (info.value.ename, info.value.evalue)
        failed = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert len(failed) == 1
        shown = "\n".join(failed[0]["traceback"])
        assert "Traceback" not in shown and 'File "' not in shown and "----> " not in shown, shown
        one_paragraph(re.sub(r"\x1b\[[0-9;]*m", "", shown).split(": ", 1)[1])
        assert "Kubernetes API server" in shown and "labkit up" in shown
    finally:
        lab.up(progress=lambda m: None)


# -- start-up checks ---------------------------------------------------------------------------------------------
def test_cli_up_on_a_nearly_full_disk_names_the_disk(tmp_path: Path) -> None:
    """A 40 MB file system cannot hold etcd's 64 MB write-ahead log: `up` says so before starting anything."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = small / "state"
        proc = cli("--state", str(root), "up")
        cli_error(proc, "up", "free disk space", "MB free", "64 MB", "df -h")
        assert not lab_processes(root)
        doctor = cli("--state", str(root), "doctor", env={"VSOLAB_STATE": str(root)})
        assert "free disk space" in doctor.stdout and doctor.returncode == 1, doctor.stdout
    finally:
        LocalLab(small / "state").down(purge=True)
        subprocess.run(["umount", str(small)], check=True)


def test_a_refused_postgres_login_is_not_called_a_lost_lab(tmp_path: Path) -> None:
    """libpq gives no SQLSTATE for a failed connection, refused or not: the socket tells them apart."""
    import socket

    import psycopg

    from labkit import _lost
    from labkit._state import State

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    state = State(tmp_path / "s")
    state.ensure()
    state.update(ports={"postgres": port})

    class Lab:
        pass

    lab = Lab()
    lab.state = state  # type: ignore[attr-defined]
    exc = psycopg.OperationalError("connection failed: FATAL:  password authentication failed")
    assert exc.sqlstate is None
    assert _lost.explain(exc, lab, "this cell") is None  # it answers: a refused login, not a lost lab
    listener.close()
    lost = _lost.explain(exc, lab, "this cell")
    assert lost is not None and "PostgreSQL" in str(lost) and str(port) in str(lost)
