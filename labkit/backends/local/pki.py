"""The lab's PKI, made with ``cryptography``: one CA, the API server's serving
certificate, an admin client certificate, and the service-account signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..._state import State

_DAYS = 3650
#: the common name etcd requires of a peer's client certificate (``--peer-cert-allowed-cn``)
ETCD_PEER_CN = "vsolab-etcd-peer"


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def ensure_pki(state: State) -> None:
    """Create the lab's keys and certificates once; later calls keep them."""
    pki = state.path("pki")
    if (pki / "admin.crt").exists() and (pki / "sa.pub").exists():
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    ca_name = _name(f"vsolab-ca-{state.lab_id}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.DNSName("localhost"),
        *(x509.DNSName(n) for n in (
            "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
        )),
    ]
    srv_key, srv_cert = _issue(ca_key, ca_cert, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    adm_key, adm_cert = _issue(ca_key, ca_cert, _name("vsolab-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    for rel, text in (
        ("ca.key", _key_pem(ca_key)), ("ca.crt", _cert_pem(ca_cert)),
        ("apiserver.key", _key_pem(srv_key)), ("apiserver.crt", _cert_pem(srv_cert)),
        ("admin.key", _key_pem(adm_key)), ("sa.key", _key_pem(sa_key)), ("sa.pub", sa_pub),
        ("admin.crt", _cert_pem(adm_cert)),  # written last: its presence means "done"
    ):
        state.write_private(f"pki/{rel}", text)


def ensure_etcd_pki(state: State) -> None:
    """etcd's serving and peer certificates, and the API server's client certificate for etcd.

    etcd then accepts only clients and peers with a certificate from the lab's CA, so on a shared
    machine (one lab per JupyterHub user) no other local user can read the lab's etcd or send it raft
    messages. A pair that is missing (a state directory made by an older labkit has no peer pair) is
    issued from the existing CA; pairs already there are kept.
    """
    pki = state.path("pki")
    wanted = [
        (name, subject, usage) for name, subject, usage in (
            # etcd's gRPC gateway (the /v3 HTTP API) dials etcd's own client port with this certificate.
            ("etcd", "etcd", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            ("etcd-client", "kube-apiserver-etcd-client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
            # A peer both serves and dials raft, so its certificate is for both ends.
            ("etcd-peer", ETCD_PEER_CN, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ) if not _has_pair(pki, name, usage)
    ]
    if not wanted:
        return
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for name, subject, usage in wanted:
        key, cert = _issue(ca_key, ca_cert, _name(subject), usage, sans)
        state.write_private(f"pki/{name}.key", _key_pem(key))
        state.write_private(f"pki/{name}.crt", _cert_pem(cert))  # written last: its presence means "done"


def _has_pair(pki: Path, name: str, usage: list[x509.ObjectIdentifier]) -> bool:
    """The key and certificate ``name`` exist and the certificate is good for every ``usage``."""
    crt, key = pki / f"{name}.crt", pki / f"{name}.key"
    if not (crt.exists() and key.exists()):
        return False
    try:
        ekus = x509.load_pem_x509_certificate(crt.read_bytes()).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (ValueError, x509.ExtensionNotFound):
        return False
    return set(usage) <= set(ekus.value)


def ca_pem(state: State) -> str:
    return Path(state.path("pki", "ca.crt")).read_text()


def ensure_kubelet_pki(state: State) -> None:
    """The node agent's serving certificate (for 127.0.0.1) and the API server's client certificate for it.

    The agent's kubelet API (container logs) then answers only the lab's API server: other local users
    have no certificate of the lab's CA, so their TLS handshake fails.
    """
    pki = state.path("pki")
    if (pki / "apiserver-kubelet-client.crt").exists():
        return
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    srv_key, srv_cert = _issue(ca_key, ca_cert, _name("system:node:vsolab-node", "system:nodes"),
                               ExtendedKeyUsageOID.SERVER_AUTH, sans)
    cli_key, cli_cert = _issue(ca_key, ca_cert, _name("kube-apiserver-kubelet-client"), ExtendedKeyUsageOID.CLIENT_AUTH)
    for rel, text in (("kubelet.key", _key_pem(srv_key)), ("kubelet.crt", _cert_pem(srv_cert)),
                      ("apiserver-kubelet-client.key", _key_pem(cli_key)),
                      ("apiserver-kubelet-client.crt", _cert_pem(cli_cert))):  # written last: "done"
        state.write_private(f"pki/{rel}", text)
