"""What every notebook does first: check its parameters, show errors briefly, connect to the lab.

Parameters live in a cell tagged ``parameters`` (papermill injects new values
after it). Their learner defaults are in the notebooks; :data:`CI` holds the
short values CI uses. Setting ``VSOLAB_CI=1`` applies the CI values too (nbval
cannot inject parameters, so it uses that).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from ._duration import duration_seconds as duration_seconds  # it lived here: notebooks and tests import it from here
from ._lost import CONNECTION_ERRORS, explain
from .backends import get_backend
from .backends.contract import Lab
from .errors import LabkitError, NotRunning, ParameterError


class CellCommandFailed(LabkitError):
    """A command in a %%bash cell exited with a non-zero status."""

#: the lab of the last ``setup`` in this kernel, to name the component that stops answering
_current_lab: Lab | None = None

#: the first notebook beyond the tutorial: from here on a notebook's start cell runs `labkit up` (notebook 07 stopped
#: the lab) and `labkit stage N` itself, so its setup does not require a running lab
BEYOND = 8

#: name → (type, learner default)
SPEC: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "BACKEND": (str, "local"),
    "STATE_DIR": ((str, type(None)), None),
    "INTERACTIVE": (bool, True),
    "LIVE_SECONDS": ((int, float), 60),
    "REFRESH_AFTER": (str, "10s"),
    "DEFAULT_TTL": (str, "1m"),
    "MAX_TTL": (str, "3m"),
    "RENEWAL_PERCENT": (int, 67),
    "CERT_TTL": (str, "1m"),
    "ROTATION_PERIOD": (str, "1m"),
    "EXERCISES_SOLVED": (bool, False),
    "STOP_LAB": (bool, True),
}
#: the values CI passes (short TTLs and live views, no interaction). ``EXERCISES_SOLVED``: the exercise cells hold
#: typed solutions (``labkit run-notebooks --solutions`` fills them in), so a check that fails fails its cell.
CI: dict[str, Any] = {
    "INTERACTIVE": False, "LIVE_SECONDS": 6, "REFRESH_AFTER": "3s", "DEFAULT_TTL": "15s", "MAX_TTL": "30s",
    "RENEWAL_PERCENT": 67, "CERT_TTL": "15s", "ROTATION_PERIOD": "10s", "EXERCISES_SOLVED": True,
}


def validate(params: MutableMapping[str, Any]) -> dict[str, Any]:
    """Check the parameters' types and values; return them (with CI values under VSOLAB_CI=1)."""
    out = {k: params.get(k, default) for k, (_, default) in SPEC.items()}
    if os.environ.get("VSOLAB_CI") == "1":
        out.update(CI)
    for name, (typ, _) in SPEC.items():
        value = out[name]
        if (typ in ((int, float), int) and isinstance(value, bool)) or not isinstance(value, typ):
            want = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ParameterError(
                f"Checked the parameter {name}: it should be {want}, but it is {type(value).__name__} ({value!r}).",
                [f"Fix {name} in the cell tagged `parameters` at the top of the notebook.",
                 f"With papermill, pass it typed: -p {name} <value> (or -y '{name}: <value>').",
                 "Restart the kernel and run the notebook from the top."],
            )
    for name in ("REFRESH_AFTER", "DEFAULT_TTL", "MAX_TTL", "CERT_TTL", "ROTATION_PERIOD"):
        duration_seconds(out[name])
    if duration_seconds(out["MAX_TTL"]) < duration_seconds(out["DEFAULT_TTL"]):
        raise ParameterError(f"Checked MAX_TTL ({out['MAX_TTL']}) ≥ DEFAULT_TTL ({out['DEFAULT_TTL']}): it is smaller.",
                             ["Raise MAX_TTL.", "Lower DEFAULT_TTL.", "Use the defaults: DEFAULT_TTL='1m', MAX_TTL='3m'."])
    if not 0 <= out["RENEWAL_PERCENT"] <= 90:
        raise ParameterError(f"Checked RENEWAL_PERCENT={out['RENEWAL_PERCENT']}: VSO accepts 0 to 90.",
                             ["Use 67 (VSO's default).", "Use a value between 0 and 90.", "See the VaultDynamicSecret CRD."])
    return out


