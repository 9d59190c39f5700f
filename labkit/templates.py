"""Stage 9 (notebook 09, beyond the tutorial): Secret transformation: templates that render what the app reads.

A KV v2 secret holds the database's fields (username, password, host, port, dbname); a VaultStaticSecret renders
them into one ``DATABASE_URL`` with a Go template, drops ``_raw`` (``excludeRaw``) and the fields themselves
(``excludes``), first inline, then from a shared ``SecretTransformation``. This module mirrors those templates in
Python, so the checks compare the Secret with what the template must render from Vault's *current* values.

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus, unquote, urlsplit

from . import k8s, vault, vso
from ._poll import poll, refresh_wait
from ._stage import Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from .backends.contract import Lab
from .display import Check, Done, mask

#: the fields the KV secret holds, which the Secret must not carry once the template renders them
FIELDS = ("username", "password", "host", "port", "dbname")
JDBC_VSS = "vault-static-secret-jdbc"
JDBC_SECRET = "vso-templates-jdbc"


def urlquery(value: str) -> str:
    """Go's ``urlquery`` (``url.QueryEscape``): every byte but letters, digits and ``-_.~`` as ``%XX``, space as ``+``."""
    return quote_plus(value, safe="")


def database_url(kv: dict[str, Any]) -> str:
    """What the notebook's ``DATABASE_URL`` template renders from the KV fields."""
    return (f"postgresql://{kv['username']}:{urlquery(str(kv['password']))}@{kv['host']}:{kv['port']}/"
            f"{kv['dbname']}")


def jdbc_url(kv: dict[str, Any]) -> str:
    """What exercise 1's ``JDBC_URL`` template renders."""
    return (f"jdbc:postgresql://{kv['host']}:{kv['port']}/{kv['dbname']}?user={kv['username']}"
            f"&password={urlquery(str(kv['password']))}")


def pgpass(kv: dict[str, Any]) -> str:
    """What exercise 2's ``pgpass`` template renders: one line of a ``.pgpass`` file."""
    return f"{kv['host']}:{kv['port']}:{kv['dbname']}:{kv['username']}:{kv['password']}"


def vault_fields(lab: Lab) -> dict[str, Any]:
    """The KV secret's current fields ({} before it exists)."""
    n = lab.names
    return vault.kv_get(lab, n.templates_mount, n.templates_path).get("data") or {}


def read_secret(lab: Lab, name: str | None = None) -> dict[str, str]:
    n = lab.names
    return k8s.secret_data(lab.kube, name or n.templates_secret, n.templates_ns) or {}


def _complete(kv: dict[str, Any]) -> bool:
    return set(FIELDS) <= set(kv)


def show_url(lab: Lab) -> str:
    """The rendered URL's parts, the password masked, and whether it decodes back to Vault's password."""
    url = read_secret(lab).get("DATABASE_URL", "")
    if not url:
        return f"no DATABASE_URL in {lab.names.templates_ns}/{lab.names.templates_secret} yet"
    u, kv = urlsplit(url), vault_fields(lab)
    password = unquote(u.password or "")
    return "\n".join([
        f"scheme:   {u.scheme}", f"user:     {u.username}", f"password: {mask(u.password)} (URL-encoded)",
        f"host:     {u.hostname}", f"port:     {u.port}", f"database: {u.path.lstrip('/')}",
        f"the password decodes back to Vault's: {bool(kv) and password == kv.get('password')}",
    ])



def wait_rendered(lab: Lab, seconds: float = 30) -> bool:
    """Wait until the VaultStaticSecret has synced its current spec and ``DATABASE_URL`` is Vault's current one."""
    n = lab.names

    def rendered() -> bool:
        kv = vault_fields(lab)
        synced = vso.is_synced(vso.get(lab, "VaultStaticSecret", n.templates_vss, n.templates_ns))
        return synced and _complete(kv) and read_secret(lab).get("DATABASE_URL") == database_url(kv)

    return bool(poll(rendered, seconds, interval=0.25))


