from cryptography import x509
from cryptography.x509.oid import NameOID

from labkit._pki import ensure_pki
from labkit._state import State


def test_pki_chain_and_identities(tmp_path):
    st = State(tmp_path / "lab")
    st.ensure()
    ensure_pki(st)
    load = lambda n: x509.load_pem_x509_certificate((st.root / "pki" / n).read_bytes())  # noqa: E731
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
