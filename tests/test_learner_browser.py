"""The learner's own path in a real browser: every notebook opened in JupyterLab in headless Chromium, each
exercise's solution typed into its cell on the keyboard, Run All at the notebooks' default parameters.

A copy of ``notebooks/`` in a temporary folder is served (the checkout's notebooks never get outputs), with a
lab of the test's own (``VSOLAB_STATE`` in that folder; notebook 00 starts it, as it does for a learner, and
notebook 07 stops it, and the start cell of each later one starts it again). For each notebook in order the test:

* types the text of ``notebooks/solutions/<notebook>.yaml`` into each ``exercise-<id>`` cell (select all, type,
  line by line, through CodeMirror), and checks the cell then holds exactly that text;
* runs all cells (Run > Run All Cells) with the parameters cell untouched, and waits until the kernel is idle;
* asserts that every code cell ran, that no cell has an error output (read from the notebook's model: the page
  renders an error with the same mimetype as a command's stderr), that every widget output rendered (no
  "Error displaying widget", none left "Loading widget..."), and that each exercise's check cell says PASS;
* saves the notebook (Ctrl+S), checks the saved file the same way, and keeps it in ``$VSOLAB_ARTIFACTS/browser/``.

``tests/record_secrets.py`` watches this lab meanwhile and writes ``browser/recorded-secrets.json``, so the leak
scan (``tests/test_executed.py``, see ``scripts/test.sh``) covers the saved notebooks too.

``VSOLAB_LEARNER_NOTEBOOKS="00 01 02"`` runs only those (00 starts the lab, so keep it; or start with 08 or later,
whose start cell starts the lab: ``scripts/test.sh`` runs 00-07 and 08-13 as two jobs, each on a lab of its own). With
``VSOLAB_SCREENSHOTS=<folder>`` (``scripts/screenshots.py``) the cells listed in :data:`SHOTS` are
screenshotted into that folder as the series passes them.

Marked ``learner``: ``scripts/test.sh`` runs it as a step of its own (it takes the notebooks' default time, minutes).
The typing helper is checked on its own, without a lab, by the first test here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _jupyterlab as jl
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("VSOLAB_ARTIFACTS") or ROOT / "artifacts")
#: generous: the defaults are minutes of live views and TTLs; notebook 00 starts the lab
TIMEOUTS = {"00": 1200, "04": 1200}
TIMEOUT = 900
#: (notebook, file name, how to find it): the code cell (source and output) with a piece of source, the one showing
#: a widget (by its CSS class), or the first one whose output says PASS (an exercise's check cell first)
SHOTS: list[tuple[str, str, tuple[str, str]]] = [
    ("01", "nb01-helm-install.png", ("source", "helm upgrade --install")),
    ("01", "nb01-pods.png", ("source", "kubectl get pods")),
    ("02", "nb02-secretview.png", ("css", ".vsolab-secretview")),
    ("02", "nb02-check-pass.png", ("pass", "")),
    ("03", "nb03-pipelineview.png", ("css", ".vsolab-pipelineview")),
    ("04", "nb04-leaseview.png", ("css", ".vsolab-leaseview")),
]


def _browser(pw: Any) -> Any:
    if not Path(jl.CHROMIUM).exists():
        pytest.skip(f"{jl.CHROMIUM} is missing: apt-get install -y chromium")
    return pw.chromium.launch(executable_path=jl.CHROMIUM, headless=True, args=jl.CHROMIUM_ARGS)


@pytest.fixture
def base() -> Iterator[Path]:
    # 0755: when run as root, PostgreSQL runs as another user and keeps its data beside the state dir.
    path = Path(tempfile.mkdtemp(prefix="vsolab-learner-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _texts(outputs: list[dict[str, Any]]) -> str:
    """What a cell's outputs say in plain text (streams and text/plain)."""
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append("".join(o.get("text") or ""))
        text = (o.get("data") or {}).get("text/plain")
        if text:
            parts.append("".join(text))
    return "\n".join(parts)


