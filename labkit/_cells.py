"""The notebooks' own cells as the one recipe for a stage.

A code cell tagged ``step`` is a step of the tutorial: a ``%%bash`` cell whose source is the real ``vault``,
``kubectl`` or ``helm`` command, policy or manifest. The learner runs it in the notebook; ``labkit stage N``
runs the very same cells of notebooks 1 … N-1 (:func:`run_steps`), with the same environment the kernel gets
from :func:`labkit.notebook.setup` (:func:`cell_env`). There is no second copy of the steps in Python.

A code cell whose id starts with ``exercise-`` is a "try it yourself" cell: committed with a scaffold (commented,
so Run All passes over it), and filled with the text in ``notebooks/solutions/<notebook>.yaml`` by
:func:`fill_solutions` when ``labkit run-notebooks --solutions`` (and CI) plays a learner who typed the answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .backends.contract import Lab
from .errors import LabkitError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOLUTION_DIR = NOTEBOOK_DIR / "solutions"
#: the parameters a cell can read as environment variables (``$REFRESH_AFTER`` …), besides the lab's own
PARAM_ENV = ("REFRESH_AFTER", "DEFAULT_TTL", "MAX_TTL", "RENEWAL_PERCENT", "CERT_TTL", "ROTATION_PERIOD")
BASH = "%%bash"


class StepFailed(LabkitError):
    """A notebook's step cell failed while ``labkit stage`` ran it."""


def notebook_path(number: int, folder: Path = NOTEBOOK_DIR) -> Path:
    found = sorted(folder.glob(f"{number:02d}-*.ipynb"))
    if not found:
        raise LabkitError(f"Looked for notebook {number:02d} in {folder}: there is none.",
                          ["Run labkit from a checkout that has notebooks/.", "Check the notebook's number.",
                           "Run `git status notebooks/` to see whether a notebook was moved."])
    return found[0]


class _Node(dict):
    """A notebook, cell or metadata read as JSON, with attribute access as nbformat's NotebookNode has."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _node(value: Any) -> Any:
    if isinstance(value, dict):
        node = _Node({k: _node(v) for k, v in value.items()})
        if isinstance(node.get("source"), list):  # nbformat 4 may store a cell's source as a list of lines
            node["source"] = "".join(node["source"])
        return node
    if isinstance(value, list):
        return [_node(v) for v in value]
    return value


def read(path: Path) -> Any:
    """The notebook at ``path`` (nbformat 4), read as plain JSON: importing nbformat costs seconds (its JSON-schema
    validator compiles a grammar at import), and every `labkit stage` and notebook kernel reads notebooks."""
    return _node(json.loads(path.read_text()))


def tags(cell: Any) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def step_cells(nb: Any) -> list[tuple[int, Any]]:
    """``(index, cell)`` of the cells tagged ``step``, in order."""
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and "step" in tags(c)]


def bash_body(cell: Any) -> str:
    """The script of a ``%%bash`` cell (without the magic line)."""
    first, _, rest = cell.source.partition("\n")
    if first.strip() != BASH:
        raise LabkitError(f"Checked the step cell {cell.get('id', '?')}: it is not a %%bash cell.",
                          ["A cell tagged `step` holds a real command: start it with %%bash.",
                           "Or remove the `step` tag if the cell is not a tutorial step.",
                           "See labkit/_cells.py for the convention."])
    return rest


def with_this_python(env: dict[str, str]) -> dict[str, str]:
    """``python3`` in a cell is the kernel's own (the one with labkit), right after the lab's tools on PATH: a cell
    may ask labkit for a file it ships (``python3 -c 'import labkit.exampleapp …'``), in a venv or on a hub too."""
    parts = env.get("PATH", os.environ.get("PATH", "")).split(os.pathsep)
    here = str(Path(sys.executable).parent)
    if here not in parts[:2]:
        parts.insert(1 if len(parts) > 1 else 0, here)
    return {**env, "PATH": os.pathsep.join(parts)}


def cell_env(lab: Lab, params: dict[str, Any]) -> dict[str, str]:
    """What a cell sees besides the kernel's own environment: the lab's (``labkit env``), the attendee prefix
    (``$PREFIX``, empty on a lab of your own) and the notebook's parameters."""
    env = with_this_python(dict(lab.env()))
    env["PREFIX"] = lab.names.prefix
    for name in PARAM_ENV:
        if name in params:
            env[name] = str(params[name])
    return env


def run_steps(lab: Lab, number: int, params: dict[str, Any], *, folder: Path = NOTEBOOK_DIR,
              timeout: float = 300) -> list[str]:
    """Run notebook ``number``'s step cells in order, as the notebook would; return their ids."""
    path = notebook_path(number, folder)
    nb = read(path)
    env = {**os.environ, **cell_env(lab, params)}
    done = []
    for index, cell in step_cells(nb):
        script = bash_body(cell)
        try:
            res = subprocess.run(["bash"], input=script, env=env, cwd=str(path.parent), capture_output=True,
                                 text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res = None
        if res is None or res.returncode != 0:
            from ._lost import not_answering

            where = f"{path.name}, cell {index} (id {cell.get('id', '?')})"
            lost = not_answering(lab, "`labkit stage`", where)
            if lost is not None:
                raise lost
            what = f"did not finish in {timeout:.0f}s" if res is None else f"exited with status {res.returncode}"
            raise StepFailed(
                f"Ran {where}, as `labkit stage` does: it {what}.",
                [f"Open {path.name} and run that cell yourself: its output says what failed.",
                 "Run `labkit status`: a part of the lab may be down.",
                 "Reset from scratch: `labkit stage 1`, then run the notebooks again."],
                detail="\n".join(line for line in (res.stderr if res is not None else "")[-1500:].splitlines()
                                  if line.strip()),
            )
        done.append(cell.get("id", str(index)))
    return done


def solutions(path: Path, folder: Path = SOLUTION_DIR) -> dict[str, str]:
    """Exercise cell id → the source a learner would type (``notebooks/solutions/<stem>.yaml``)."""
    f = folder / f"{path.stem}.yaml"
    if not f.exists():
        return {}
    data = yaml.safe_load(f.read_text()) or {}
    return {str(k): str(v).rstrip("\n") for k, v in data.items()}


def exercise_cells(nb: Any) -> list[tuple[int, Any]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and str(c.get("id", "")).startswith("exercise-")]


def fill_solutions(path: Path, out: Path, folder: Path = SOLUTION_DIR) -> int:
    """Write ``path`` to ``out`` with each exercise cell's source replaced by its typed solution; return how many."""
    nb = read(path)
    typed = solutions(path, folder)
    cells = dict((c.get("id"), c) for _, c in exercise_cells(nb))
    missing = sorted(set(cells) - set(typed))
    unknown = sorted(set(typed) - set(cells))
    if missing or unknown:
        raise LabkitError(
            f"Matched {path.name}'s exercise cells to notebooks/solutions/{path.stem}.yaml: "
            f"without a solution: {missing or 'none'}; solutions for no cell: {unknown or 'none'}.",
            ["Add a solution for every cell whose id starts with exercise-.", "Fix a renamed cell id.",
             "Remove the solution of an exercise that was deleted."])
    import nbformat  # here only: writing goes through nbformat, which validates the notebook

    for cid, cell in cells.items():
        cell.source = typed[cid]
    nbformat.write(nbformat.from_dict(nb), str(out))
    return len(cells)
