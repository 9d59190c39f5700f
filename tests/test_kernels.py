"""Notebook kernels that only their user can reach (labkit/_kernels.py): every way the kit starts a kernel puts
its channels on Unix sockets in a 0700 directory, not on TCP, where any local user can read a kernel's output.

Real kernels, real JupyterLab: nothing is faked. The first test shows why it matters, with Jupyter's default
transport; the last one (as root, like tests/test_attacks.py) has a second local user try the private sockets.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path

import nbformat
import pytest
import requests
import zmq
from _jupyterlab import serve
from jupyter_client import KernelManager
from test_attacks import as_attacker, attacker, attacker_python  # noqa: F401 (attacker is a fixture)

from labkit._kernels import SERVER_ARGS, AsyncPrivateKernelManager, PrivateKernelManager
from labkit.cli import jupyterlab_argv

SECRET = f"vsolab-{uuid.uuid4().hex}"


def _eavesdrop(km: KernelManager, run: str) -> bool:
    """Subscribe to the kernel's IOPub channel without its key, as another process would, and run ``run`` in it:
    whether the subscriber saw the secret in what the kernel published."""
    info = km.get_connection_info()
    address = (f"tcp://{info['ip']}:{info['iopub_port']}" if info["transport"] == "tcp"
               else f"ipc://{info['ip']}-{info['iopub_port']}")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 500)
    sub.connect(address)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        time.sleep(0.5)  # the subscription reaches the publisher
        kc.execute(run)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if SECRET.encode() in b"".join(sub.recv_multipart()):
                    return True
            except zmq.Again:
                pass
        return False
    finally:
        kc.stop_channels()
        sub.close(0)
        ctx.term()


def _private_to_me(directory: Path) -> bool:
    st = directory.stat()
    return st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700  # (Jupyter adds the sticky bit)


def test_over_tcp_any_local_process_reads_a_kernels_output_without_its_key() -> None:
    """Why: Jupyter's default. The subscriber has only the port, which every local user can see."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        assert km.get_connection_info()["transport"] == "tcp"
        assert _eavesdrop(km, f"print({SECRET!r})")
    finally:
        km.shutdown_kernel(now=True)


def test_a_private_kernel_listens_only_on_sockets_in_a_private_directory_removed_after() -> None:
    km = PrivateKernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        info = km.get_connection_info()
        folder = Path(km.connection_file).parent
        assert info["transport"] == "ipc" and Path(str(info["ip"])).parent == folder
        assert _private_to_me(folder), oct(folder.stat().st_mode)
        # the five channels are socket files there, and the kernel still works through them
        assert _eavesdrop(km, f"print({SECRET!r})")  # the same user may, as the OS allows its own files
        sockets = [p for p in folder.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
        assert len(sockets) == 5, sorted(p.name for p in folder.iterdir())
    finally:
        km.shutdown_kernel(now=True)
    assert not folder.exists()


def test_papermill_runs_notebooks_on_private_kernels(tmp_path: Path) -> None:
    pm = pytest.importorskip("papermill")
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import json, os\nfrom ipykernel.connect import get_connection_file\n"
        "cf = get_connection_file()\n"
        "print(json.dumps({'file': cf, 'transport': json.load(open(cf))['transport'], "
        "'mode': oct(os.stat(os.path.dirname(cf)).st_mode & 0o777)}))")]), src)
    # as labkit/runner.py runs them
    pm.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False,
                        kernel_manager_class=AsyncPrivateKernelManager)
    seen = json.loads(json.loads(out.read_text())["cells"][0]["outputs"][0]["text"][0])
    assert seen["transport"] == "ipc" and seen["mode"] == "0o700", seen
    assert not Path(seen["file"]).parent.exists()  # removed with the kernel
    runner = (Path(__file__).resolve().parents[1] / "labkit" / "runner.py").read_text()
    assert "kernel_manager_class=AsyncPrivateKernelManager" in runner


def test_jupyterlab_as_labkit_lab_starts_it_puts_kernels_on_sockets_in_its_runtime_dir(tmp_path: Path) -> None:
    assert all(a in jupyterlab_argv() for a in SERVER_ARGS)  # `labkit lab` (scripts/lab.sh) passes them
    root = tmp_path / "nb"
    root.mkdir()
    with serve(root, tmp_path) as (url, token):  # tests/_jupyterlab.serve passes the same SERVER_ARGS
        headers = {"Authorization": f"token {token}"}
        r = requests.post(f"{url}/api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
        assert r.status_code == 201, (r.status_code, r.text[:500])
        kernel = r.json()
        try:
            # the connection file where JupyterLab keeps it; the sockets in a short private directory (tmp_path is
            # long: beside the connection file their paths would pass a Unix socket's 107-byte limit)
            info = json.loads((tmp_path / "jl-rt" / f"kernel-{kernel['id']}.json").read_text())
            folder = Path(info["ip"]).parent
            assert info["transport"] == "ipc" and folder.name.startswith("vsolab-kernel-"), info
            assert _private_to_me(folder), oct(folder.stat().st_mode)
            deadline = time.monotonic() + 60  # the kernel process binds them as it starts
            while len(sockets := [p for p in folder.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]) < 5:
                assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
                time.sleep(0.2)
            assert all(len(str(p)) < 108 for p in sockets), sockets
        finally:
            requests.delete(f"{url}/api/kernels/{kernel['id']}", headers=headers, timeout=60)
        assert not folder.exists()  # removed with the kernel


@pytest.mark.usefixtures("attacker")  # skips unless root: the attacker is a second local user
def test_another_local_user_cannot_connect_to_a_private_kernels_sockets() -> None:
    km = PrivateKernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)  # the owner reaches it
        kc.stop_channels()
        sockets = sorted(str(p) for p in Path(km.connection_file).parent.iterdir() if stat.S_ISSOCK(p.stat().st_mode))
        assert len(sockets) == 5, sockets
        probe = ("import json, socket, sys\nout = {}\nfor path in sys.argv[1:]:\n"
                 "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(path); out[path] = 'connected'\n"
                 "    except OSError as exc:\n        out[path] = type(exc).__name__\nprint(json.dumps(out))")
        res = as_attacker([attacker_python(), "-c", probe, *sockets])
        assert res.returncode == 0, res.stderr
        assert set(json.loads(res.stdout).values()) == {"PermissionError"}, res.stdout
    finally:
        km.shutdown_kernel(now=True)