def wait_followed(lab: Lab, refresh_after: str = "10s") -> float | None:
    """Seconds until ``DATABASE_URL`` carries Vault's current password (run it right after ``vault kv patch``);
    None if it did not within refreshAfter plus a margin."""
    start = time.monotonic()
    if not wait_rendered(lab, refresh_wait(refresh_after)):
        return None
    return time.monotonic() - start


#: ``check(followed=…)``'s default: the notebook did not measure how fast the URL follows a new password
NOT_MEASURED = -1.0


def check(lab: Lab, *, followed: float | None = NOT_MEASURED, refresh_after: str = "10s") -> Check:
    """The Secret holds what the template renders from Vault now, and nothing else of Vault's response.

    ``followed`` is :func:`wait_followed`'s measurement (None: it did not follow in time)."""
    n = lab.names
    kv, sec = vault_fields(lab), read_secret(lab)
    vss = vso.get(lab, "VaultStaticSecret", n.templates_vss, n.templates_ns)
    st = vso.get(lab, "SecretTransformation", n.templates_transformation, n.templates_ns)
    refs = [r.get("name") for r in ((((vss or {}).get("spec") or {}).get("destination") or {})
                                    .get("transformation") or {}).get("transformationRefs") or []]
    url_ok = _complete(kv) and sec.get("DATABASE_URL") == database_url(kv)
    events = vso.hint_from_events(lab, "VaultStaticSecret", n.templates_vss, n.templates_ns)
    results = [
        (f"Vault holds {n.templates_mount}/{n.templates_path} with {', '.join(FIELDS)}", _complete(kv),
         "run the `vault kv put` cell again (it writes only when the secret does not exist yet)"),
        (f"VaultStaticSecret {n.templates_ns}/{n.templates_vss} is synced", vso.is_synced(vss), events),
        (f"SecretTransformation {n.templates_transformation} is valid, and the VaultStaticSecret uses it",
         bool(st and ((st.get("status") or {}).get("valid"))) and n.templates_transformation in refs,
         f"apply the SecretTransformation cell, then the VaultStaticSecret with transformationRefs; "
         f"`kubectl describe secrettransformation {n.templates_transformation} -n {n.templates_ns}`"),
        (f"DATABASE_URL in Secret {n.templates_secret} is what the template renders from Vault's current values",
         url_ok, f"VSO renders it at every refresh (refreshAfter); {events}"),
        ("the Secret has no _raw (excludeRaw: true)", bool(sec) and "_raw" not in sec,
         "set `excludeRaw: true` under spec.destination.transformation (excludes never remove _raw)"),
        (f"the Secret carries none of the raw fields ({', '.join(FIELDS)})",
         bool(sec) and not set(FIELDS) & set(sec),
         "exclude them with `excludes: [\".*\"]` in the SecretTransformation (or the VaultStaticSecret)"),
    ]
    if followed != NOT_MEASURED:
        limit = refresh_wait(refresh_after)
        results.append((f"after `vault kv patch`, DATABASE_URL followed the new password within refreshAfter "
                        f"({refresh_after}) and a margin", followed is not None and followed <= limit and url_ok,
                        "run the `vault kv patch` cell, then the `templates.wait_followed` cell right after it"))
    return Check("secret templates: Vault fields → one DATABASE_URL", results)


def _vss_synced_with(lab: Lab, name: str, key: str, expected: Callable[[dict[str, Any]], str],
                     seconds: float) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The VaultStaticSecret ``name`` and its Secret, once the Secret's ``key`` is ``expected(kv)`` (or time is up)."""
    n = lab.names
    kv = vault_fields(lab)

    def done() -> bool:
        obj = vso.get(lab, "VaultStaticSecret", name, n.templates_ns)
        sec = read_secret(lab, (((obj or {}).get("spec") or {}).get("destination") or {}).get("name"))
        return vso.is_synced(obj) and _complete(kv) and sec.get(key) == expected(kv)

    poll(done, seconds, interval=0.25)
    obj = vso.get(lab, "VaultStaticSecret", name, n.templates_ns)
    return obj, read_secret(lab, (((obj or {}).get("spec") or {}).get("destination") or {}).get("name"))


