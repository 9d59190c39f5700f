"""The README's main command, as a user runs it: ``scripts/lab.sh``, then notebook 00 in a real browser.

``scripts/lab.sh`` runs in the background from this checkout (CI: a clean clone), with a state directory of its
own. The test waits until JupyterLab answers on its URL, opens notebook 00 in headless Debian chromium, runs its
code cells (Run All Cells: the parameters, ``notebook.setup``,
``lab.up()`` and the checks), and checks they ran without an error. Then it
stops JupyterLab the way a user does (SIGINT, SIGINT), checks it exits, and ``labkit down --purge`` leaves no
lab process.

As root (CI, containers), JupyterLab refuses to start without ``--allow-root``: ``labkit lab`` passes it and says
so once. That refusal is what this test was written for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from _jupyterlab import run_all, wait_for_prompts

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("VSOLAB_ARTIFACTS") or ROOT / "artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
NOTEBOOK = "00-welcome-and-setup.ipynb"

pytestmark = [pytest.mark.lab, pytest.mark.browser]


def _wait(what: str, probe: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            pytest.fail(f"scripts/lab.sh exited ({proc.returncode}) before {what}:\n" + log.read_text()[-4000:])
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f}s for {what}:\n" + log.read_text()[-4000:])
        time.sleep(0.5)


def _has_outputs(path: Path) -> bool:
    cells = json.loads(path.read_text()).get("cells", [])
    return any(c.get("outputs") or c.get("execution_count") for c in cells if c.get("cell_type") == "code")


@pytest.fixture
def main_command() -> Iterator[tuple[str, str, subprocess.Popen[bytes], Path, Path]]:
    """``scripts/lab.sh --port P`` in the background; yields (url, token, process, log, state dir)."""
    import port_for

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    base = Path(tempfile.mkdtemp(prefix="vsolab-main-"))
    os.chmod(base, 0o755)  # as root, PostgreSQL runs as another user beside the state directory
    state = base / "state"
    settings = base / "jl-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (settings / "docmanager-extension").mkdir(parents=True)  # never write outputs into the checkout's notebooks
    (settings / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    (settings / "notebook-extension").mkdir(parents=True)  # render every cell: no virtual scrolling
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = port_for.select_random(), uuid.uuid4().hex
    env = {**os.environ, "VSOLAB_STATE": str(state), "JUPYTER_TOKEN": token,
           "JUPYTERLAB_SETTINGS_DIR": str(base / "jl-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(base / "jl-ws"),
           "JUPYTER_RUNTIME_DIR": str(base / "jl-rt")}
    log = base / "lab.sh.log"
    notebooks = {p: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}
    with log.open("w") as fh:
        proc = subprocess.Popen([str(ROOT / "scripts" / "lab.sh"), "--port", str(port)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", token, proc, log, state
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        saved = [p for p in notebooks if _has_outputs(p)]
        for p in saved:
            p.write_bytes(notebooks[p])  # committed notebooks carry no outputs, whatever happened in the browser
        assert not saved, f"the browser session saved {[p.name for p in saved]} with outputs into the checkout"
        subprocess.run([sys.executable, "-m", "labkit", "--state", str(state), "down", "--purge"], capture_output=True, timeout=120)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "main-command.log")
        shutil.rmtree(base, ignore_errors=True)


def test_scripts_lab_sh_serves_notebook_00_and_its_first_cells_run(main_command: Any) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from labkit import _procs
    from labkit._state import State

    url, token, proc, log, state = main_command
    headers = {"Authorization": f"token {token}"}
    _wait("JupyterLab to answer on its URL", lambda: requests.get(f"{url}/api/status", headers=headers, timeout=2).ok,
          900, proc, log)
    text = log.read_text()
    assert "lab ready" in text, text[-3000:]
    if os.geteuid() == 0:
        assert text.count("running as root") == 1, "labkit lab should say once that it runs as root:\n" + text[-3000:]
    # Only on loopback: another host must not reach the notebooks.
    listen = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    port = url.rsplit(":", 1)[1]
    assert all(line.split()[3].startswith("127.0.0.1:") for line in listen.splitlines() if line.split()[3].endswith(":" + port))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            cells.first.wait_for(timeout=120_000)
            page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'"
                                   " || !!document.querySelector('.jp-mod-idle, [data-status=\"idle\"]')", timeout=120_000)
            first = 3  # code cells: parameters, notebook.setup(), lab.up()
            run_all(page)
            wait_for_prompts(page, first, 180, lambda: "lab.sh log, last lines:\n" + log.read_text()[-3000:])
            outputs = [cells.nth(i).locator(".jp-OutputArea").inner_text() for i in range(first)]
            errors = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'],"
                                  " .jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            error_text = [errors.nth(i).inner_text() for i in range(errors.count())]
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "main-command-notebook-00.png"))
            browser.close()
    assert not any("Traceback" in t or "Error" in t for t in error_text), error_text
    assert "backend: local" in outputs[1], outputs

    # Stop JupyterLab as a user does: Ctrl-C twice (SIGINT to its process group).
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("JupyterLab did not stop on Ctrl-C twice:\n" + log.read_text()[-3000:])
    down = subprocess.run([sys.executable, "-m", "labkit", "--state", str(state), "down", "--purge"],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    left = _procs.tagged(State(state).lab_id + ":")
    assert not left, f"lab processes left after down: {[p.pid for p in left]}"
