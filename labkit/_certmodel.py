"""The pure model behind the certificate view (notebook 08): a TLS certificate seen over time.

No I/O and no widgets, like :mod:`labkit._livemodel`: ``update(now, …)`` in, plain state out. A *rotation* is a new
serial number in the Secret; it is *early* when it arrived before the previous certificate's notAfter. Only public
facts of a certificate are kept (serial, validity, subject): never the private key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._livemodel import renewal_window

#: VaultPKISecret: VSO adds up to 5 % of the time left to its check when expiryOffset > 0 (computePKIRenewalWindow)
PKI_JITTER = 0.05


@dataclass(frozen=True)
class Cert:
    """The public facts of one certificate (the first in a PEM bundle)."""

    serial: str  # hex, colon-separated, lower case: as Vault prints serial_number
    not_before: float  # unix seconds
    not_after: float
    subject: str = ""

    @property
    def short(self) -> str:
        return short_serial(self.serial)


def short_serial(serial: str) -> str:
    """``1f:2e:3d:4c…`` : enough to tell certificates apart."""
    return serial[:11] + "…" if len(serial) > 11 else serial or "(none)"


def parse_pem(pem: str) -> Cert | None:
    """The first certificate of a PEM bundle (``tls.crt`` is the leaf, then its chain); None when there is none."""
    from cryptography import x509

    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0:
        return None
    c = x509.load_pem_x509_certificate(pem[start:].encode())
    serial = f"{c.serial_number:x}"
    serial = ":".join(serial.zfill(len(serial) + len(serial) % 2)[i:i + 2] for i in range(0, len(serial) + len(serial) % 2, 2))
    return Cert(serial, c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp(), c.subject.rfc4514_string())


def vds_renewal(last_sync: float, refresh_after: float, renewal_percent: int) -> tuple[float, float]:
    """When a VaultDynamicSecret without a lease fetches again: ``renewalPercent`` of ``refreshAfter`` after its last
    sync, plus up to 10 % (VSO's ``computeDynamicHorizonWithJitter``, the same rule as a lease's renewal)."""
    lo, hi = renewal_window(refresh_after, renewal_percent)
    return last_sync + lo, last_sync + hi


def pki_renewal(expiration: float, expiry_offset: float) -> tuple[float, float]:
    """When a VaultPKISecret renews: at ``expiration − expiryOffset``, checked up to 5 % of the time left later when
    the offset is > 0; with no offset, in the last second before notAfter (VSO's ``computePKIRenewalWindow``)."""
    at = expiration - expiry_offset
    return (at, at + PKI_JITTER * max(0.0, expiry_offset)) if expiry_offset > 0 else (expiration - 1.0, expiration)


@dataclass(frozen=True)
class Rotation:
    time: float  # when the new certificate was first seen
    old: Cert
    new: Cert

    @property
    def early_by(self) -> float:
        """Seconds the new certificate arrived before the old one expired (negative: after it expired)."""
        return self.old.not_after - self.time


@dataclass(frozen=True)
class CertState:
    cert: Cert | None
    left: float  # seconds until notAfter (0 when expired)
    lifetime: float  # notAfter − notBefore
    renew_in: tuple[float, float] | None  # seconds until the renewal window opens and closes
    rotations: tuple[Rotation, ...]
    app_serial: str  # the serial the app reports it started with ("" when unknown)
    app_on_current: bool
    events: tuple[tuple[float, str], ...] = ()  # what this update detected: (time, "rotation")

    @property
    def done(self) -> bool:
        """A rotation was seen and the app runs the new certificate."""
        return bool(self.rotations) and self.app_on_current


@dataclass
class CertModel:
    """Successive sightings of a Secret's certificate: the current one, the rotations, the app's serial."""

    cert: Cert | None = None
    rotations: list[Rotation] = field(default_factory=list)
    app_serial: str = ""

    def update(self, now: float, cert: Cert | None, renewal: tuple[float, float] | None = None,
               app_serial: str | None = None) -> CertState:
        """Feed one poll: the Secret's certificate (None: missing), VSO's renewal window (absolute times), the app's
        serial (None: not read this time, keep the last)."""
        events: list[tuple[float, str]] = []
        if cert is not None:
            if self.cert is not None and cert.serial != self.cert.serial and cert.not_before >= self.cert.not_before:
                self.rotations.append(Rotation(now, self.cert, cert))
                events.append((now, "rotation"))
            if self.cert is None or cert.not_before >= self.cert.not_before:  # an older read never goes back
                self.cert = cert
        if app_serial is not None:
            self.app_serial = app_serial
        c = self.cert
        if c is None:
            return CertState(None, 0.0, 0.0, None, tuple(self.rotations), self.app_serial, False, tuple(events))
        renew_in = (renewal[0] - now, renewal[1] - now) if renewal else None
        return CertState(c, max(0.0, c.not_after - now), c.not_after - c.not_before, renew_in, tuple(self.rotations),
                         self.app_serial, bool(self.app_serial) and self.app_serial == c.serial, tuple(events))
