"""A throwaway PKI and Mosquitto password file for TLS tests, like a plant broker's setup.

`make_pki(directory)` writes PEM files (EC P-256 keys, mode 0600) for:

* a test CA, a server certificate for localhost/127.0.0.1 and a client certificate (CN=test-gw)
  signed by it: the happy path, with mutual TLS;
* an unrelated "untrusted" CA with its own localhost server certificate: a broker whose
  certificate our client does not trust;
* a server certificate signed by the good CA but only for DNS:wrong.example: a hostname
  verification failure.

Every certificate is valid from a day ago to 30 days ahead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.broker import BrokerTls

_FALLBACK_PASSWD = "/usr/bin/mosquitto_passwd"
_LOCALHOST_SANS: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


@dataclass(frozen=True, slots=True)
class CertKey:
    """A PEM certificate and its PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TestPki:
    """Paths of the files `make_pki` wrote."""

    __test__ = False  # not a pytest test class despite the name

    directory: Path
    ca: CertKey  # the CA the client and the broker trust
    server: CertKey  # signed by `ca`; DNS:localhost, IP:127.0.0.1; serverAuth
    client: CertKey  # signed by `ca`; CN=test-gw; clientAuth
    untrusted_ca: CertKey  # an unrelated CA
    untrusted_server: CertKey  # signed by `untrusted_ca`; DNS:localhost, IP:127.0.0.1
    wrong_host_server: CertKey  # signed by `ca`; only DNS:wrong.example

    @property
    def ca_file(self) -> Path:
        return self.ca.cert

    @property
    def untrusted_ca_file(self) -> Path:
        return self.untrusted_ca.cert

    def broker_tls(
        self, server: CertKey | None = None, *, require_certificate: bool = True
    ) -> BrokerTls:
        """Broker TLS settings: `server` (default: the good localhost certificate) as the
        broker's certificate, and client certificates checked against the good CA."""
        server = server or self.server
        return BrokerTls(
            cafile=self.ca.cert,
            certfile=server.cert,
            keyfile=server.key,
            require_certificate=require_certificate,
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgegw tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(days=1), now + dt.timedelta(days=30)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # in case the file existed with wider permissions


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertKey:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return CertKey(cert=cert_path, key=key_path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    not_before, not_after = _validity()
    name = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    common_name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    usage: x509.ObjectIdentifier,
    sans: tuple[x509.GeneralName, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = issuer
    key = _new_key()
    not_before, not_after = _validity()
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> TestPki:
    """Write the test CAs, certificates and keys into `directory` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    server_auth = ExtendedKeyUsageOID.SERVER_AUTH

    ca = _make_ca("edgegw test CA")
    server = _make_leaf("localhost", ca, usage=server_auth, sans=_LOCALHOST_SANS)
    client = _make_leaf("test-gw", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    wrong_host = _make_leaf(
        "wrong.example", ca, usage=server_auth, sans=(x509.DNSName("wrong.example"),)
    )
    untrusted_ca = _make_ca("edgegw untrusted CA")
    untrusted_server = _make_leaf(
        "localhost", untrusted_ca, usage=server_auth, sans=_LOCALHOST_SANS
    )

    return TestPki(
        directory=directory,
        ca=_write(directory, "ca", *ca),
        server=_write(directory, "server", *server),
        client=_write(directory, "client", *client),
        untrusted_ca=_write(directory, "untrusted-ca", *untrusted_ca),
        untrusted_server=_write(directory, "untrusted-server", *untrusted_server),
        wrong_host_server=_write(directory, "wrong-host-server", *wrong_host),
    )


def find_mosquitto_passwd() -> str:
    """Path of mosquitto_passwd, or a RuntimeError that says how to install it."""
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    if os.access(_FALLBACK_PASSWD, os.X_OK):
        return _FALLBACK_PASSWD
    raise RuntimeError(
        "mosquitto_passwd not found on PATH nor at /usr/bin/mosquitto_passwd; the TLS "
        "integration tests need it to write the broker's password file: install mosquitto with "
        "`apt-get install mosquitto` (Debian/Ubuntu; the tool is in the mosquitto package) or "
        "`brew install mosquitto` (macOS)."
    )


def write_password_file(path: Path, user: str, password: str) -> Path:
    """Create (or replace) a Mosquitto password file at `path` holding one user; return `path`."""
    path = Path(path)
    binary = find_mosquitto_passwd()
    path.unlink(missing_ok=True)
    result = subprocess.run(
        [binary, "-b", "-c", str(path), user, password],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(
            f"mosquitto_passwd failed (exit {result.returncode}) writing {path}: "
            f"{(result.stdout + result.stderr).strip()}"
        )
    os.chmod(path, 0o600)
    return path
