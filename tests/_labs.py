"""Local labs for tests, each in a state directory of its own: one fixture factory, in the style of
pytest-postgresql's ``factories.postgresql_proc``, and the context manager it is built on.

    lab = lab_fixture(4, params=ci_params(), name="faults")   # a module-scoped fixture named ``lab``

The fixture skips when the local lab's prerequisites are missing (``labkit doctor``), starts the lab, brings it to
the start of notebook ``stage`` and always takes it down with ``down(purge=True)`` (also when ``up`` failed half-way:
no process is left behind). Its scope decides what shares a lab: under scripts/test.sh (pytest-xdist,
``--dist loadscope``) a module, or a class, is one unit of work, so a module- or class-scoped lab is made in the
worker that runs that unit, and never relies on another module having run first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

Scope = Literal["session", "package", "module", "class", "function"]


def skip_unless_local_lab_can_run() -> None:
    """Skip the test, naming what is missing and how to fix it, when the local lab cannot start here."""
    from labkit.doctor import local_checks

    missing = [f"{r.name} ({r.fix})" for r in local_checks() if not r.ok]
    if missing:
        pytest.skip("the local lab's prerequisites are missing: " + "; ".join(missing) + " — run `labkit doctor`")


@contextlib.contextmanager
def running_lab(stage: int = 0, *, operator: bool = True, params: dict[str, Any] | None = None, name: str = "lab",
                prepare: Callable[[Any], object] | None = None, timings: dict[str, float] | None = None) -> Iterator[Any]:
    """A local lab in a new state directory, up and at the start of notebook ``stage``; purged on exit.

    :param stage: the notebook whose start the lab is brought to (``labkit.stages.prepare_stage``); 0 leaves the
        fresh lab as ``up`` made it.
    :param operator: ``up(operator=...)``: False leaves VSO's Helm release uninstalled, as notebook 00 does.
    :param params: the notebook parameters the stage's step cells run with (``tests/_params.ci_params()``);
        None: the notebooks' learner defaults, as ``prepare_stage`` takes them.
    :param name: part of the state directory's name, ``/tmp/vsolab-<name>-XXXX/state``.
    :param prepare: called with the lab after the stage is prepared, before the lab is handed out.
    :param timings: when given, ``lab_up_s`` (``up``) and ``stages_s`` (the stage and ``prepare``) are put in it.
    """
    from labkit.backends import get_backend

    skip_unless_local_lab_can_run()
    # Not pytest's tmp_path: under root its 0700 parents would keep out the unprivileged user PostgreSQL runs as
    # (its data lives in /var/lib/vsolab-pg/<lab id>, see State.pg_data_dir); the state directory itself is 0700.
    base = Path(tempfile.mkdtemp(prefix=f"vsolab-{name}-"))
    os.chmod(base, 0o755)
    root = base / "state"
    lab = get_backend("local", state=root)
    try:
        t0 = time.monotonic()
        lab.up(progress=lambda m: None, operator=operator)
        t1 = time.monotonic()
        if stage:
            from labkit.stages import prepare_stage

            prepare_stage(lab, stage, params)
        if prepare is not None:
            prepare(lab)
        if timings is not None:
            timings.update(lab_up_s=round(t1 - t0, 1), stages_s=round(time.monotonic() - t1, 1))
        yield lab
    finally:
        try:
            lab.down(purge=True)
            assert not root.exists(), f"down(purge=True) left the state directory {root}"
        finally:
            shutil.rmtree(base, ignore_errors=True)


def lab_fixture(stage: int = 0, *, scope: Scope = "module", operator: bool = True, params: dict[str, Any] | None = None,
                name: str = "lab", requires: Sequence[str] = (), prepare: Callable[[Any], object] | None = None,
                timings: dict[str, float] | None = None) -> Any:
    """Make a fixture giving a local lab of its own at the start of notebook ``stage``, shared within ``scope``.

    Assign it to the fixture's name, as with pytest-postgresql's factories: ``lab = lab_fixture(6, params=ci_params())``.
    It skips when the local lab's prerequisites are missing, and always ends with ``down(purge=True)``.

    :param stage: the notebook whose start the lab is brought to (``labkit.stages.prepare_stage``); 0: a fresh lab.
    :param scope: the pytest scope the lab is shared in (``"module"``, ``"class"``, ``"session"``, ...).
    :param operator: ``up(operator=...)``: False leaves VSO's Helm release uninstalled, as notebook 00 does.
    :param params: the notebook parameters for the stage's step cells (``ci_params()``); None: the learner defaults.
    :param name: part of the state directory's name, ``/tmp/vsolab-<name>-XXXX/state``.
    :param requires: fixtures requested first, e.g. one that skips unless the tests run as root.
    :param prepare: called with the lab after the stage is prepared, before the lab is handed out.
    :param timings: when given, ``lab_up_s`` and ``stages_s`` are put in it.
    """

    def _lab(request: pytest.FixtureRequest) -> Iterator[Any]:
        for fixture in requires:
            request.getfixturevalue(fixture)
        with running_lab(stage, operator=operator, params=params, name=name, prepare=prepare, timings=timings) as lab:
            yield lab

    _lab.__doc__ = (f"A local lab of its own ({scope} scope) at the start of notebook {stage:02d}"
                    f"{'' if operator else ', without the operator'}; purged afterwards.")
    return pytest.fixture(scope=scope)(_lab)
