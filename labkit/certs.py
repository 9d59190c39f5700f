"""Stage 8 (notebook 08, beyond the tutorial): Certificates from Vault's PKI engine: VaultPKISecret.

The notebook's steps enable a PKI engine, make a root CA, a role, a policy and a Kubernetes auth role, and try a
VaultPKISecret. On OpenBao 2.7 the VaultPKISecret cannot issue (VSO v1.5.0 always sends ``not_after: ""``, which
OpenBao refuses), so the certificate reaches the app through a VaultDynamicSecret that POSTs to the same
``issue/<role>`` path. This module checks what the steps made, reads certificates from Vault's store and the app,
removes it all again (:func:`undo`), and holds the exercises. The stage's record, :data:`STAGE`, is at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hvac import exceptions as hvexc

from . import app, k8s, vault, vso
from ._certmodel import Cert, parse_pem
from ._duration import duration_seconds
from ._stage import Stage, exercise
from ._teardown import delete_namespace, vault_quiet
from ._vsoerrors import parse_vault_error
from .backends.contract import Lab
from .display import Check, Done

#: how long before an issued certificate's notBefore Vault backdates it, unless the role says otherwise
NOT_BEFORE_DURATION = 30.0


def watch_seconds(cert_ttl: str, live_seconds: float) -> float:
    """How long the live view may wait for a renewal and the app's restart: a whole certificate life plus 30 s for the
    restart (VSO fetches at 67-77 % of it), never less than ``LIVE_SECONDS``."""
    return max(float(live_seconds), duration_seconds(cert_ttl) + 30.0)


def _role(lab: Lab) -> dict[str, Any]:
    n = lab.names
    return (vault.client(lab).read(f"{n.pki_mount}/roles/{n.pki_role}") or {}).get("data") or {}


def issued_at(cert: Cert, not_before_duration: float = NOT_BEFORE_DURATION) -> float:
    """When Vault issued ``cert``: its notBefore plus the role's backdating."""
    return cert.not_before + not_before_duration


@dataclass(frozen=True)
class Stored:
    """A leaf certificate from Vault's store (``LIST <mount>/certs``, ``GET <mount>/cert/<serial>``)."""

    cert: Cert
    revoked_at: float | None


def stored_certs(lab: Lab) -> list[Stored]:
    """The leaf certificates the mount issued for the app's name, oldest first (the CA is left out)."""
    n = lab.names
    c = vault.client(lab)
    try:
        serials = c.list(f"{n.pki_mount}/certs")["data"]["keys"]
    except (hvexc.InvalidPath, TypeError, KeyError):
        return []
    out = []
    for serial in serials:
        data = (c.read(f"{n.pki_mount}/cert/{serial}") or {}).get("data") or {}
        cert = parse_pem(data.get("certificate") or "")
        if cert is not None and n.pki_common_name in cert.subject:
            out.append(Stored(cert, float(data["revocation_time"]) if data.get("revocation_time") else None))
    return sorted(out, key=lambda s: s.cert.not_before)


def replaced_early(cert: Cert, store: list[Stored], not_before_duration: float = NOT_BEFORE_DURATION) -> Cert | None:
    """The certificate ``cert`` replaced while that one was still valid; None when there is none."""
    issued = issued_at(cert, not_before_duration)
    before = [s.cert for s in store if s.cert.not_before < cert.not_before and s.cert.not_after > issued]
    return before[-1] if before else None


def secret_cert(lab: Lab) -> Cert | None:
    n = lab.names
    return parse_pem((k8s.secret_data(lab.kube, n.pki_secret, n.pki_ns) or {}).get("tls.crt", ""))


def app_cert(lab: Lab, timeout: float = 10) -> tuple[str, float | None]:
    """The serial the app's pod started with (``GET /cert``) and that pod's start time."""
    n = lab.names
    try:
        code, body = app.call(lab, n.pki_ns, "/cert", n.app, timeout=timeout)
    except Exception:  # no pod answers: the check says so
        return "", None
    return (str(body.get("serial_number") or "") if code == 200 else ""), body.get("started")


def _role_backdate(lab: Lab) -> float:
    return float(_role(lab).get("not_before_duration") or NOT_BEFORE_DURATION)


