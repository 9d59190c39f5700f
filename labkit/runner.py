"""``labkit run-notebooks``: execute every notebook in order with papermill.

With ``solutions`` (and ``--ci``) each exercise cell first gets the text a learner would type, from
``notebooks/solutions/`` (:func:`labkit._cells.fill_solutions`), and the checks must pass.
Writes each executed notebook to the output folder and a summary (notebook,
status, duration) to ``summary.md``. Stops at the first failure and keeps that
executed notebook, which papermill marks at the failing cell.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from . import _cells
from .notebook import CI

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(folder: Path = NOTEBOOK_DIR, only: list[str] | None = None) -> list[Path]:
    found = sorted(p for p in folder.glob("[0-9][0-9]-*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in {f"{int(o):02d}" for o in only}]
    return found


def run_notebooks(output: str | Path, *, backend: str = "local", ci: bool = False, only: list[str] | None = None,
                  solutions: bool = False, folder: Path = NOTEBOOK_DIR, extra: dict[str, Any] | None = None) -> bool:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ._kernels import AsyncPrivateKernelManager

    solutions = solutions or ci
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {"BACKEND": backend}
    if ci:
        params.update(CI)
    if solutions:
        params["EXERCISES_SOLVED"] = True
    params.update(extra or {})
    rows: list[tuple[str, str, float]] = []
    ok = True
    env_before = os.environ.get("VSOLAB_CI")
    for nb in notebooks(folder, only):
        t0 = time.monotonic()
        print(f"▶ {nb.name} …", flush=True)
        status = "passed"
        source = nb
        if solutions:  # a learner who typed each exercise's solution into its cell
            typed_dir = out / "typed"
            typed_dir.mkdir(exist_ok=True)
            source = typed_dir / nb.name
            _cells.fill_solutions(nb, source)
        try:
            pm.execute_notebook(str(source), str(out / nb.name), parameters=params, cwd=str(nb.parent), progress_bar=False,
                                kernel_name="python3", request_save_on_cell_execute=True,
                                kernel_manager_class=AsyncPrivateKernelManager)  # no TCP: see labkit/_kernels.py
        except PapermillExecutionError as exc:
            status = f"FAILED at cell {exc.cell_index} ({exc.ename})"
            ok = False
            print(f"  {exc.ename}: {str(exc.evalue)[:600]}", file=sys.stderr)
        rows.append((nb.name, status, time.monotonic() - t0))
        print(f"  {status} in {rows[-1][2]:.1f}s", flush=True)
        if not ok:
            break
    if env_before is None:
        os.environ.pop("VSOLAB_CI", None)
    total = sum(r[2] for r in rows)
    lines = ["| notebook | status | seconds | share |", "|---|---|---:|---:|"]
    lines += [f"| {n} | {s} | {d:.1f} | {100 * d / total if total else 0:.0f}% |" for n, s, d in rows]
    lines.append(f"| **total** | {'passed' if ok else 'failed'} | {total:.1f} | 100% |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return ok