@exercise(
    "jdbc-template",
    "Apply the VaultStaticSecret vault-static-secret-jdbc as given (its template renders JDBC_URL for a Java app); "
    "it does not sync. Find VSO's event reason, fix the template and apply it again.",
    ["`kubectl describe vaultstaticsecret vault-static-secret-jdbc -n ${PREFIX}templates-exampleapp`: the event at "
     "the bottom names the reason (SecretDataBuilderError) and Go's parse error, with the template's line.",
     "`function \"urlqurey\" not defined`: a typo. Go templates check function names when they parse a template, "
     "so nothing renders and VSO does not create the Secret; it tries again about every 5 s.",
     "Write `urlquery` (Go's built-in URL encoder) in the scaffold, and run the cell again: `kubectl apply` replaces "
     "the template, and VSO syncs at its next try."])
def _jdbc_template(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The second VaultStaticSecret syncs, and its Secret holds JDBC_URL as rendered from Vault's current values."""
    n = lab.names
    vss, sec = _vss_synced_with(lab, JDBC_VSS, "JDBC_URL", jdbc_url, 20)
    kv = vault_fields(lab)
    hint = vso.hint_from_events(lab, "VaultStaticSecret", JDBC_VSS, n.templates_ns)
    return [
        (f"VaultStaticSecret {n.templates_ns}/{JDBC_VSS} exists", vss is not None, "apply it (see the scaffold)"),
        (f"VaultStaticSecret {JDBC_VSS} is synced", vso.is_synced(vss), hint),
        (f"the Secret {JDBC_SECRET} holds JDBC_URL as the template renders it from Vault's current values",
         _complete(kv) and sec.get("JDBC_URL") == jdbc_url(kv),
         "compare your template with the scaffold's: the same text, with the function name fixed"),
        (f"the Secret {JDBC_SECRET} has neither _raw nor the raw fields",
         bool(sec) and not ({"_raw", *FIELDS} & set(sec)), "keep `excludeRaw: true` and `excludes: [\".*\"]`"),
    ]


@exercise(
    "pgpass",
    "Add a second template, pgpass (one .pgpass line: host:port:dbname:username:password), to the "
    "SecretTransformation database-url, so that the Secret vso-templates-db carries it beside DATABASE_URL.",
    ["A SecretTransformation's `spec.templates` is a map: key → {text: …}. With no `templateRefs` in the "
     "VaultStaticSecret's transformationRefs, VSO renders every template of the SecretTransformation.",
     "Apply the SecretTransformation again with both templates. VSO watches SecretTransformations and syncs the "
     "VaultStaticSecrets that refer to one when it changes: no need to touch the VaultStaticSecret.",
     "pgpass:\n  text: '{{ .Secrets.host }}:{{ .Secrets.port }}:{{ .Secrets.dbname }}:{{ .Secrets.username }}:"
     "{{ .Secrets.password }}'  (the password as it is: .pgpass does not URL-encode)"])
def _pgpass(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The SecretTransformation has a pgpass template; the Secret carries pgpass and still DATABASE_URL."""
    n = lab.names
    st = vso.get(lab, "SecretTransformation", n.templates_transformation, n.templates_ns)
    has = "pgpass" in (((st or {}).get("spec") or {}).get("templates") or {})
    _, sec = _vss_synced_with(lab, n.templates_vss, "pgpass", pgpass, 20 if has else 0)
    kv = vault_fields(lab)
    return [
        (f"SecretTransformation {n.templates_transformation} has a template pgpass", has,
         f"kubectl get secrettransformation {n.templates_transformation} -n {n.templates_ns} -o yaml"),
        (f"SecretTransformation {n.templates_transformation} is valid",
         bool(((st or {}).get("status") or {}).get("valid")),
         vso.hint_from_events(lab, "SecretTransformation", n.templates_transformation, n.templates_ns)),
        (f"the Secret {n.templates_secret} holds pgpass as rendered from Vault's current values",
         _complete(kv) and sec.get("pgpass") == pgpass(kv),
         "host:port:dbname:username:password, from .Secrets, separated by colons"),
        ("DATABASE_URL is still there and current", _complete(kv) and sec.get("DATABASE_URL") == database_url(kv),
         "keep the DATABASE_URL template in the SecretTransformation (`kubectl apply` replaces the whole map)"),
    ]


@exercise(
    "keep-username",
    "Make the Secret vso-templates-db also carry the raw field username (a sidecar logs it), and still none of "
    "password, host, port, dbname, without changing the shared SecretTransformation database-url.",
    ["VSO applies excludes first, then includes, and the SecretTransformation's excludes are added to the "
     "VaultStaticSecret's own: with `.*` excluded, no include can bring username back.",
     "A transformationRefs entry can leave out the SecretTransformation's excludes: `ignoreExcludes: true` "
     "(and `ignoreIncludes` for its includes). Its templates still render.",
     "In the VaultStaticSecret: transformationRefs: [{name: database-url, ignoreExcludes: true}] and, beside it, "
     "includes: [\"^username$\"] (a regular expression: anchor it, or `user` would also match `username_old`)."])
def _keep_username(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The Secret has username (equal to Vault's) and DATABASE_URL, none of the other fields, no _raw; the shared
    SecretTransformation still excludes everything."""
    n = lab.names
    st = vso.get(lab, "SecretTransformation", n.templates_transformation, n.templates_ns)
    _, sec = _vss_synced_with(lab, n.templates_vss, "username", lambda kv: str(kv["username"]), 20)
    kv = vault_fields(lab)
    others = {"_raw", *FIELDS} - {"username"}
    return [
        (f"SecretTransformation {n.templates_transformation} still excludes .*",
         ".*" in (((st or {}).get("spec") or {}).get("excludes") or []),
         "leave the SecretTransformation as it was: other secrets share it; change the VaultStaticSecret"),
        (f"the Secret {n.templates_secret} has username, equal to Vault's",
         _complete(kv) and sec.get("username") == kv.get("username"),
         vso.hint_from_events(lab, "VaultStaticSecret", n.templates_vss, n.templates_ns)),
        (f"the Secret has none of {', '.join(sorted(others))}", bool(sec) and not others & set(sec),
         "include only ^username$, and keep excludeRaw: true"),
        ("DATABASE_URL is still there and current", _complete(kv) and sec.get("DATABASE_URL") == database_url(kv),
         "keep the transformationRefs entry: ignoreExcludes leaves its templates in"),
    ]


def undo(lab: Lab) -> Done:
    """The namespace (VaultAuth, VaultStaticSecrets, the SecretTransformation), the auth role, the policy, the KV."""
    n = lab.names
    delete_namespace(lab, n.templates_ns)
    c = vault.client(lab)
    vault_quiet(c.auth.kubernetes.delete_role, n.templates_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.templates_policy)
    if f"{n.templates_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.templates_mount)
    return Done(f"deleted {n.templates_ns}, the role, the policy and the KV engine at {n.templates_mount}/",
                f"kubectl delete namespace {n.templates_ns}\nvault secrets disable {n.templates_mount}")


STAGE = Stage(9, "09-secret-templates", "Secret transformation: templates that render what the app reads",
              undo=undo, check=check, exercises=(_jdbc_template, _pgpass, _keep_username), requires=(1,))
