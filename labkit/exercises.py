""""Try it yourself": at least two exercises per notebook from 01 on.

Each exercise is registered by its stage's module with :func:`exercise`: an id (the notebook's exercise cell is
``exercise-<id>``, its checker cell calls ``check(lab, "<id>")``), the task, hints the learner asks for one at a
time (``hint("<id>")``), and a checker that reads real state. The learner types the solution in the exercise cell;
the text CI types is in ``notebooks/solutions/<notebook>.yaml`` (see :mod:`labkit._cells`).

The numbered ``solve``/``check`` below are the old one-exercise-per-notebook form, kept until every notebook has
moved to the registry.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import k8s, static, vault, vso
from .display import Check
from .errors import CheckFailed, ParameterError


@dataclass
class Exercise:
    id: str
    notebook: int
    task: str
    hints: list[str]
    checker: Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]
    #: how many hints this kernel has shown so far
    shown: int = field(default=0)


REGISTRY: dict[str, Exercise] = {}


def exercise(id: str, notebook: int, task: str, hints: list[str]) -> Callable[
        [Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]],
        Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]]:
    """Register a checker: ``checker(lab, namespace) -> [(what was checked, passed, what to look at when not)]``."""
    def register(fn: Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]
                 ) -> Callable[[Any, dict[str, Any]], list[tuple[str, bool, str]]]:
        REGISTRY[id] = Exercise(id, notebook, task, hints, fn)
        return fn
    return register


def _get(id: str) -> Exercise:
    _load()
    if id not in REGISTRY:
        raise ParameterError(f"Looked up the exercise {id!r}: there is no such exercise.",
                             [f"Use one of: {', '.join(sorted(REGISTRY))}.", "Check the id in the cell above.",
                              "Re-run the notebook's first code cell (it imports the exercises)."])
    return REGISTRY[id]


def _load() -> None:
    # the stage modules register their exercises on import
    from . import cache, cleanup, connect, dynamic, instant, rotation  # noqa: F401


def for_notebook(n: int) -> list[Exercise]:
    _load()
    return [e for e in REGISTRY.values() if e.notebook == n]


def hint(id: str) -> str:
    """The next hint for exercise ``id`` (each call shows one more; the last one repeats)."""
    ex = _get(id)
    if not ex.hints:
        return f"hint: no hints for {id}"
    ex.shown = min(ex.shown + 1, len(ex.hints))
    return "\n".join(f"hint {i + 1}/{len(ex.hints)}: {h}" for i, h in enumerate(ex.hints[: ex.shown]))


def check(lab: Any, id: str | int, namespace: dict[str, Any] | None = None, *, required: bool | None = None) -> Check:
    """Check exercise ``id`` against the lab's real state. With ``required`` (default: the notebook's
    ``EXERCISES_SOLVED``, which CI sets after typing the solutions in) a failed check fails the cell."""
    if isinstance(id, int):
        return _check_numbered(lab, id, namespace)
    ex = _get(id)
    ns = namespace if namespace is not None else {}
    result = Check(f"exercise {id}", ex.checker(lab, ns))
    if not result.results:
        raise ParameterError(f"Checked exercise {id}: its checker returned nothing to check.",
                             ["This is a bug in labkit: a checker must check something.", "Report it.",
                              "Skip this exercise meanwhile."])
    if required is None:
        required = bool(ns.get("EXERCISES_SOLVED"))
    if required and not result.passed:
        raise CheckFailed(str(result), ["Follow the note next to each unchecked item.",
                                        f"Ask for a hint: `exercises.hint({id!r})`.",
                                        "Re-run the cells above this exercise, in order."])
    return result


TASKS = {
    2: "Add a second key, api_key, to the KV secret static/exampleapp/creds (keep username and password), "
       "and watch it appear in the Kubernetes Secret vso-static-creds-from-vault.",
    3: "Give the database role vault-role-dynamic-exampleapp a default_ttl of 2m (keep its max_ttl and statements), "
       "then generate one credential and see its lease_duration.",
    4: "Change the VaultDynamicSecret's renewalPercent to 50, so VSO renews at half the lease.",
}


def task(n: int) -> str:
    return f"Try it yourself: {TASKS[n]}"


def solve(lab: Any, n: int, params: dict[str, Any] | None = None, namespace: dict[str, Any] | None = None) -> str:
    """Apply the solution of exercise ``n``; return the code a learner could have written."""
    names = lab.names
    if n == 2:
        data = vault.kv_get(lab, names.kv_mount, names.kv_path).get("data") or {}
        vault.kv_put(lab, names.kv_mount, names.kv_path, {**data, "api_key": secrets.token_urlsafe(16)})
        k8s.wait_for("api_key to reach the Kubernetes Secret", lambda: "api_key" in static.read_secret(lab), 60)
        return "vault kv patch static/exampleapp/creds api_key=<a new key>"
    if n == 3:
        role = vault.read_database_role(lab, names.db_role, mount=names.db_mount)
        vault.create_database_role(lab, names.db_role, db_name=names.db_connection,
                                   creation_statements=role["creation_statements"],
                                   revocation_statements=role["revocation_statements"], default_ttl="2m",
                                   max_ttl=str(max(int(role["max_ttl"]), 120)), mount=names.db_mount)
        return "vault write database/roles/vault-role-dynamic-exampleapp default_ttl=2m ..."
    if n == 4:
        obj = vso.get(lab, "VaultDynamicSecret", names.dynamic_vds, names.dynamic_ns) or {}
        labels = ((obj.get("spec") or {}).get("destination") or {}).get("labels") or {}
        vso.apply(lab, vso.vault_dynamic_secret(
            names.dynamic_vds, names.dynamic_ns, mount=names.db_mount, path=f"creds/{names.db_role}",
            vault_auth_ref=names.dynamic_auth, destination=names.dynamic_secret, renewal_percent=50,
            rollout_restart_targets=[{"kind": "Deployment", "name": names.app}], destination_labels=labels or None))
        vso.wait_synced(lab, "VaultDynamicSecret", names.dynamic_vds, names.dynamic_ns)
        return ("kubectl patch vaultdynamicsecret vault-dynamic-secret -n dynamic-exampleapp --type merge "
                "-p '{\"spec\":{\"renewalPercent\":50}}'")
    raise KeyError(n)


def _check_numbered(lab: Any, n: int, namespace: dict[str, Any] | None = None) -> Check:
    names = lab.names
    if n == 2:
        kv = vault.kv_get(lab, names.kv_mount, names.kv_path).get("data") or {}
        sec = static.read_secret(lab)
        rows = [("Vault's secret has api_key", "api_key" in kv, "vault kv patch static/exampleapp/creds api_key=<value>"),
                ("username and password are still there", {"username", "password"} <= set(kv),
                 "`vault kv put` replaces the whole secret: use `kv patch`, or pass every key"),
                ("the Kubernetes Secret has api_key, equal to Vault's", "api_key" in kv and sec.get("api_key") == kv["api_key"],
                 "wait up to refreshAfter for VSO to sync")]
    elif n == 3:
        role = vault.read_database_role(lab, names.db_role, mount=names.db_mount)
        rows = [("default_ttl is 2m (120s)", int(role.get("default_ttl", 0)) == 120,
                 "vault write database/roles/vault-role-dynamic-exampleapp ... default_ttl=2m (all fields: it replaces the role)"),
                ("the creation statements are still set", bool(role.get("creation_statements")),
                 "writing a role replaces it: pass the creation and revocation statements again")]
    elif n == 4:
        obj = vso.get(lab, "VaultDynamicSecret", names.dynamic_vds, names.dynamic_ns) or {}
        rows = [("renewalPercent is 50", (obj.get("spec") or {}).get("renewalPercent") == 50,
                 "kubectl patch vaultdynamicsecret ... -p '{\"spec\":{\"renewalPercent\":50}}'"),
                ("the VaultDynamicSecret is still synced", vso.is_synced(obj), "check its events")]
    else:
        raise KeyError(n)
    return Check(f"exercise {n}", rows)

