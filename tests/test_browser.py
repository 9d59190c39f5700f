"""The live widgets in a real browser: JupyterLab on loopback, headless Debian chromium, a local lab.

One local lab in its own state directory is brought to the dynamic-secret stage (DB role TTLs of
15s/30s, so renewals and rotations happen while we watch). Then:

* ``tests/notebooks/live_widgets.ipynb`` is executed headless by papermill with ``INTERACTIVE=False``
  and the executed notebook, widget state included, is scanned for every credential the lab made;
* the same notebook is opened in JupyterLab in chromium (Python playwright), its cells are run, and
  the SecretView (masked, reveals on click), LeaseView (TTL goes down), PipelineView (all green) and
  Timeline (a rotation plotted) are checked and screenshotted to ``$VSOLAB_ARTIFACTS`` (the pictures in the
  README and docs come from the real notebooks instead: ``scripts/screenshots.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _jupyterlab import run_all, serve, wait_until_run
from _labs import lab_fixture

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "tests" / "notebooks" / "live_widgets.ipynb"
ARTIFACTS = Path(os.environ.get("VSOLAB_ARTIFACTS") or ROOT / "artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MASK = "••••••••"
TIMINGS: dict[str, float] = {}


def _dynamic_stage_with_short_ttls(lab: Any) -> None:
    """Connect, static and dynamic secrets with DB role TTLs of 15s/30s, the app running on them."""
    from labkit import connect, dynamic, static

    for step in (connect.create_vault_namespace, connect.create_vault_connection, connect.create_token_reviewer,
                 connect.enable_kubernetes_auth, static.enable_kv, static.write_creds, static.write_policy, static.create_role,
                 static.create_namespace, static.create_vault_auth, static.create_static_secret,
                 dynamic.enable_database, dynamic.configure_connection, lambda lb: dynamic.create_db_role(lb, "15s", "30s"),
                 dynamic.write_policy, dynamic.create_role, dynamic.create_namespace, dynamic.create_vault_auth,
                 dynamic.create_dynamic_secret, dynamic.deploy_app):
        step(lab)
    assert dynamic.check(lab).passed, str(dynamic.check(lab))


#: A local lab of our own at the dynamic-secret stage; torn down and purged afterwards (TIMINGS: lab_up_s, stages_s).
lab = lab_fixture(name="live", prepare=_dynamic_stage_with_short_ttls, timings=TIMINGS)


@pytest.fixture(scope="module")
def base(lab: Any) -> Path:
    """The lab's 0755 base directory, beside its state directory: the notebooks and JupyterLab's files go there."""
    return Path(lab.state.root).parent


def _notebook_copy(dest: Path, **params: Any) -> Path:
    """The test notebook with its parameters cell set to ``params``."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


class Collector(threading.Thread):
    """Every credential the lab holds, read over and over while a notebook runs (they rotate every ~20s)."""

    def __init__(self, lab: Any) -> None:
        super().__init__(daemon=True)
        self.lab, self.values, self.done = lab, set(), threading.Event()

    def grab(self) -> None:
        from labkit import connect, k8s, pg

        n = self.lab.names
        for name, ns in ((n.dynamic_secret, n.dynamic_ns), (n.static_secret, n.static_ns)):
            data = k8s.secret_data(self.lab.kube, name, ns) or {}
            self.values |= {v for k, v in data.items() if k in ("username", "password")}
        self.values |= {r["role"] for r in pg.dynamic_roles(self.lab)}
        self.values |= {self.lab.vault_token, self.lab.pg_admin_password, connect.read_token_reviewer(self.lab)["token"]}

    def run(self) -> None:
        while not self.done.wait(0.5):
            with contextlib.suppress(Exception):  # a read during a rotation may fail; the next one counts
                self.grab()


