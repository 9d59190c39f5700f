"""One record per stage (:class:`labkit._stage.Stage`), declared in its teaching module, covering the notebooks in order;
the inventory of what each stage makes (:meth:`labkit.names.Names.made_by`) matches its notebook's step cells."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import labkit
from labkit import _cells, exercises, stages
from labkit._stage import Exercise, Stage
from labkit.names import Made, Names
from labkit.runner import notebooks

TEACHING = {1: "connect", 2: "static", 3: "dynamic", 4: "rotation", 5: "cache", 6: "instant", 7: "cleanup",
            # beyond the tutorial
            8: "certs", 9: "templates", 10: "staticroles", 11: "authglobal", 12: "drills_access", 13: "drills_sync"}
LAST = max(TEACHING)


def _declared() -> dict[str, Stage]:
    """Module name → the ``STAGE`` it declares, for every labkit module whose source declares one."""
    out = {}
    for path in sorted(Path(labkit.__file__).parent.glob("*.py")):
        if re.search(r"^STAGE\b", path.read_text(), re.MULTILINE):
            record = importlib.import_module(f"labkit.{path.stem}").STAGE
            assert isinstance(record, Stage), path
            out[path.stem] = record
    return out


def test_every_stage_has_exactly_one_record_in_its_teaching_module() -> None:
    declared = _declared()
    assert sorted(r.number for r in declared.values()) == list(range(1, LAST + 1)), declared
    assert {r.number: name for name, r in declared.items()} == TEACHING
    assert list(stages.RECORDS) == [declared[TEACHING[k]] for k in range(1, LAST + 1)]
    assert {k: declared[TEACHING[k]] for k in range(1, LAST + 1)} == stages.STAGES


@pytest.mark.parametrize("number", range(1, LAST + 1))
def test_a_record_has_apply_undo_check_and_exercises(number: int) -> None:
    record = stages.STAGES[number]
    assert record.number == number and record.title
    assert callable(record.apply) and callable(record.undo) and callable(record.check)
    assert len(record.exercises) >= 2 and all(isinstance(e, Exercise) for e in record.exercises)
    assert all(e.task and len(e.hints) >= 2 and callable(e.checker) for e in record.exercises)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.number = 0  # type: ignore[misc]


def test_the_records_cover_the_notebooks_in_order() -> None:
    stems = [p.stem for p in notebooks()]
    assert stems == stages.NOTEBOOKS == [stages.WELCOME, *(r.notebook for r in stages.RECORDS)]
    for record in stages.RECORDS:
        assert _cells.notebook_path(record.number).stem == record.notebook


def test_the_exercises_are_read_from_the_records() -> None:
    ids = [e.id for r in stages.RECORDS for e in r.exercises]
    assert len(ids) == len(set(ids)), "an exercise id is declared twice"
    assert set(exercises._load()) == set(ids)
    for record in stages.RECORDS:
        assert exercises.for_notebook(record.number) == list(record.exercises)
    assert exercises.for_notebook(0) == []


class _Recorded(Stage):
    def apply(self, lab: Any, params: dict[str, Any]) -> list[str]:
        lab.calls.append(("apply", self.number))
        return []


class _Lab:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def healthy(self) -> bool:
        return True


def test_prepare_stage_undoes_the_later_stages_latest_first_then_applies_the_earlier_in_order(monkeypatch) -> None:
    def record(k: int) -> Stage:
        return _Recorded(k, f"{k:02d}-x", "x", undo=lambda lab: lab.calls.append(("undo", k)), check=lambda lab: None)

    monkeypatch.setattr(stages, "RECORDS", tuple(record(k) for k in range(1, LAST + 1)))
    monkeypatch.setattr(stages, "STAGES", {r.number: r for r in stages.RECORDS})
    lab = _Lab()
    done = stages.prepare_stage(lab, 3)
    assert lab.calls == [("undo", k) for k in range(LAST, 2, -1)] + [("apply", 1), ("apply", 2)]
    assert done == ["01-x", "02-x"]


def test_a_notebook_beyond_the_tutorial_starts_from_the_stages_it_requires_skipping_those_in_place(monkeypatch) -> None:
    def record(k: int, **kw: Any) -> Stage:
        return _Recorded(k, f"{k:02d}-x", "x", undo=lambda lab: lab.calls.append(("undo", k)), check=lambda lab: None,
                         **kw)

    records = [record(1, in_place=lambda lab: True), *(record(k) for k in range(2, 10)),
               record(10, requires=(1, 3)), *(record(k) for k in range(11, LAST + 1))]
    monkeypatch.setattr(stages, "RECORDS", tuple(records))
    monkeypatch.setattr(stages, "STAGES", {r.number: r for r in records})
    lab = _Lab()
    done = stages.prepare_stage(lab, 10)
    # notebook 07 (clean-up) and every other stage is undone; stage 1 is in place, so only stage 3's steps run
    assert lab.calls == [("undo", k) for k in range(LAST, 0, -1) if k not in (1, 3)] + [("apply", 3)]
    assert done == ["01-x (already in place)", "03-x"]
    assert stages.STAGES[10].before() == (1, 3) and stages.STAGES[4].before() == (1, 2, 3)


def test_the_inventory_names_what_each_notebooks_steps_make() -> None:
    """Every name :meth:`Names.made_by` lists for a stage is in that notebook's step cells (``${PREFIX}`` filled in),
    or a drill's break cell (``break-<id>``: what the learner's mistake makes), so clean-up and the sweep remove what
    the notebook made."""
    names = Names("alice-")
    assert {1, 2, 3, 5} <= set(names.inventory()) and not {4, 6, 7} & set(names.inventory())
    for number in (4, 6, 7):
        assert not names.made_by(number)
    for number in range(1, LAST + 1):
        made = names.made_by(number)
        nb = _cells.read(_cells.notebook_path(number))
        breaks = [c for c in nb.cells if c.cell_type == "code" and str(c.get("id", "")).startswith("break-")]
        steps = "\n".join(c.source for c in [*(c for _, c in _cells.step_cells(nb)), *breaks])
        words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", steps.replace("${PREFIX}", names.prefix)))
        listed = [*made.namespaces, *made.cluster_role_bindings, *made.auth_methods, *made.auth_roles, *made.policies,
                  *made.secrets_engines, *made.database_users]
        assert not [x for x in listed if x not in words], (number, listed)
    everything = names.made
    by_stage = tuple(ns for _, made in sorted(names.inventory().items(), reverse=True) for ns in made.namespaces)
    assert everything.namespaces == by_stage  # the latest stage's first
    assert everything.namespaces[-3:] == (names.dynamic_ns, names.static_ns, names.vault_ns)
    assert names.kv_mount in everything.secrets_engines and names.transit_policy in everything.policies
    assert Made(namespaces=("a",)) + Made(policies=("p",)) == Made(namespaces=("a",), policies=("p",))