def check(lab: Lab, wait: float = 0) -> Check:
    """The certificate reached the Secret, a renewal replaced one before it expired, and the app restarted on it.
    ``wait``: seconds to wait for the app to run a renewed certificate (VSO may be between two renewals)."""
    n = lab.names
    deadline = time.monotonic() + wait
    while True:
        store, backdate = stored_certs(lab), _role_backdate(lab)
        current = secret_cert(lab)
        app_serial, started = app_cert(lab)
        by_serial = {s.cert.serial: s.cert for s in store}
        running = by_serial.get(app_serial)
        prev = replaced_early(current, store, backdate) if current else None
        app_prev = replaced_early(running, store, backdate) if running else None
        app_ok = app_prev is not None and running is not None and started is not None and \
            started >= issued_at(running, backdate) - 1
        if app_ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    va = vso.get(lab, "VaultAuth", n.pki_auth, n.pki_ns)
    vds = vso.get(lab, "VaultDynamicSecret", n.pki_vds, n.pki_ns)
    return Check("certificates: PKI engine → VSO → TLS Secret → app", [
        (f"Vault's {n.pki_mount}/ has a CA and the role {n.pki_role}", bool(_role(lab)),
         "run the PKI engine, root CA and role cells again"),
        (f"VaultAuth {n.pki_ns}/{n.pki_auth} is valid", bool(va and (va.get("status") or {}).get("valid")),
         vso.hint_from_events(lab, "VaultAuth", n.pki_auth, n.pki_ns) if va else "apply the VaultAuth first"),
        (f"VaultDynamicSecret {n.pki_ns}/{n.pki_vds} is synced", vso.is_synced(vds),
         vso.hint_from_events(lab, "VaultDynamicSecret", n.pki_vds, n.pki_ns) if vds else "apply the VaultDynamicSecret"),
        (f"Secret {n.pki_ns}/{n.pki_secret} holds a certificate for {n.pki_common_name}",
         current is not None and n.pki_common_name in current.subject,
         f"`kubectl describe vaultdynamicsecret {n.pki_vds} -n {n.pki_ns}`: its events say why it did not sync"),
        ("a renewal replaced a certificate before it expired", prev is not None,
         "VSO fetches a new certificate at 67-77 % of refreshAfter: wait for it (the live view) and check again"),
        ("the app restarted with a renewed certificate", app_ok,
         f"rolloutRestartTargets must name the Deployment; `kubectl get pods -n {n.pki_ns}` shows the new pod"),
    ])


def _events_400(lab: Lab) -> list[str]:
    """Vault's refusals (HTTP 400) in the VaultDynamicSecret's warning events, as Vault's error texts."""
    n = lab.names
    out: list[str] = []
    for typ, _, msg in vso.events(lab, "VaultDynamicSecret", n.pki_vds, n.pki_ns):
        err = parse_vault_error(msg or "") if typ == "Warning" else None
        if err is not None and err.code == 400:
            out.extend(err.errors or ("400",))
    return out


def _params(lab: Lab) -> dict[str, str]:
    n = lab.names
    return dict(((vso.get(lab, "VaultDynamicSecret", n.pki_vds, n.pki_ns) or {}).get("spec") or {}).get("params") or {})


def _app_on(lab: Lab, want: Any, seconds: float) -> tuple[Cert | None, str]:
    """Wait until the Secret's certificate satisfies ``want`` and the app runs it; (certificate, app serial)."""
    deadline = time.monotonic() + seconds
    while True:
        cert, (serial, _) = secret_cert(lab), app_cert(lab, timeout=5)
        if (cert is not None and want(cert) and serial == cert.serial) or time.monotonic() > deadline:
            return cert, serial
        time.sleep(1)