@pytest.mark.lab
def test_executed_notebook_widget_state_holds_no_generated_credential(lab: Any, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    papermill = pytest.importorskip("papermill")

    monkeypatch.setenv("VSOLAB_STATE", str(lab.state.root))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    src = _notebook_copy(base / "headless" / "live_widgets.ipynb", INTERACTIVE=True, LIVE_SECONDS=30)
    out = ARTIFACTS / "live_widgets.executed.ipynb"
    collector = Collector(lab)
    collector.grab()
    collector.start()
    t0 = time.monotonic()
    papermill.execute_notebook(str(src), str(out), parameters={"INTERACTIVE": False, "LIVE_SECONDS": 30}, kernel_name="python3",
                               cwd=str(src.parent), progress_bar=False, execution_timeout=300)
    TIMINGS["papermill_s"] = round(time.monotonic() - t0, 1)
    collector.done.set()
    collector.join(5)
    collector.grab()
    text = out.read_text()
    state = json.loads(text)["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    dumped = json.dumps(state, ensure_ascii=False)
    assert MASK in dumped and "vsolab-lease" in dumped and "vsolab-pipeline" in dumped and "application/vnd.plotly.v1+json" in dumped
    secrets = sorted(v for v in collector.values if v and len(v) >= 6)
    assert len(secrets) >= 6, "the collector saw too few credentials to make the scan meaningful"
    leaked = [f"{v[:4]}… ({len(v)} chars)" for v in secrets if v in text]
    assert not leaked, f"credentials found in the executed notebook: {leaked}"
    TIMINGS["credentials_scanned"] = len(secrets)


@pytest.fixture(scope="module")
def jupyter(lab: Any, base: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab on 127.0.0.1 (tests/_jupyterlab.serve: a random token, a free port, its own settings), serving a
    copy of the widgets notebook; stopped at the end, its log kept with the artifacts."""
    root = base / "jl"
    _notebook_copy(root / "live_widgets.ipynb", INTERACTIVE=True, LIVE_SECONDS=300)
    try:
        with serve(root, base, env={"VSOLAB_STATE": str(lab.state.root)}) as (url, token):
            yield f"{url}/lab/tree/live_widgets.ipynb?token={token}", root
    finally:
        if ARTIFACTS.exists() and (base / "jupyterlab.log").exists():
            shutil.copy(base / "jupyterlab.log", ARTIFACTS / "jupyterlab.log")


def _shot(locator: Any, name: str) -> None:
    locator.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(ARTIFACTS / name))


@pytest.mark.lab
@pytest.mark.browser
def test_widgets_in_jupyterlab_in_headless_chromium(lab: Any, jupyter: tuple[str, Path]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    from labkit import k8s

    url, _ = jupyter
    n = lab.names
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        try:
            page.goto(url)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            page.keyboard.press("Control+b")  # hide the file browser: wider widgets in the screenshots
            t0 = time.monotonic()
            run_all(page)

            # SecretView: masked, reveals on click, masked again on a second click
            sv = page.locator(".vsolab-secretview")
            sv.locator(".vsolab-value").first.wait_for(timeout=90_000)
            TIMINGS["first_widget_s"] = round(time.monotonic() - t0, 1)
            values = sv.locator(".vsolab-value")
            assert values.count() >= 2 and all(MASK in t for t in values.all_inner_texts())
            button = sv.locator("button.vsolab-reveal")
            assert button.is_enabled()
            # A click is a comm message the kernel handles between cells: wait for Run All to finish (the later
            # cells import plotly and draw three more views; on a busy machine that took over 10 s, and the test's
            # 10 s wait for the reveal ran out while the click was still queued)
            wait_until_run(page, 120, progress=lambda m: None)
            button.click()
            page.wait_for_selector(".vsolab-secret[data-revealed='1']", timeout=10_000)
            for _ in range(10):  # the credentials rotate every ~20s: compare with the Secret read at the same moment
                shown = sv.locator(".vsolab-value[data-key='password']").inner_text().strip()
                if shown == (k8s.secret_data(lab.kube, n.dynamic_secret, n.dynamic_ns) or {}).get("password"):
                    break
                time.sleep(1)
            else:
                pytest.fail("the revealed password never matched the Secret's")
            assert MASK not in shown
            button.click()
            page.wait_for_selector(".vsolab-secret[data-revealed='0']", timeout=10_000)
            assert all(MASK in t for t in values.all_inner_texts())

            # LeaseView: the TTL goes down between two reads of the same lease
            lease = page.locator(".vsolab-lease")
            for _ in range(15):
                a = lease.evaluate("el => ({...el.dataset})")
                time.sleep(2)
                b = lease.evaluate("el => ({...el.dataset})")
                if (a["lease"], a["renewals"]) == (b["lease"], b["renewals"]):
                    break
            assert float(b["ttl"]) < float(a["ttl"]), (a, b)
            TIMINGS["ttl_read_1"], TIMINGS["ttl_read_2"] = float(a["ttl"]), float(b["ttl"])

            # PipelineView: all five links green
            page.wait_for_selector(".vsolab-pipeline[data-ok='5']", timeout=120_000)
            lights = page.locator(".vsolab-pipeline .vsolab-link")
            assert lights.count() == 5 and set(lights.evaluate_all("els => els.map(e => e.dataset.light)")) == {"ok"}
            TIMINGS["all_green_s"] = round(time.monotonic() - t0, 1)
            _shot(page.locator(".vsolab-pipelineview"), "pipelineview.png")

            # Timeline and LeaseView: renewals and two rotations (new credentials), plotted and marked
            page.wait_for_function("() => { const d = document.querySelector('.vsolab-lease')?.dataset;"
                                   " return d && Number(d.rotations) >= 2 && Number(d.renewals) >= 1; }", timeout=150_000)
            page.wait_for_selector(".vsolab-timeline .js-plotly-plot", timeout=30_000)
            assert int(page.locator(".vsolab-events").get_attribute("data-rotations") or 0) >= 1
            TIMINGS["second_rotation_s"] = round(time.monotonic() - t0, 1)
            time.sleep(2.5)  # one more timeline tick, so the last events are drawn
            _shot(page.locator(".vsolab-timeline"), "timeline.png")
            _shot(page.locator(".vsolab-leaseview"), "leaseview.png")
            assert all(MASK in t for t in values.all_inner_texts())
            _shot(sv, "secretview.png")
            page.screenshot(path=str(ARTIFACTS / "notebook.png"))
        except BaseException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            browser.close()
    (ARTIFACTS / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=1))
