"""Read VSO's warnings by their structure: the event reason, Vault's status code, method, path and error list.

VSO wraps Vault's API errors (``github.com/hashicorp/vault/api`` ``ResponseError.Error()``)::

    Failed to read Vault secret: Error making API request.

    URL: GET http://127.0.0.1:8200/v1/static/data/exampleapp/cred
    Code: 403. Errors:

    * 1 error occurred:
        * permission denied  (a tab, in Vault's text)

A condition's message adds VSO's own fields (``horizon=4.155103404s, err=…``), and lease ids are full of
digits, so a status code is only ever read from the ``Code: NNN.`` line that follows a ``URL:`` line, and
Vault's errors only from the ``* …`` list after ``Errors:``. Nothing else in the text is searched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# vault/api's layout: "URL: <METHOD> <url>\nCode: <NNN>. Errors:\n\n* …" (or ". Raw Message:" for non-JSON bodies)
_API_ERROR = re.compile(r"URL: (?P<method>[A-Z]+) (?P<url>\S+)\s*\nCode: (?P<code>\d{3})\. (?:Errors:|Raw Message:)")
_ERROR_ITEM = re.compile(r"^\s*\* (?P<text>.+?)\s*$", re.MULTILINE)
_MULTIERROR_HEADER = re.compile(r"^\d+ errors? occurred:$")
# VSO's own format strings (vault/client.go) for a read that Vault answered with nothing (a KV v2 404)
_EMPTY_RESPONSE = re.compile(r"(?:empty|nil) response from Vault, path=\"?(?P<path>[^\s\"]+)")


@dataclass(frozen=True)
class VaultAPIError:
    """The structured part of one Vault API error inside VSO's message."""

    code: int
    method: str
    path: str  # the URL's path without /v1, e.g. "static/data/exampleapp/cred" or "auth/kubernetes/login"
    errors: tuple[str, ...] = field(default=())

    @property
    def is_login(self) -> bool:
        return self.path.startswith("auth/") and self.path.endswith("/login")


def parse_vault_error(message: str) -> VaultAPIError | None:
    """The first Vault API error in ``message``, or None when VSO's text holds none."""
    m = _API_ERROR.search(message)
    if not m:
        return None
    path = re.sub(r"^[a-z]+://[^/]+", "", m["url"]).split("?", 1)[0]
    path = path.removeprefix("/v1/").lstrip("/")
    tail = message[m.end():]
    nxt = _API_ERROR.search(tail)  # a second wrapped error starts its own list
    items = [i["text"] for i in _ERROR_ITEM.finditer(tail[: nxt.start()] if nxt else tail)]
    errors = tuple(t for t in items if not _MULTIERROR_HEADER.match(t))
    return VaultAPIError(int(m["code"]), m["method"], path, errors)


def classify(reason: str, message: str) -> str:
    """The likely cause of VSO's warning ``reason``/``message``, for a learner; "" when none is known."""
    if reason.startswith("RolloutRestart"):
        return "a rolloutRestartTargets entry names a Deployment that does not exist (yet): deploy the app"
    err = parse_vault_error(message)
    if err is not None:
        if err.is_login:
            if err.code == 400 and any(e.startswith("invalid role name") for e in err.errors):
                return "the VaultAuth's role does not exist in Vault: check spec.kubernetes.role"
            if err.code in (400, 403):
                return ("Vault refused the login: check the role's bound_service_account_names/namespaces and audience "
                        "against the VaultAuth's serviceAccount and namespace, and the kubernetes auth config")
            return f"Vault answered the login with HTTP {err.code}: check the auth mount (spec.mount) and Vault's log"
        if err.path.startswith("sys/leases/revoke") and err.code == 403:
            return ("the VaultAuth's policy does not allow sys/leases/revoke, so VSO cannot revoke its lease: add "
                    'path "sys/leases/revoke" { capabilities = ["update"] } to the policy')
        if err.code == 403:
            return ("Vault refused to read the path: the path does not exist or the policy does not cover it (Vault answers "
                    "403, not 404, for a path outside the policy, so a typo looks like this): check spec.mount and "
                    "spec.path, then the policy's paths")
        if err.code == 404:
            return "the Vault path does not exist: check the mount and path (kv-v2 reads <mount>/data/<path>)"
        if err.code == 503:
            return "Vault is sealed or unavailable: unseal it (`labkit up` does on the local lab), then wait for the next sync"
        return f"Vault answered {err.method} {err.path} with HTTP {err.code}: read the errors above"
    if _EMPTY_RESPONSE.search(message):
        return "the Vault path does not exist: check the mount and path (kv-v2 reads <mount>/data/<path>)"
    if reason in ("InvalidResourceRef", "VaultClientConfigError", "InvalidConfiguration"):
        return "the VaultAuth or VaultConnection it references is missing or invalid"
    return ""