def _sans(lab: Lab) -> set[str]:
    from cryptography import x509

    n = lab.names
    pem = (k8s.secret_data(lab.kube, n.pki_secret, n.pki_ns) or {}).get("tls.crt", "")
    if "BEGIN CERTIFICATE" not in pem:
        return set()
    c = x509.load_pem_x509_certificate(pem[pem.index("-----BEGIN CERTIFICATE-----"):].encode())
    try:
        return set(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return set()


@exercise(
    "alt-name",
    "Ask for the extra name hashicups-exampleapp.${PREFIX}pki-exampleapp.svc.cluster.local (params.alt_names); read "
    "Vault's refusal in VSO's events, then let the role allow it.",
    ["`kubectl describe vaultdynamicsecret vault-cert -n ${PREFIX}pki-exampleapp`: which status code, and which name "
     "does Vault name?",
     "400: the role's allowed_domains has only ${PREFIX}pki-exampleapp.svc. A name under svc.cluster.local is not a "
     "subdomain of it.",
     "Write the role again with allowed_domains=${PREFIX}pki-exampleapp.svc,${PREFIX}pki-exampleapp.svc.cluster.local "
     "(and its other fields). VSO retries on its own, and restarts the app with the new certificate."])
def _alt_name(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    name = f"{n.app}.{n.pki_ns}.svc.cluster.local"
    asked = name in (_params(lab).get("alt_names") or "").split(",")
    allowed = f"{n.pki_ns}.svc.cluster.local" in (_role(lab).get("allowed_domains") or [])
    cert, serial = _app_on(lab, lambda c: name in _sans(lab), 30 if asked and allowed else 0)
    refused = _events_400(lab)
    return [
        (f"the VaultDynamicSecret asks for {name}", asked, "params.alt_names in the VaultDynamicSecret"),
        ("VSO reported Vault's refusal (400)", bool(refused),
         "ask for the name before you change the role, then read the events"),
        (f"the role {n.pki_role} allows {n.pki_ns}.svc.cluster.local", allowed, "allowed_domains takes a list"),
        ("the Secret's certificate carries the name", cert is not None and name in _sans(lab),
         "VSO retries after a refusal with a growing back-off: wait a few seconds"),
        ("the app restarted with that certificate", cert is not None and serial == cert.serial,
         f"`kubectl get pods -n {n.pki_ns}`"),
    ]


@exercise(
    "ttl-cap",
    "Ask for certificates of 10m (params.ttl), longer than the role's max_ttl. Predict: refused, or shortened? "
    "Then measure the lifetime of the certificate VSO writes.",
    ["Change params.ttl in the VaultDynamicSecret; VSO fetches at once, because the spec changed.",
     "`kubectl get secret exampleapp-tls -n ${PREFIX}pki-exampleapp -o jsonpath='{.data.tls\\.crt}' | base64 -d | "
     "openssl x509 -noout -startdate -enddate`: notAfter minus notBefore, minus the 30 s Vault backdates.",
     "Vault shortens it to max_ttl and only warns. VSO does not show Vault's warnings: the event says SecretSynced."])
def _ttl_cap(lab: Lab, namespace: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    role = _role(lab)
    max_ttl, backdate = float(role.get("max_ttl") or 0), float(role.get("not_before_duration") or NOT_BEFORE_DURATION)
    asked = duration_seconds(_params(lab).get("ttl") or "0s")
    cert, serial = _app_on(lab, lambda c: abs(c.not_after - c.not_before - backdate - max_ttl) <= 2,
                           30 if max_ttl and asked > max_ttl else 0)
    life = cert.not_after - cert.not_before - backdate if cert else 0.0
    return [
        (f"the VaultDynamicSecret asks for more than the role's max_ttl ({max_ttl:.0f}s)", bool(max_ttl) and asked > max_ttl,
         "params.ttl: 10m"),
        (f"the Secret's certificate lives max_ttl, not what was asked ({life:.0f}s)", bool(cert) and abs(life - max_ttl) <= 2,
         "VSO fetches at once when the spec changes; wait a moment and check again"),
        ("the app restarted with it", cert is not None and serial == cert.serial, f"`kubectl get pods -n {n.pki_ns}`"),
    ]


def undo(lab: Lab) -> Done:
    """The namespace (VaultAuth, the VSO resources, the app), the auth role, the policy and the PKI engine."""
    n = lab.names
    delete_namespace(lab, n.pki_ns)
    c = vault.client(lab)
    vault_quiet(c.auth.kubernetes.delete_role, n.pki_auth_role, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.pki_policy)
    if f"{n.pki_mount}/" in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.disable_secrets_engine(n.pki_mount)
    return Done(f"deleted {n.pki_ns}, the role, the policy and the PKI engine at {n.pki_mount}/",
                f"kubectl delete namespace {n.pki_ns}\nvault secrets disable {n.pki_mount}")


STAGE = Stage(8, "08-pki-certificates", "Certificates from Vault's PKI engine: VaultPKISecret",
              undo=undo, check=check, requires=(1,), exercises=(_alt_name, _ttl_cap))
