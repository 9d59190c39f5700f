"""Notebook 13's drills (labkit.drills_sync): each diagnosis refuses every wrong cause with its evidence and accepts the
right one; a wrong answer fails the cell under CI; before_fix refuses a lab whose fix check already passes."""

from __future__ import annotations

from typing import Any

import pytest

from labkit import drills, drills_sync, exercises
from labkit.errors import CheckFailed

DRILLS = [d.id for d in drills_sync.STAGE.diagnoses]


def test_every_drill_has_its_fix_exercise_in_the_same_record() -> None:
    assert DRILLS == ["sealed", "restart-every-refresh", "static-rotation-no-restart", "operator-down"]
    assert {e.id for e in drills_sync.STAGE.exercises} == set(DRILLS)
    assert drills_sync.STAGE.requires == (1, 2, 3)


@pytest.mark.parametrize("drill", DRILLS)
def test_diagnose_refuses_each_wrong_cause_and_accepts_the_right_one(drill: str) -> None:
    d = drills.get(drill)
    for letter in d.choices:
        result = drills.diagnose(drill, letter, {})
        if letter == d.answer:
            assert result.passed and d.because in str(result)
        else:
            assert not result.passed and d.why_not[letter] in str(result)
    assert drills.diagnose(drill, f"({d.answer.upper()})", {}).passed  # "(B)" reads as "b"


@pytest.mark.parametrize("drill", DRILLS)
def test_a_wrong_diagnosis_fails_the_cell_when_required(drill: str) -> None:
    d = drills.get(drill)
    wrong = next(k for k in d.choices if k != d.answer)
    with pytest.raises(CheckFailed):
        drills.diagnose(drill, wrong, {"EXERCISES_SOLVED": True})
    assert drills.diagnose(drill, d.answer, {"EXERCISES_SOLVED": True}, required=True).passed


class _Own:
    backend = "local"


@pytest.mark.parametrize("drill", DRILLS)
def test_before_fix_raises_when_the_fix_check_already_passes(drill: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = exercises._get(drill)

    def passing(lab: Any, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
        return [("fixed already", True, "")]

    def failing(lab: Any, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
        return [("still broken", False, "look here")]

    monkeypatch.setattr(ex, "checker", passing)
    with pytest.raises(drills.DrillNotBroken):
        drills.before_fix(_Own(), drill, {"EXERCISES_SOLVED": True})  # type: ignore[arg-type]
    assert drills.before_fix(_Own(), drill, {}).passed  # type: ignore[arg-type]  # not required: shown only
    monkeypatch.setattr(ex, "checker", failing)
    result = drills.before_fix(_Own(), drill, {"EXERCISES_SOLVED": True})  # type: ignore[arg-type]
    assert not result.passed and "FAILS, as it should" in result.title and "look here" in str(result)


class _Shared:
    backend = "external"


@pytest.mark.parametrize("drill", ["sealed", "operator-down"])
def test_drills_that_stop_shared_things_are_skipped_on_a_shared_lab(drill: str) -> None:
    results = exercises._get(drill).checker(_Shared(), {})  # type: ignore[arg-type]
    assert len(results) == 1 and results[0][1] and results[0][0].startswith("skipped")


@pytest.mark.parametrize("drill", ["sealed", "operator-down"])
def test_before_fix_reports_a_skipped_drill_on_a_shared_lab_without_failing(drill: str) -> None:
    result = drills.before_fix(_Shared(), drill, {"EXERCISES_SOLVED": True})  # type: ignore[arg-type]
    assert result.passed and "skipped" in result.title