def _check_cells(cells: list[dict[str, Any]], exercise: str) -> list[int]:
    """The code cells that check exercise ``exercise`` (``exercises.check(lab, "<id>", …)``)."""
    return [i for i, c in enumerate(cells) if c["type"] == "code" and "exercises.check(" in c["source"]
            and (f'"{exercise}"' in c["source"] or f"'{exercise}'" in c["source"])]


def problems(cells: list[dict[str, Any]], typed: dict[str, str]) -> list[str]:
    """Everything wrong with a run notebook's cells (the model in the page, or the saved file's cells)."""
    bad = [f"cell {i} never ran" for i, c in enumerate(cells) if c["type"] == "code" and c["count"] is None]
    bad += [f"cell {i}: {o.get('ename')}: {str(o.get('evalue'))[:400]}" for i, c in enumerate(cells)
            for o in c["outputs"] if o.get("output_type") == "error"]
    for i, c in enumerate(cells):
        cid = str(c["id"] or "")
        if cid.startswith("exercise-"):
            if c["source"] != typed.get(cid):
                bad.append(f"cell {i} ({cid}) does not hold the typed solution")
            ex = cid.removeprefix("exercise-")
            if ex.startswith("diagnose-"):  # a drill's diagnosis: the cell answers for itself; its check before the fix failed
                drill = ex.removeprefix("diagnose-")
                if f"PASS: diagnosis of drill {drill}" not in _texts(c["outputs"]):
                    bad.append(f"cell {i}, the diagnosis of drill {drill}, does not say PASS: {_texts(c['outputs'])[:300]!r}")
                before = [j for j, d in enumerate(cells) if f'drills.before_fix(lab, "{drill}"' in d["source"]]
                if not before or any("FAILS, as it should" not in _texts(cells[j]["outputs"]) for j in before):
                    bad.append(f"drill {drill}: no check before the fix that FAILS, as it should")
                continue
            checks = _check_cells(cells, ex)
            if not checks:
                bad.append(f"no cell checks exercise {ex} (exercises.check(lab, {ex!r}, globals()))")
            for j in checks:
                text = _texts(cells[j]["outputs"])
                if f"PASS: exercise {ex}" not in text:
                    bad.append(f"cell {j}, the check of exercise {ex}, does not say PASS: {text[:300]!r}")
    return bad


def _saved_cells(path: Path) -> list[dict[str, Any]]:
    nb = json.loads(path.read_text())
    return [{"type": c["cell_type"], "id": c.get("id"), "source": "".join(c.get("source") or ""),
             "count": c.get("execution_count"), "outputs": c.get("outputs") or []} for c in nb["cells"]]


def _shoot(page: Any, cells: list[dict[str, Any]], number: str, folders: list[Path]) -> list[str]:
    """Screenshot this notebook's entries of SHOTS into ``folders``; return the names not found."""
    missing = []
    for nb, name, (how, what) in SHOTS:
        if nb != number:
            continue
        target = None
        if how == "css":
            loc = page.locator(f".jp-Notebook .jp-Cell:has({what})")
            target = loc.first if loc.count() else None
        else:
            if how == "source":
                found = [i for i, c in enumerate(cells) if c["type"] == "code" and what in c["source"]]
            else:
                passing = [i for i, c in enumerate(cells) if c["type"] == "code" and "PASS:" in _texts(c["outputs"])]
                found = [i for i in passing if "exercises.check(" in cells[i]["source"]] + passing
            target = page.locator(".jp-Notebook .jp-Cell").nth(found[0]) if found else None
        if target is None:
            missing.append(name)
            continue
        target.scroll_into_view_if_needed()
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            target.screenshot(path=str(folder / name))
    return missing


#: a check cell of the registry's form, with a stand-in checker reading what the typed solution wrote
CHECK = """from pathlib import Path
from types import SimpleNamespace
from labkit.display import Check
exercises = SimpleNamespace(check=lambda lab, id, ns: Check(f"exercise {id}", [
    ("answer.txt holds 42", Path("answer.txt").exists() and Path("answer.txt").read_text().strip() == "42", "")]))
exercises.check(None, "demo", globals())"""


