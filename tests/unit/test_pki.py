"""The gateway's application certificate: shape, file modes, loading, naming."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgegw.errors import EdgeGwError
from edgegw.sources.opcua import pki


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def created(tmp_path: Path) -> pki.CertificatePaths:
    return pki.create_application_certificate(
        tmp_path / "pki", gateway_id="line4-gw", hostname="gw4.plant.example"
    )


def test_files_are_written_with_private_modes(
    tmp_path: Path, created: pki.CertificatePaths
) -> None:
    assert created.certificate == tmp_path / "pki" / "gw.der"
    assert created.private_key == tmp_path / "pki" / "gw.key.pem"
    assert mode_of(tmp_path / "pki") == 0o700
    assert mode_of(created.private_key) == 0o600
    assert mode_of(created.certificate) == 0o644
    assert created.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not created.certificate.read_bytes().startswith(b"-----")  # DER
    assert [p.name for p in (tmp_path / "pki").iterdir() if p.name.startswith(".")] == []


def test_certificate_has_the_opc_ua_shape(created: pki.CertificatePaths) -> None:
    cert = pki.load_certificate(created.certificate)
    key = pki.load_private_key(created.private_key)

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edgegw line4-gw"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "edgegw"
    assert cert.issuer == cert.subject
    assert pki.application_uri(cert) == "urn:edgegw:line4-gw"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw4.plant.example"]

    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    assert public.public_numbers() == key.public_key().public_numbers()
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"

    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.content_commitment
    assert usage.value.key_encipherment
    assert usage.value.data_encipherment
    assert not usage.value.key_cert_sign
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(extended) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    # Self-signed: the certificate verifies with its own key.
    cert.verify_directly_issued_by(cert)


def test_ip_address_host_goes_into_an_ip_san(tmp_path: Path) -> None:
    paths = pki.create_application_certificate(tmp_path, gateway_id="gw", hostname="10.1.2.3")
    san = pki.load_certificate(paths.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_default_hostname_is_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pki.socket, "gethostname", lambda: "edge-box-7")
    paths = pki.create_application_certificate(tmp_path, gateway_id="gw")
    san = pki.load_certificate(paths.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["edge-box-7"]


def test_existing_files_are_kept_unless_forced(created: pki.CertificatePaths) -> None:
    before = created.certificate.read_bytes()
    out_dir = created.certificate.parent
    with pytest.raises(EdgeGwError, match=r"gw\.der already exists.*--force"):
        pki.create_application_certificate(out_dir, gateway_id="line4-gw", hostname="h")
    assert created.certificate.read_bytes() == before

    created.certificate.unlink()  # the key alone still blocks: it may be the trusted one's
    with pytest.raises(EdgeGwError, match=r"gw\.key\.pem already exists"):
        pki.create_application_certificate(out_dir, gateway_id="line4-gw", hostname="h")
    assert not created.certificate.exists()

    again = pki.create_application_certificate(
        out_dir, gateway_id="line4-gw", hostname="h", force=True
    )
    assert again.certificate.read_bytes() != before
    assert mode_of(again.private_key) == 0o600


def test_a_gateway_id_that_breaks_the_urn_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgeGwError, match="application URI"):
        pki.create_application_certificate(tmp_path, gateway_id="line 4", hostname="h")
    assert list(tmp_path.iterdir()) == []


def test_pem_and_der_both_load(tmp_path: Path, created: pki.CertificatePaths) -> None:
    cert = pki.load_certificate(created.certificate)
    key = pki.load_private_key(created.private_key)
    # Suffixes lie on purpose: the content decides the encoding.
    pem_cert = tmp_path / "server.der"
    pem_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der_key = tmp_path / "key.pem"
    der_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    assert pki.load_certificate(pem_cert) == cert
    assert pki.load_private_key(der_key).private_numbers() == key.private_numbers()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01garbage", r"not a valid X\.509 certificate \(read as DER"),
        (b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n", r"read as PEM"),
        (b"", r"not a valid X\.509 certificate"),
    ],
)
def test_garbage_certificate_gives_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.der"
    path.write_bytes(content)
    with pytest.raises(EdgeGwError, match=message) as info:
        pki.load_certificate(path)
    assert str(path) in str(info.value)


def test_mixed_up_files_are_named(created: pki.CertificatePaths) -> None:
    with pytest.raises(EdgeGwError, match="holds a private key, not a certificate"):
        pki.load_certificate(created.private_key)
    with pytest.raises(EdgeGwError, match="not a valid private key"):
        pki.load_private_key(created.certificate)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(EdgeGwError, match=r"cannot read certificate .*nope\.der"):
        pki.load_certificate(tmp_path / "nope.der")
    with pytest.raises(EdgeGwError, match=r"cannot read private key .*nope\.pem"):
        pki.load_private_key(tmp_path / "nope.pem")


def test_encrypted_and_non_rsa_keys_are_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(EdgeGwError, match="encrypted"):
        pki.load_private_key(encrypted)

    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(EdgeGwError, match="needs an RSA key"):
        pki.load_private_key(ec_path)


def test_thumbprint_is_sha1_of_der_uppercase(created: pki.CertificatePaths) -> None:
    cert = pki.load_certificate(created.certificate)
    expected = hashlib.sha1(created.certificate.read_bytes()).hexdigest().upper()
    assert pki.thumbprint(cert) == expected
    assert len(expected) == 40


def test_describe_is_one_line_for_error_messages(created: pki.CertificatePaths) -> None:
    cert = pki.load_certificate(created.certificate)
    line = pki.describe(cert)
    assert "\n" not in line
    assert line.startswith("CN=edgegw line4-gw thumbprint " + pki.thumbprint(cert))
    start = cert.not_valid_before_utc.strftime("%Y-%m-%d")
    end = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    assert line.endswith(f"valid {start} to {end}")


def test_application_uri_is_none_without_san(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")])
    now = dt.datetime.now(dt.UTC)
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert pki.application_uri(bare) is None
    assert pki.describe(bare).startswith("CN=bare thumbprint ")


async def test_asyncua_accepts_the_files(created: pki.CertificatePaths) -> None:
    """The stack that will present the certificate loads it and finds nothing to warn about."""
    from asyncua.crypto import uacrypto

    cert = await uacrypto.load_certificate(created.certificate)
    await uacrypto.load_private_key(created.private_key)
    # check_certificate returns True when it found a problem.
    assert uacrypto.check_certificate(cert, "urn:edgegw:line4-gw", "gw4.plant.example") is False