def _short_errors() -> None:
    """Show labkit errors as their message, not a traceback (the cell still fails)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str] | None:
        if isinstance(value, subprocess.CalledProcessError):
            # A %%bash cell whose script failed: the command's own message is already on the page, just above.
            etype, value = CellCommandFailed, CellCommandFailed(
                f"Checked the exit status of this %%bash cell: {value.returncode}, so a command in it failed "
                "(its own message is printed just above).",
                ["Read that message, fix the command in the cell and run the cell again: every step is safe to re-run.",
                 "Look at what the cluster says: `kubectl describe <kind> <name> -n <namespace>`, "
                 "`kubectl get events -n <namespace>`, and the operator's log "
                 "(`kubectl logs -n vault-secrets-operator deploy/vault-secrets-operator-controller-manager -c manager`).",
                 "Run `labkit status` in a terminal if Vault or the cluster do not answer."])
        elif not isinstance(value, LabkitError):
            # A part of the lab stopped answering mid-cell: say which, as one paragraph.
            lost = explain(value, _current_lab, "this cell")
            if lost is None:
                shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
                return None
            etype, value = type(lost), lost
        stb = [f"\x1b[1;31m{etype.__name__}\x1b[0m: {value}"]
        shell._showtraceback(etype, value, stb)
        return stb

    ip.set_custom_exc((LabkitError, subprocess.CalledProcessError, *CONNECTION_ERRORS), handler)


def export_params(lab: Lab, params: dict[str, Any]) -> list[str]:
    """Put ``$PREFIX`` (the attendee prefix, empty on a lab of your own) and the parameters a cell uses
    (``$REFRESH_AFTER``, ``$DEFAULT_TTL``, ``$MAX_TTL``, ``$RENEWAL_PERCENT``, ``$CERT_TTL``, ``$ROTATION_PERIOD``) into
    this kernel's environment."""
    from ._cells import PARAM_ENV

    os.environ["PREFIX"] = lab.names.prefix
    for name in PARAM_ENV:
        os.environ[name] = str(params[name])
    return ["PREFIX", *PARAM_ENV]


def use_lab_env(lab: Lab) -> list[str]:
    """Put the lab's environment into this kernel, so `!vault …`, `%%bash` and `!kubectl …` cells reach this lab.

    The same variables `labkit env` prints. Returns their names; [] while the lab has none yet (before its first
    `up`: notebook 00 calls this again after starting the lab).
    """
    try:
        env = lab.env()
    except LabkitError:
        return []
    from ._cells import with_this_python

    os.environ.update(with_this_python(env))
    return sorted(env)


@dataclass
class Session:
    lab: Lab
    params: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


def setup(params: MutableMapping[str, Any], stage: int, *, start: bool = False) -> Session:
    """Validate parameters, shorten error display, and connect to (or start) the lab.

    ``start=True`` (notebook 00) starts the lab; later notebooks need it running.
    """
    _short_errors()
    p = validate(params)
    params.update(p)
    global _current_lab
    lab = _current_lab = get_backend(p["BACKEND"], state=p["STATE_DIR"])
    use_lab_env(lab)
    export_params(lab, p)
    if start or stage >= BEYOND:
        return Session(lab, p)
    if not lab.healthy():
        down = [h.component for h in lab.status() if not h.healthy]
        raise NotRunning(
            f"Checked that the lab is up before notebook {stage:02d}: these parts are not healthy: {', '.join(down)}.",
            ["Run notebook 00 (it starts the lab), or `labkit up` in a terminal.",
             f"Or jump here directly: `labkit stage {stage}` brings the lab to the start of this notebook.",
             "Run `labkit status` and `labkit doctor` to see what is wrong."],
        )
    return Session(lab, p)