#: a widget view whose model the kernel never created: the page must not count it as rendered
BROKEN_WIDGET = """from IPython.display import display
display({"application/vnd.jupyter.widget-view+json": {"model_id": "no-such-model", "version_major": 2, "version_minor": 0}},
        raw=True)"""


@pytest.mark.browser
def test_typed_solution_replaces_the_scaffold_and_runs(base: Path) -> None:
    """The typing helper, without a lab: a generated notebook with an exercise cell; the solution (a heredoc
    with indented YAML, HCL braces, quotes, a blank line) typed in, Run All, the cell's output and the saved file.
    And the checks can fail: a widget that does not render, an untyped scaffold, an error output, no PASS."""
    import nbformat
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    solution = "\n".join([
        "%%bash", "set -e", "cat <<'EOF' | sed -n '1,$p'", "apiVersion: v1", "kind: ConfigMap", "metadata:",
        "  name: demo", "  labels:", "    app: \"x\"", "", "data:", "  policy: |", '    path "kv/data/*" {',
        '      capabilities = ["read", "list"]', "    }", "EOF", "echo $((6 * 7)) > answer.txt", "echo done: $(cat answer.txt)"])
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# typing"),
                nbformat.v4.new_code_cell("%%bash\n# Print the manifest. Which command prints a heredoc?\n# ____ <<'EOF'"),
                nbformat.v4.new_code_cell(CHECK), nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=7)"),
                nbformat.v4.new_code_cell(BROKEN_WIDGET)]
    nb.cells[1].id = "exercise-demo"
    root = base / "nb"
    root.mkdir()
    nbformat.write(nb, str(root / "typing.ipynb"))
    with jl.serve(root, base) as (url, token), sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            jl.open_notebook(page, url, token, "typing.ipynb")
            jl.type_into_cell(page, 1, solution)
            jl.run_all(page)
            jl.wait_until_run(page, 120)
            cells = jl.cells(page)
            assert problems(cells, {"exercise-demo": solution}) == []
            out = _texts(cells[1]["outputs"])
            assert out.startswith("apiVersion: v1\n") and '      capabilities = ["read", "list"]\n    }\n' in out, out
            assert "\n\ndata:" in out and out.rstrip().endswith("done: 42"), out
            assert jl.widget_outputs(cells) == [(3, 0), (4, 0)]
            assert jl.widget_problems(page, cells[:4]) == []  # the slider rendered
            broken = jl.widget_problems(page, cells)
            assert len(broken) == 1 and broken[0].startswith("cell 4, output 0: "), broken
            jl.save(page)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "typing-check.png"))
            browser.close()
    saved = _saved_cells(root / "typing.ipynb")
    assert saved[1]["source"] == solution and saved[1]["id"] == "exercise-demo"
    assert problems(saved, {"exercise-demo": solution}) == []
    # and the checks can fail: an untyped scaffold, and an error output
    assert problems(saved, {"exercise-demo": "%%bash\necho other"}) == ["cell 1 (exercise-demo) does not hold the typed solution"]
    assert "PASS: exercise demo" in _texts(saved[2]["outputs"])
    saved[2]["outputs"] = [{"output_type": "error", "ename": "NameError", "evalue": "x", "traceback": []}]
    assert problems(saved, {"exercise-demo": solution}) == [
        "cell 2: NameError: x", "cell 2, the check of exercise demo, does not say PASS: ''"]


