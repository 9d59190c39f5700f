"""Driving JupyterLab in headless Chromium: shared by the widget test, the main-command test and the learner test.

The learner test reads the notebook's live model through ``window.jupyterapp`` (JupyterLab started with
``expose_app_in_browser``): an error output is rendered with the stderr mimetype, exactly like a command's
stderr, so the DOM alone cannot tell a failed cell from a warning; the model keeps ``output_type: error``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from labkit._kernels import SERVER_ARGS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: what ipywidgets' manager puts on the page when a widget view cannot be shown, and while it is not shown yet
WIDGET_ERROR, WIDGET_LOADING = "Error displaying widget", "Loading widget..."


def accept_kernel_dialog(page: Any) -> bool:
    """JupyterLab asks "Select Kernel" (a dialog with a kernel list) when a notebook's session is not attached yet,
    e.g. a page opened while the server was still busy: accept its preselected kernel, the notebook's own
    (``python3``). True when there was one."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.locator("select").count():
        dialog.locator(".jp-mod-accept").first.click()
        dialog.first.wait_for(state="detached", timeout=10_000)
        return True
    return False


def run_all(page: Any) -> None:
    """Run > Run All Cells, again if the first click went nowhere (the kernel was not attached yet)."""
    for _ in range(3):
        accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function("() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                                   ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))", timeout=20_000)
            return
        except Exception:  # nothing started: click again
            page.keyboard.press("Escape")
    pytest.fail("Run All Cells never started the notebook's cells")


def wait_for_prompts(page: Any, n: int, timeout: float, context: Callable[[], str] = lambda: "") -> None:
    """Wait until the first ``n`` code cells show an execution count (``[3]``). Meanwhile accept a "Select Kernel"
    dialog if one comes up, and fail at once, with the cell's text, if a cell shows an error (Run All stops there,
    so the later cells would never get a count). On timeout, the failure says what the page showed: every code
    cell's prompt, the kernel's status, any dialog, and ``context()`` (e.g. the server's log)."""
    deadline = time.monotonic() + timeout
    blank_since, reruns = time.monotonic(), 0
    while True:
        if accept_kernel_dialog(page):
            blank_since = time.monotonic()
        seen = page.evaluate("""n => {
          const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
          const prompts = cells.map(c => c.querySelector('.jp-InputArea-prompt')?.textContent ?? '');
          const err = cells.slice(0, n).map((c, i) => [i, [...c.querySelectorAll(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")].map(o => o.innerText).join('\\n')])
            .filter(([i, t]) => t);
          return {prompts, err, done: prompts.length >= n && prompts.slice(0, n).every(p => /\\[\\d+\\]/.test(p)),
                  kernel: document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status
                          ?? document.querySelector('.jp-KernelStatus')?.textContent ?? '?',
                  dialog: document.querySelector('.jp-Dialog')?.innerText ?? ''};
        }""", n)
        if seen["err"]:
            i, text = seen["err"][0]
            pytest.fail(f"code cell {i} failed:\n{text[-3000:]}")
        if seen["done"]:
            return
        queued = any("*" in p for p in seen["prompts"][:n])
        if any(re.search(r"\[(\*|\d+)\]", p) for p in seen["prompts"][:n]) and not (queued and seen["kernel"] == "idle"):
            blank_since = time.monotonic()
        elif time.monotonic() - blank_since > 20 and reruns < 2:
            # For 20 s nothing was queued, or cells stayed queued beside an idle kernel: the click went to a
            # notebook whose kernel was not attached yet.
            reruns += 1
            run_all(page)
            blank_since = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"the first {n} code cells did not all run in {timeout:.0f}s. Prompts: {seen['prompts']};"
                        f" kernel: {seen['kernel']!r}; dialog: {seen['dialog']!r}\n{context()}")
        time.sleep(1)


