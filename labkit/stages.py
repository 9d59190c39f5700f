"""``labkit stage N``: bring the lab to the state at the start of notebook N.

Everything the earlier notebooks create is applied by running those notebooks' own step cells
(:func:`labkit._cells.run_steps`: the ``%%bash`` cells tagged ``step``, the learner's commands); everything later
notebooks create is removed. Idempotent. A notebook not yet written as step cells falls back to its Python steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from . import _cells, cleanup, connect, dynamic, rotation, static
from .errors import NotRunning, ParameterError
from .notebook import SPEC, validate

NOTEBOOKS = [
    "00-welcome-and-setup",
    "01-install-vso-and-connect",
    "02-static-secrets",
    "03-dynamic-secrets",
    "04-rotation-live",
    "05-client-cache",
    "06-instant-updates",
    "07-clean-up",
]


def apply_connect(lab: Any, p: dict[str, Any]) -> None:
    cleanup.install_operator(lab)
    connect.create_vault_namespace(lab)
    connect.create_vault_connection(lab)
    connect.create_token_reviewer(lab)
    connect.enable_kubernetes_auth(lab)


def apply_static(lab: Any, p: dict[str, Any]) -> None:
    static.enable_kv(lab)
    if not static.read_secret(lab):
        static.write_creds(lab)
    static.write_policy(lab)
    static.create_role(lab)
    static.create_namespace(lab)
    static.create_vault_auth(lab)
    static.create_static_secret(lab, p["REFRESH_AFTER"])


def apply_dynamic(lab: Any, p: dict[str, Any]) -> None:
    dynamic.enable_database(lab)
    dynamic.configure_connection(lab)
    dynamic.create_db_role(lab, p["DEFAULT_TTL"], p["MAX_TTL"])
    dynamic.write_policy(lab)
    dynamic.create_role(lab)
    dynamic.create_namespace(lab)
    dynamic.create_vault_auth(lab)
    dynamic.create_dynamic_secret(lab, p["RENEWAL_PERCENT"])
    dynamic.deploy_app(lab)


def apply_rotation(lab: Any, p: dict[str, Any]) -> None:
    rotation.use_short_ttls(lab, p["DEFAULT_TTL"], p["MAX_TTL"], p["RENEWAL_PERCENT"])


def _noop(lab: Any) -> None:
    return None


#: notebook number → (what it creates, when its notebook has no step cells yet; how to remove it)
STAGES: dict[int, tuple[Callable[[Any, dict[str, Any]], None] | None, Callable[[Any], Any]]] = {
    1: (apply_connect, cleanup.undo_connect_and_operator),
    2: (apply_static, cleanup.undo_static),
    3: (apply_dynamic, cleanup.undo_dynamic),
    4: (apply_rotation, _noop),
    5: (None, cleanup.undo_cache),  # notebook 05's step cells
    6: (None, cleanup.undo_instant),  # notebook 06's step cells
}


def apply_stage(lab: Any, k: int, p: dict[str, Any]) -> None:
    """Do what notebook ``k`` does: its step cells, or (not yet converted) its Python steps."""
    python_steps = STAGES[k][0]
    if python_steps is None or _cells.step_cells(_cells.read(_cells.notebook_path(k))):
        _cells.run_steps(lab, k, p)
    else:
        python_steps(lab, p)


def prepare_stage(lab: Any, n: int, params: dict[str, Any] | None = None) -> list[str]:
    """Make the lab look as it does at the start of notebook ``n``; return what was done."""
    if not 0 <= n < len(NOTEBOOKS):
        raise ParameterError(f"Checked the stage number {n}: notebooks are numbered 0 to {len(NOTEBOOKS) - 1}.",
                             [f"Pick one of: {', '.join(NOTEBOOKS)}.", "Use the number at the start of the file name.",
                              "Run `labkit stage 0` to start from the beginning."])
    if not lab.healthy():
        raise NotRunning(
            f"Checked that the lab is up before preparing stage {n}: it is not.",
            ["Start it first: `labkit up`.", "Run `labkit status` to see which part is down.",
             "Run `labkit doctor` if `labkit up` fails."],
        )
    p = validate(params or {k: d for k, (_, d) in SPEC.items()})
    done = []
    # One writer at a time: `labkit up`/`down` or another `stage` on the same lab wait for this one.
    lock = getattr(lab, "lock", None)
    with lock(f"labkit stage {n}") if lock else contextlib.nullcontext():
        for k in sorted(STAGES, reverse=True):
            if k >= n:
                STAGES[k][1](lab)
        for k in sorted(STAGES):
            if k < n:
                apply_stage(lab, k, p)
                done.append(NOTEBOOKS[k])
    return done