@contextlib.contextmanager
def _recorder(state: Path, out: Path) -> Iterator[None]:
    """tests/record_secrets.py against this lab, for the leak scan of the saved notebooks."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "record_secrets.py"), str(out)],
                            env={**os.environ, "VSOLAB_STATE": str(state)}, cwd=ROOT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.lab
@pytest.mark.browser
@pytest.mark.learner
@pytest.mark.timeout(5400)  # the series at its defaults, and the lab's start, on a slow machine
def test_every_notebook_in_jupyterlab_at_defaults_with_typed_solutions(base: Path) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from labkit import _cells, install

    if not all(p.built() for p in install.PRODUCTS.values()):
        pytest.skip("the lab's binaries are not built: run `labkit install`")
    root, state = base / "notebooks", base / "state"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    out = ARTIFACTS / "browser"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shots = [out / "screenshots"] + ([Path(os.environ["VSOLAB_SCREENSHOTS"])] if os.environ.get("VSOLAB_SCREENSHOTS") else [])
    # the kernels import this checkout's labkit (an editable install may point at another one)
    env = {"VSOLAB_STATE": str(state), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    os.environ.pop("VSOLAB_CI", None)  # the learner's defaults, not CI's short values (the kernels inherit this)
    timings: dict[str, float] = {}
    missing: list[str] = []
    notebooks = sorted(root.glob("[0-9][0-9]-*.ipynb"))
    assert len(notebooks) >= 8, [p.name for p in notebooks]
    if os.environ.get("VSOLAB_LEARNER_NOTEBOOKS"):  # e.g. "00 01 02" while working on those (00 starts the lab)
        notebooks = [p for p in notebooks if p.name[:2] in os.environ["VSOLAB_LEARNER_NOTEBOOKS"].split()]
    recording: contextlib.ExitStack = contextlib.ExitStack()
    try:
        with jl.serve(root, base, env) as (url, token), sync_playwright() as pw, recording:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                for path in notebooks:
                    number = path.name[:2]
                    t0 = time.monotonic()
                    print(f"▶ {path.name}: open", flush=True)
                    jl.open_notebook(page, url, token, path.name)
                    page.keyboard.press("Control+b")  # hide the file browser: the notebook as wide as the page
                    typed = _cells.solutions(ROOT / "notebooks" / path.name)
                    cells = jl.cells(page)
                    exercises = {str(c["id"]): i for i, c in enumerate(cells) if str(c["id"] or "").startswith("exercise-")}
                    assert set(exercises) == set(typed), (
                        f"{path.name}: exercise cells {sorted(exercises)}, solutions {sorted(typed)} in notebooks/solutions/")
                    for cid, i in exercises.items():
                        print(f"  typing {cid} ({len(typed[cid])} characters)", flush=True)
                        jl.type_into_cell(page, i, typed[cid])
                    jl.run_all(page)
                    ran = jl.wait_until_run(page, TIMEOUTS.get(number, TIMEOUT), progress=lambda m: print(m, flush=True))
                    cells = jl.cells(page)
                    bad = problems(cells, typed) + jl.widget_problems(page, cells)
                    assert not bad, f"{path.name}:\n" + "\n".join(bad)
                    missing += _shoot(page, cells, number, shots)
                    jl.save(page)
                    jl.close_all(page)
                    saved = _saved_cells(path)
                    assert not problems(saved, typed), f"{path.name} as saved:\n" + "\n".join(problems(saved, typed))
                    shutil.copy(path, out / path.name)
                    timings[path.name] = round(time.monotonic() - t0, 1)
                    print(f"  passed: Run All took {ran:.0f}s, {timings[path.name]:.0f}s in all", flush=True)
                    if path == notebooks[0]:  # the lab is up now (00 or 08 started it): record its credentials
                        recording.enter_context(_recorder(state, out / "recorded-secrets.json"))
            except BaseException:
                page.screenshot(path=str(out / "failure.png"), full_page=True)
                with contextlib.suppress(Exception):
                    jl.save(page)
                    shutil.copytree(root, out / "at-failure", ignore=shutil.ignore_patterns("solutions"))
                raise
            finally:
                browser.close()
    finally:
        if (state / "logs").is_dir():  # for the leak scan of the lab's logs (tests/test_executed.py), before the purge
            shutil.copytree(state / "logs", out / "lab-logs", dirs_exist_ok=True)
        subprocess.run([sys.executable, "-m", "labkit", "--state", str(state), "down", "--purge"],
                       capture_output=True, timeout=300)
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
        for p in base.glob("jupyterlab.log"):
            shutil.copy(p, out / "jupyterlab.log")
    print("seconds per notebook:", json.dumps(timings))
    if missing:
        print("screenshots not taken (no such cell or widget in these notebooks):", ", ".join(missing))
        (out / "screenshots-missing.txt").write_text("\n".join(missing) + "\n")
