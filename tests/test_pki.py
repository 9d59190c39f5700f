from cryptography import x509
from cryptography.x509.oid import NameOID

from labkit._state import State
from labkit.backends.local.pki import ensure_pki


def test_pki_chain_and_identities(tmp_path):
    st = State(tmp_path / "lab")
    st.ensure()
    ensure_pki(st)
    load = lambda n: x509.load_pem_x509_certificate((st.root / "pki" / n).read_bytes())
    ca, srv, adm = load("ca.crt"), load("apiserver.crt"), load("admin.crt")
    srv.verify_directly_issued_by(ca)
    adm.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)][:1] == ["127.0.0.1"]
    assert adm.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    before = (st.root / "pki" / "ca.crt").read_bytes()
    ensure_pki(st)  # idempotent: keeps the existing CA
    assert (st.root / "pki" / "ca.crt").read_bytes() == before


def test_etcd_pairs_missing_from_an_older_state_are_issued_from_the_existing_ca(tmp_path):
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from labkit.backends.local.pki import ETCD_PEER_CN, ensure_etcd_pki

    st = State(tmp_path / "lab")
    st.ensure()
    ensure_pki(st)
    ensure_etcd_pki(st)
    pki = st.root / "pki"
    load = lambda n: x509.load_pem_x509_certificate((pki / n).read_bytes())
    ekus = lambda c: set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    client = (pki / "etcd-client.crt").read_bytes()
    (pki / "etcd-peer.crt").unlink()  # an older labkit made no peer pair
    ensure_etcd_pki(st)
    peer, ca = load("etcd-peer.crt"), load("ca.crt")
    peer.verify_directly_issued_by(ca)
    assert ekus(peer) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ETCD_PEER_CN
    assert (pki / "etcd-client.crt").read_bytes() == client, "a complete pair is kept"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in ekus(load("etcd.crt")), "etcd's gRPC gateway dials etcd with it"
