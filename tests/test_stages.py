"""`labkit stage N`, the check cells and the exercises, against a real local lab.

For each notebook N: from an empty lab, `stage N` (twice: idempotent) then notebook N alone with papermill.
Every stage's check fails, with its hint, when its state is broken; every exercise checker fails on an
unsolved exercise (the notebook runs above prove the solutions pass).
"""

from __future__ import annotations

import papermill as pm
import pytest
from _labs import lab_fixture
from _params import ci_params

from labkit import _cells, cache, cleanup, connect, dynamic, exercises, instant, rotation, static, vso
from labkit.backends.local import LocalLab
from labkit.errors import CheckFailed, NotRunning, ParameterError
from labkit.notebook import BEYOND
from labkit.runner import notebooks
from labkit.stages import NOTEBOOKS, RECORDS, prepare_stage

pytestmark = pytest.mark.lab
PARAMS = ci_params()


#: One lab for the module; each case below brings it to the stage it needs (under xdist, one per worker).
lab = lab_fixture(name="stages")


def test_stage_before_up_is_refused(tmp_path):
    with pytest.raises(NotRunning, match="labkit up"):
        prepare_stage(LocalLab(tmp_path / "never-started"), 3)


def test_unknown_stage_number(lab):
    with pytest.raises(ParameterError, match=f"0 to {len(NOTEBOOKS) - 1}"):
        prepare_stage(lab, len(NOTEBOOKS))


def _stage_then_notebook_alone(lab, n, tmp_path):
    prepare_stage(lab, 0, PARAMS)  # an empty lab: whatever a previous case created is removed
    prepare_stage(lab, n, PARAMS)
    prepare_stage(lab, n, PARAMS)  # twice in a row is fine
    nb = notebooks()[n]
    assert nb.name.startswith(f"{n:02d}-")
    typed = tmp_path / "typed" / nb.name  # CI's EXERCISES_SOLVED: the learner typed each exercise's solution
    typed.parent.mkdir()
    _cells.fill_solutions(nb, typed)
    pm.execute_notebook(str(typed), str(tmp_path / nb.name), cwd=str(nb.parent), progress_bar=False, kernel_name="python3",
                        parameters=PARAMS | {"STATE_DIR": str(lab.state.root), "STOP_LAB": False})



# `labkit stage N` then notebook N alone, for every N. Each case starts from an empty lab, so the cases are split
# into classes: under scripts/test.sh (pytest-xdist, --dist loadscope) a class is one unit of work, so the three run
# in parallel workers, each on a lab of its own (the module-scoped fixture is made once per worker).
class TestStageThenNotebookAloneEarly:
    @pytest.mark.parametrize("n", range(5))
    def test_stage_then_notebook_alone(self, lab, n, tmp_path):
        _stage_then_notebook_alone(lab, n, tmp_path)


class TestStageThenNotebookAloneLate:
    @pytest.mark.parametrize("n", [5, 6])
    def test_stage_then_notebook_alone(self, lab, n, tmp_path):
        _stage_then_notebook_alone(lab, n, tmp_path)


class TestStageThenNotebookAloneLast:
    # Notebooks 08-13 (beyond the tutorial) are not here: each one's start cell runs `labkit stage N` itself, and
    # scripts/test.sh runs them in order on a fresh lab of their own (08 from nothing, each later one after another).
    @pytest.mark.parametrize("n", range(7, BEYOND))
    def test_stage_then_notebook_alone(self, lab, n, tmp_path):
        _stage_then_notebook_alone(lab, n, tmp_path)

def _delete(lab, kind: str, name: str, ns: str) -> None:
    from labkit import k8s

    vso.delete(lab, kind, name, ns)
    k8s.wait_for(f"{kind} {name} to be gone (VSO runs its finalizer)", lambda: vso.get(lab, kind, name, ns) is None, 60)


def _fails_with_hint(check, hint_part: str) -> None:
    assert not check.passed
    with pytest.raises(CheckFailed) as info:
        check.require()
    assert "hint:" in str(info.value)
    assert hint_part.lower() in str(info.value).lower(), str(info.value)


def test_checks_fail_with_hints_when_state_is_broken(lab):
    n = lab.names
    prepare_stage(lab, 7, PARAMS)  # everything up to the clean-up exists
    # every exercise is still unsolved: its checker fails with its hint
    exercises._load()
    drills = {d.id for r in RECORDS for d in r.diagnoses}
    for ex in exercises.REGISTRY.values():
        result = exercises.check(lab, ex.id, namespace={}, required=False)  # never raises, whatever is missing
        if ex.id not in drills:
            _fails_with_hint(result, "")
    # A drill's fix check may pass on a lab that was never broken (its fix restores health: `sealed`,
    # `operator-down`); each notebook run proves it fails on the broken state (drills.before_fix), in CI.
    # clean-up's check fails while things exist
    _fails_with_hint(cleanup.check(lab), "revoke")
    # instant updates: turned off again
    # (notebook 06's `kubectl apply` owns syncConfig: a merge patch, as `kubectl patch` would, turns it off)
    from kubernetes import client as kclient

    kclient.CustomObjectsApi(lab.kube).patch_namespaced_custom_object(
        "secrets.hashicorp.com", "v1beta1", n.static_ns, "vaultstaticsecrets", n.static_vss,
        {"spec": {"syncConfig": {"instantUpdates": False}}})
    _fails_with_hint(instant.check(lab, [0.5], 3.0), "instantUpdates")
    # client cache: operator without persistence
    lab.restart_operator(client_cache_persistence_model="none")
    _fails_with_hint(cache.check(lab), "Helm upgrade")
    # rotation: nothing observed
    _fails_with_hint(rotation.check(lab, rotation.Observation()), "renewalPercent")
    # dynamic: the VaultDynamicSecret is gone
    _delete(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    _fails_with_hint(dynamic.check(lab), "does not exist")
    # static: the VaultStaticSecret is gone
    _delete(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    _fails_with_hint(static.check(lab), "does not exist")
    # connect: the VaultConnection is gone
    _delete(lab, "VaultConnection", n.vault_connection, n.vault_ns)
    _fails_with_hint(connect.check(lab), "spec.address")


def test_static_check_names_a_wrong_vault_path(lab):
    prepare_stage(lab, 3, PARAMS)
    n = lab.names
    vso.apply(lab, static.static_secret(lab, PARAMS["REFRESH_AFTER"], path="exampleapp/typo"))
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(e[0] == "Warning" for e in vso.events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)):
            break
        time.sleep(0.5)
    hint = vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    assert "path does not exist" in hint, hint


def test_vault_auth_with_missing_role_is_explained(lab):
    prepare_stage(lab, 3, PARAMS)
    n = lab.names
    vso.apply(lab, static.vault_auth(lab, role="no-such-role"))
    vso.apply(lab, static.static_secret(lab, "2s", path="exampleapp/creds") | {})
    import time

    time.sleep(8)
    hint = vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    assert "role" in hint.lower() or "refused" in hint.lower(), hint
    vso.apply(lab, static.vault_auth(lab))
