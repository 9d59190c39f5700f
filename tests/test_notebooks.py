"""The committed notebooks: clean, parameterised, each with a check and (from 02 on) an exercise."""

from __future__ import annotations

import json

import pytest

from labkit.notebook import SPEC
from labkit.runner import notebooks
from labkit.stages import NOTEBOOKS

NBS = notebooks()


def cells(nb):
    return json.loads(nb.read_text())["cells"]


def test_one_notebook_per_stage_in_order():
    assert [p.stem for p in NBS] == NOTEBOOKS


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_committed_without_outputs(nb):
    for c in cells(nb):
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, f"{nb.name} carries outputs"
    assert "widgets" not in json.loads(nb.read_text()).get("metadata", {})


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_parameters_cell_declares_every_parameter(nb):
    tagged = [c for c in cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    src = "".join(tagged[0]["source"])
    ns: dict = {}
    exec(src, ns)  # our own notebook's literal assignments
    assert set(SPEC) <= set(ns)


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_opens_with_a_story_and_ends_with_checks(nb):
    cs = cells(nb)
    assert cs[0]["cell_type"] == "markdown" and "you will" in "".join(cs[0]["source"]).lower()
    checks = [c for c in cs if c["cell_type"] == "code" and ".require()" in "".join(c["source"])]
    assert checks, f"{nb.name} has no check-your-work cell"
    assert all("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in checks)
    src = "\n".join("".join(c["source"]) for c in cs)
    typed = [c["id"] for c in cs if c["cell_type"] == "code" and c.get("id", "").startswith("exercise-")]
    if typed:  # converted: at least two exercises, each with its checker and hint cells
        assert int(nb.name[:2]) >= 1 and len(typed) >= 2 and "Try it yourself" in src
        for cid in typed:
            ex = cid.removeprefix("exercise-")
            if ex.startswith("diagnose-"):  # a drill's diagnosis: the cell itself asks drills.diagnose
                drill = ex.removeprefix("diagnose-")
                cell = next(c for c in cs if c.get("id") == cid)
                assert f"exercise-{drill}" in typed and f'drills.before_fix(lab, "{drill}", globals())' in src, cid
                assert f'drills.choices("{drill}")' in src and "diagnose" in "".join(cell["source"]), cid
                continue
            assert f'exercises.check(lab, "{ex}", globals())' in src and f'exercises.hint("{ex}")' in src, cid
    elif int(nb.name[:2]) >= 2:  # not yet converted: the old numbered exercise
        assert "Try it yourself" in src and "exercises.check(lab" in src and "exercises.solve(lab" in src


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_every_action_cell_mentions_no_hardcoded_secret(nb):
    src = "\n".join("".join(c["source"]) for c in cells(nb))
    assert "hvs." not in src and "reveal=True" not in src


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_names_imported_from_labkit_are_modules(nb):
    import importlib
    import re
    import types

    src = "\n".join("".join(c["source"]) for c in cells(nb) if c["cell_type"] == "code")
    for names in re.findall(r"^from labkit import (.+)$", src, flags=re.M):
        for name in (n.strip() for n in names.split(",")):
            obj = getattr(importlib.import_module("labkit"), name, None) or importlib.import_module(f"labkit.{name}")
            assert isinstance(obj, types.ModuleType), f"labkit.{name} is not the module {nb.name} expects"
