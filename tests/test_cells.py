"""labkit._cells: step cells, the stage runner's bash, typed solutions (no lab: a stand-in with env() and names)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit import _cells, stages
from labkit._state import State
from labkit.errors import LabkitError
from labkit.names import Names


class StandIn:
    """The part of a lab that running step cells uses: names, env() and a state (no ports recorded: none answers)."""

    names = Names("alice-")

    def __init__(self, root: Path) -> None:
        self.state = State(root / "state")

    def env(self) -> dict[str, str]:
        return {"VAULT_ADDR": "http://127.0.0.1:1"}


def _nb(folder: Path, cells: list[nbformat.NotebookNode], name: str = "03-test.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    path = folder / name
    nbformat.write(nb, str(path))
    return path


def _code(src: str, *, tags: list[str] | None = None, id: str | None = None) -> nbformat.NotebookNode:
    c = nbformat.v4.new_code_cell(src)
    if tags:
        c.metadata["tags"] = tags
    if id:
        c.id = id
    return c


def test_run_steps_runs_only_step_cells_in_order_with_the_lab_env(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    _nb(tmp_path, [
        _code(f"%%bash\necho one $PREFIX $REFRESH_AFTER $VAULT_ADDR >> {out}", tags=["step"]),
        _code(f"%%bash\necho not-a-step >> {out}"),
        _code(f"%%bash\necho two >> {out}", tags=["step"], id="second"),
    ])
    done = _cells.run_steps(StandIn(tmp_path), 3, {"REFRESH_AFTER": "3s"}, folder=tmp_path)
    assert out.read_text().splitlines() == ["one alice- 3s http://127.0.0.1:1", "two"]
    assert done[-1] == "second"


def test_a_failing_step_names_the_notebook_and_cell(tmp_path: Path) -> None:
    _nb(tmp_path, [_code("%%bash\necho fine", tags=["step"]),
                   _code("%%bash\necho oops >&2\nexit 3", tags=["step"], id="broken")])
    with pytest.raises(_cells.StepFailed) as e:
        _cells.run_steps(StandIn(tmp_path), 3, {}, folder=tmp_path)
    text = str(e.value)
    assert "03-test.ipynb, cell 1 (id broken)" in text and "status 3" in text and "oops" in text


def test_a_step_cell_must_be_bash(tmp_path: Path) -> None:
    _nb(tmp_path, [_code("print('python')", tags=["step"], id="py")])
    with pytest.raises(LabkitError, match="not a %%bash cell"):
        _cells.run_steps(StandIn(tmp_path), 3, {}, folder=tmp_path)


def test_fill_solutions_types_each_exercise_and_refuses_a_mismatch(tmp_path: Path) -> None:
    sols = tmp_path / "solutions"
    sols.mkdir()
    path = _nb(tmp_path, [_code("%%bash\n# vault kv ____", id="exercise-a"), _code("x = 1", id="other")])
    (sols / "03-test.yaml").write_text("exercise-a: |\n  %%bash\n  vault kv patch static/x k=v\n")
    out = tmp_path / "typed.ipynb"
    assert _cells.fill_solutions(path, out, sols) == 1
    cells = nbformat.read(str(out), as_version=4).cells
    assert cells[0].source == "%%bash\nvault kv patch static/x k=v" and cells[1].source == "x = 1"
    (sols / "03-test.yaml").write_text("exercise-b: |\n  echo\n")
    with pytest.raises(LabkitError, match=r"without a solution: \['exercise-a'\].*for no cell: \['exercise-b'\]"):
        _cells.fill_solutions(path, out, sols)


def test_every_real_notebook_step_cell_is_bash_and_every_exercise_has_a_solution() -> None:
    for path in sorted(_cells.NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb")):
        nb = _cells.read(path)
        for _, cell in _cells.step_cells(nb):
            _cells.bash_body(cell)
        ids = {c.id for _, c in _cells.exercise_cells(nb)}
        assert ids == set(_cells.solutions(path)), path.name


def test_every_exercise_cell_has_a_registered_checker_for_its_notebook() -> None:
    from labkit import exercises

    for path in sorted(_cells.NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb")):
        ids = {c.id.removeprefix("exercise-") for _, c in _cells.exercise_cells(_cells.read(path))}
        # a drill's diagnosis cell (exercise-diagnose-<id>) is checked by drills.diagnose, not by an exercise
        ids -= {f"diagnose-{d.id}" for d in stages.STAGES[int(path.name[:2])].diagnoses} if int(path.name[:2]) in stages.STAGES else set()
        assert ids == {e.id for e in exercises.for_notebook(int(path.name[:2]))}, path.name
        for ex in map(exercises.REGISTRY.get, ids):
            assert ex is not None and len(ex.hints) >= 2 and ex.task


def test_notebook_01_and_02_step_cells_use_the_names_labkit_checks_and_cleans_up() -> None:
    """``${PREFIX}name`` in a cell is ``Names(prefix).name``: the checks, widgets and clean-up find what the cells made."""
    import re

    names = Names("alice-")
    for number, wanted in ((1, ["vault_ns", "vault_connection", "reviewer_sa", "reviewer_secret", "reviewer_binding",
                                "k8s_auth_mount"]),
                           (2, ["kv_mount", "kv_policy", "static_role", "static_ns", "static_sa", "static_auth",
                                "static_vss", "static_secret", "app", "k8s_auth_mount", "vault_ns"])):
        steps = "\n".join(c.source for _, c in _cells.step_cells(_cells.read(_cells.notebook_path(number))))
        rendered = steps.replace("${PREFIX}", names.prefix)
        words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", rendered))
        for attr in wanted:
            assert getattr(names, attr) in words, (number, attr, getattr(names, attr))
        assert "alice-alice-" not in rendered
        unprefixed = r"(?<![\w}-])(static-exampleapp|static/exampleapp|kubernetes/|exampleapp-kv-read|vault-to-k8s-sa-auth)"
        assert not re.search(unprefixed, steps) and not re.search(r"(namespace: |-n )vault(?![\w-])", steps), number


def test_notebook_03_first_shows_the_tutorials_policy_then_grants_vso_the_revoke() -> None:
    """The tutorial's read-only policy comes first (the learner sees VSO's revoke refused); the last one grants it,
    so `labkit stage 4` and later leave a lab where VSO revokes its own lease."""
    nb = _cells.read(_cells.notebook_path(3))
    policies = [c.source for _, c in _cells.step_cells(nb)
                if "vault policy write ${PREFIX}exampleapp-database-read" in c.source]
    assert len(policies) == 2, policies
    assert "sys/leases/revoke" not in policies[0]
    revoke_rule = policies[-1].split('path "sys/leases/revoke"', 1)[1].split("}", 1)[0]
    assert 'capabilities = ["update"]' in revoke_rule
