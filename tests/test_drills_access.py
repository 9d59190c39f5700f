"""Notebook 12's drills (labkit.drills_access) without a lab: every diagnosis refuses each wrong letter with its
evidence and accepts the right one; CI's required mode fails a wrong answer; before_fix refuses a lab the break did
not break. The notebook run itself (papermill at CI parameters) proves each checker on the real broken and fixed lab."""

from __future__ import annotations

from typing import Any

import pytest

from labkit import drills, drills_access, exercises
from labkit._stage import Diagnosis
from labkit.errors import CheckFailed, ParameterError

DRILLS = drills_access.STAGE.diagnoses
IDS = [d.id for d in DRILLS]


def test_the_stage_lists_four_drills_each_with_its_fix_exercise() -> None:
    assert IDS == ["kv-data-path", "audience", "reviewer-jwt", "not-owner"]
    assert [e.id for e in drills_access.STAGE.exercises] == IDS
    assert drills_access.STAGE.requires == (1, 2)
    for ex in drills_access.STAGE.exercises:
        assert len(ex.hints) >= 3 and ex.task


@pytest.mark.parametrize("d", DRILLS, ids=IDS)
def test_a_symptom_never_names_its_cause(d: Diagnosis) -> None:
    # the right choice's key words do not appear in the symptom the learner reads first
    for word in ("data/", "audience", "reviewer", "TokenReview", "owner", "overwrite"):
        if word.lower() in d.choices[d.answer].lower():
            assert word.lower() not in d.symptom.lower(), (d.id, word)
    assert 3 <= len(d.choices) <= 4


@pytest.mark.parametrize("d", DRILLS, ids=IDS)
def test_each_wrong_letter_is_refused_with_the_evidence_that_rules_it_out(d: Diagnosis) -> None:
    for letter in sorted(set(d.choices) - {d.answer}):
        result = drills.diagnose(d.id, letter, {}, required=False)
        assert not result.passed
        assert d.why_not[letter] in str(result)
        with pytest.raises(CheckFailed):
            drills.diagnose(d.id, letter, {"EXERCISES_SOLVED": True})


@pytest.mark.parametrize("d", DRILLS, ids=IDS)
def test_the_right_letter_passes_with_its_evidence(d: Diagnosis) -> None:
    for typed in (d.answer, d.answer.upper(), f"({d.answer})"):
        result = drills.diagnose(d.id, typed, {"EXERCISES_SOLVED": True})
        assert result.passed and d.because in str(result)


def test_a_letter_that_is_no_choice_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError):
        drills.diagnose("kv-data-path", "z", {})


class _Lab:
    """Nothing here is called: the checkers are replaced at the boundary."""


@pytest.mark.parametrize("id", IDS)
def test_before_fix_refuses_a_lab_the_break_did_not_break(monkeypatch: pytest.MonkeyPatch, id: str) -> None:
    ex = exercises._get(id)
    monkeypatch.setattr(ex, "checker", lambda lab, ns: [("fixed already", True, "")])
    with pytest.raises(drills.DrillNotBroken):
        drills.before_fix(_Lab(), id, {"EXERCISES_SOLVED": True})  # type: ignore[arg-type]
    # a learner's kernel (not CI) shows it instead of failing
    assert "passes: not broken" in str(drills.before_fix(_Lab(), id, {}))  # type: ignore[arg-type]


@pytest.mark.parametrize("id", IDS)
def test_before_fix_shows_the_failing_check_and_its_hints(monkeypatch: pytest.MonkeyPatch, id: str) -> None:
    ex = exercises._get(id)
    monkeypatch.setattr(ex, "checker", lambda lab, ns: [("the fix is in", False, "look at the events")])
    result = drills.before_fix(_Lab(), id, {"EXERCISES_SOLVED": True})  # type: ignore[arg-type]
    assert not result.passed and "FAILS, as it should" in str(result) and "look at the events" in str(result)


def test_the_login_probe_reads_vaults_status_from_hvacs_exception_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_login_status`` classifies Vault's answer by hvac's exception class (Vault's status code), never by text."""
    from hvac import exceptions as hvexc

    from labkit import drills_access as m

    class _Kube:
        def create_namespaced_service_account_token(self, *a: Any) -> Any:
            return type("T", (), {"status": type("S", (), {"token": "jwt"})()})()

    class _Auth:
        def __init__(self, exc: Exception | None) -> None:
            self.exc = exc
            self.kubernetes = self
            self.token = self

        def login(self, **kw: Any) -> None:
            if self.exc:
                raise self.exc

        def revoke_self(self) -> None:
            return None

    class _Names:
        drills_sa, drills_ns, k8s_auth_mount = "drills-sa", "drills-access", "kubernetes"

    lab = type("L", (), {"names": _Names(), "kube": None, "vault_addr": "http://127.0.0.1:1"})()
    monkeypatch.setattr(m.kclient, "CoreV1Api", lambda api: _Kube())
    for exc, code in ((hvexc.Forbidden("permission denied"), 403), (hvexc.InvalidRequest("x"), 400),
                      (hvexc.InternalServerError("x"), 500), (None, 200)):
        monkeypatch.setattr(m.hvac, "Client", lambda url, exc=exc: type("C", (), {"auth": _Auth(exc)})())
        assert m._login_status(lab, "vault-role-drills") == code  # type: ignore[arg-type]