def write_settings(folder: Path) -> Path:
    """JupyterLab user settings for a test: no news or update checks, no autosave (only an explicit Ctrl+S
    writes a notebook), every cell rendered (no virtual scrolling, so a cell's DOM node is there to type into)."""
    for plugin, name, value in (("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
                                ("docmanager-extension", "plugin", {"autosave": False}),
                                ("notebook-extension", "tracker", {"windowingMode": "none"})):
        (folder / "@jupyterlab" / plugin).mkdir(parents=True, exist_ok=True)
        (folder / "@jupyterlab" / plugin / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    return folder


@contextlib.contextmanager
def serve(root: Path, base: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 serving ``root``: a random token, a free port, settings and runtime files under
    ``base``, the app exposed to the page. Yields ``(url, token)``; stops the server and its kernels at the end."""
    import port_for

    port, token = port_for.select_random(), uuid.uuid4().hex
    full = {**os.environ, **(env or {}), "JUPYTERLAB_SETTINGS_DIR": str(write_settings(base / "jl-settings")),
            "JUPYTERLAB_WORKSPACES_DIR": str(base / "jl-ws"), "JUPYTER_RUNTIME_DIR": str(base / "jl-rt")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", *SERVER_ARGS]  # kernels as `labkit lab` runs them
    cmd += ["--allow-root"] if os.getuid() == 0 else []
    log_path = base / "jupyterlab.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group: the server and its kernels
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def open_notebook(page: Any, url: str, token: str, name: str, timeout: float = 120) -> None:
    """Open ``name`` alone (``reset``: no notebook restored from an earlier page) and wait until it is the current
    widget and its kernel is idle (started and attached)."""
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
    page.wait_for_function("name => { const w = window.jupyterapp?.shell.currentWidget;"
                           " return w?.context?.path === name && w.sessionContext?.session?.kernel?.status === 'idle'; }",
                           arg=name, timeout=timeout * 1000)


#: the current notebook panel's cells, from the app's model: type, source, execution count, outputs
_CELLS_JS = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    out.push({type: c.type, id: c.id, source: c.sharedModel.getSource(),
              count: c.type === 'code' ? c.executionCount : null,
              outputs: c.type === 'code' ? c.outputs.toJSON() : []});
  }
  return out;
}"""


def cells(page: Any) -> list[dict[str, Any]]:
    return page.evaluate(_CELLS_JS)


def kernel_status(page: Any) -> str:
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status ?? 'none'")


def wait_until_run(page: Any, timeout: float, progress: Callable[[str], None] = print, every: float = 30) -> float:
    """Wait until Run All has finished: the kernel idle and no cell queued or running (``[*]``), twice in a row
    2 s apart (the kernel is idle for a moment between cells). Prints which cell runs every ``every`` seconds."""
    t0 = time.monotonic()
    last, calm = t0, 0
    while True:
        running = page.evaluate("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map((c, i) =>"
                                " [i, c.querySelector('.jp-InputArea-prompt')?.textContent ?? '']).filter(([i, p]) => p.includes('*'))"
                                ".map(([i]) => i)")
        idle = kernel_status(page) == "idle"
        calm = calm + 1 if idle and not running else 0
        if calm >= 2:
            return time.monotonic() - t0
        now = time.monotonic()
        if now - t0 > timeout:
            pytest.fail(f"Run All did not finish in {timeout:.0f}s; cells still queued or running: {running}")
        if now - last >= every:
            last = now
            progress(f"    … {now - t0:.0f}s, running cell {running[0] if running else '-'}")
        time.sleep(2)


def errors(page: Any) -> list[str]:
    """``cell N: ename: evalue`` for every error output in the notebook's model."""
    return [f"cell {i}: {o.get('ename')}: {str(o.get('evalue'))[:400]}" for i, c in enumerate(cells(page))
            for o in c["outputs"] if o.get("output_type") == "error"]


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def widget_outputs(model: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``(cell, output)`` indexes of the widget views in the notebook's model (:func:`cells`)."""
    return [(i, j) for i, c in enumerate(model) for j, o in enumerate(c["outputs"]) if WIDGET_MIME in (o.get("data") or {})]


def widget_problems(page: Any, model: list[dict[str, Any]]) -> list[str]:
    """The widget views in ``model`` that did not render on the page: ipywidgets' error text, a view still
    loading, or no view inside its output (the manager's renderer has no mimetype attribute: found by position,
    one ``.jp-OutputArea-child`` per output)."""
    return page.evaluate("""([where, err, loading]) => {
      const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
      const bad = [];
      for (const [i, j] of where) {
        const child = cells[i]?.querySelectorAll('.jp-OutputArea-child')[j];
        const out = child?.querySelector('.jp-OutputArea-output');
        const text = out?.innerText ?? '';
        if (!out) bad.push(`cell ${i}, output ${j}: not on the page`);
        else if (text.includes(err)) bad.push(`cell ${i}, output ${j}: ${text.slice(0, 200)}`);
        else if (text.includes(loading)) bad.push(`cell ${i}, output ${j}: still "${loading}"`);
        else if (!out.querySelector('.lm-Widget')) bad.push(`cell ${i}, output ${j}: no widget view inside`);
      }
      return bad;
    }""", [widget_outputs(model), WIDGET_ERROR, WIDGET_LOADING])


def _active_line(page: Any) -> str:
    """The line the cursor is on, from the editor's state (the page draws it a frame later)."""
    return page.evaluate("() => { const ed = window.jupyterapp.shell.currentWidget.content.activeCell.editor;"
                         " return ed.getLine(ed.getCursorPosition().line) ?? ''; }")


def type_into_cell(page: Any, index: int, text: str) -> None:
    """Replace cell ``index``'s source by typing ``text`` on the keyboard into its CodeMirror editor, as a learner
    does: click into the editor, select all, type line by line. The editor indents a new line by itself; where
    that indentation is not what the line begins with, it is taken back with Backspace first (a learner would do
    the same). The model's source must then be exactly ``text``."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.scroll_into_view_if_needed()
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    for k, line in enumerate(text.split("\n")):
        if k:
            page.keyboard.press("Enter")
            auto = _active_line(page)
            while auto and not line.startswith(auto):
                page.keyboard.press("Backspace")
                auto = _active_line(page)
            line = line[len(auto):]
        if line:
            page.keyboard.type(line)
        full = text.split("\n")[k]
        if _active_line(page) != full:  # the editor re-indented a closing bracket: set the indentation again
            page.keyboard.press("Home")  # to the end of the indentation
            page.keyboard.press("Shift+Home")  # select it
            indent = full[: len(full) - len(full.lstrip())]
            page.keyboard.type(indent) if indent else page.keyboard.press("Delete")
            page.keyboard.press("End")
            assert _active_line(page) == full, f"line {k + 1} reads {_active_line(page)!r} after typing {full!r}"
    page.keyboard.press("Escape")  # command mode: the next keys are not typed into the cell
    typed = cells(page)[index]["source"]
    assert typed == text, f"cell {index} holds, after typing:\n{typed}\n--- instead of:\n{text}"


def save(page: Any, timeout: float = 60) -> None:
    """Ctrl+S, then wait until the notebook is no longer dirty."""
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=timeout * 1000)


def close_all(page: Any) -> None:
    """Shut the notebook's kernel down and close it, so the next notebook starts from a fresh kernel."""
    page.evaluate("async () => { const w = window.jupyterapp.shell.currentWidget;"
                  " await w.sessionContext.shutdown(); w.context.model.dirty = false; w.dispose(); }")
