"""The gateway's OPC UA application instance certificate: create it, load it, name it.

OPC UA servers decide whom to trust by certificate, so the gateway needs its own RSA key and a
self-signed certificate shaped as OPC 10000-6 6.2.2 asks: the application URI in the subject
alternative name, the four key usages, client and server authentication. Operators compare
certificates by thumbprint in the server's trust list, so `thumbprint` and `describe` give the
exact text they will see there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgegw.errors import EdgeGwError

CERTIFICATE_FILE = "gw.der"
PRIVATE_KEY_FILE = "gw.key.pem"
KEY_SIZE = 2048
ORGANIZATION = "edgegw"

# Same rule as the config's gateway.id: it must be usable verbatim inside a URN.
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
# Backdate the start of validity a little: a server whose clock runs behind ours would
# otherwise reject a certificate created seconds ago as "not yet valid".
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertificatePaths:
    """Where `create_application_certificate` wrote the certificate and its private key."""

    certificate: Path
    private_key: Path


def application_uri_for(gateway_id: str) -> str:
    """The ApplicationUri the gateway announces; it must equal the certificate's SAN URI."""
    return f"urn:edgegw:{gateway_id}"


def create_application_certificate(
    out_dir: Path,
    *,
    gateway_id: str,
    hostname: str | None = None,
    days: int = 3650,
    force: bool = False,
) -> CertificatePaths:
    """Write a new RSA key (`gw.key.pem`, mode 0600) and self-signed certificate (`gw.der`).

    Existing files are kept unless `force`: replacing the certificate breaks every server that
    trusts the old one, so it must be a deliberate act.
    """
    if not _GATEWAY_ID.match(gateway_id):
        raise EdgeGwError(
            f"gateway id {gateway_id!r} cannot be used in an application URI; "
            "use letters, digits, '_' and '-'"
        )
    if days < 1:
        raise EdgeGwError(f"certificate validity must be at least 1 day, got {days}")
    paths = CertificatePaths(out_dir / CERTIFICATE_FILE, out_dir / PRIVATE_KEY_FILE)
    if not force:
        for path in (paths.certificate, paths.private_key):
            if path.exists():
                raise EdgeGwError(
                    f"{path} already exists; servers that trust the current certificate would "
                    "reject a new one. Use --force to replace it anyway"
                )
    host = hostname if hostname is not None else socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    certificate = _self_signed_certificate(key, gateway_id, _host_name(host), days)
    _make_private_dir(out_dir)
    # Key first: a certificate without its key is useless, a key alone is just regenerated.
    _write_atomically(
        paths.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_atomically(
        paths.certificate, certificate.public_bytes(serialization.Encoding.DER), mode=0o644
    )
    return paths


def _self_signed_certificate(
    key: rsa.RSAPrivateKey, gateway_id: str, host: x509.GeneralName, days: int
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgegw {gateway_id}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(application_uri_for(gateway_id)), host]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,  # the RFC 5280 name of nonRepudiation
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def _host_name(host: str) -> x509.GeneralName:
    """The SAN entry for the machine: an IP address entry if `host` is one, else a DNS name."""
    host = host.strip()
    if not host:
        raise EdgeGwError("the hostname for the certificate is empty; pass --hostname")
    with contextlib.suppress(ValueError):
        return x509.IPAddress(ipaddress.ip_address(host))
    try:
        # A DNS SAN holds ASCII only; an internationalised host name goes in as its A-label.
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise EdgeGwError(f"hostname {host!r} is not a valid DNS name: {exc}") from exc
    return x509.DNSName(ascii_host)


def _make_private_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise EdgeGwError(f"{out_dir} exists and is not a directory")
        return
    try:
        out_dir.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise EdgeGwError(f"cannot create {out_dir}: {exc.strerror}") from exc


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temporary file renamed into place.

    mkstemp creates the file with mode 0600, so the private key is never readable by others,
    not even for the instant a chmod after the write would leave open; a public file (the
    certificate) is widened before any byte is written. The rename means a crash leaves the
    old file or the new one, never half of one.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise EdgeGwError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as tmp:
            if mode != 0o600:
                os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise EdgeGwError(f"cannot write {path}: {exc.strerror}") from exc


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EdgeGwError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _pem_label(data: bytes) -> bytes | None:
    """The label of the first PEM block (b"CERTIFICATE", b"PRIVATE KEY", ...), None for DER."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return None
    match = _PEM_LABEL.search(data)
    return match.group(1) if match else b""


def load_certificate(path: Path) -> x509.Certificate:
    """Load an X.509 certificate stored as DER or PEM; the content decides, not the suffix."""
    data = _read(path, "certificate")
    label = _pem_label(data)
    try:
        if label is None:
            return x509.load_der_x509_certificate(data)
        if b"PRIVATE KEY" in label:
            raise EdgeGwError(f"{path} holds a private key, not a certificate")
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        form = "DER" if label is None else "PEM"
        raise EdgeGwError(
            f"{path} is not a valid X.509 certificate (read as {form}: {exc})"
        ) from exc


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """Load an unencrypted RSA private key stored as PEM or DER.

    Only RSA: every OPC UA security policy the gateway's stack implements signs with RSA.
    """
    data = _read(path, "private key")
    label = _pem_label(data)
    try:
        if label is None:
            key = serialization.load_der_private_key(data, password=None)
        else:
            if label == b"CERTIFICATE":
                raise EdgeGwError(f"{path} holds a certificate, not a private key")
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        # cryptography raises TypeError when a password is needed and none was given.
        raise EdgeGwError(
            f"{path} is an encrypted private key; the gateway needs it unencrypted "
            "(protect it with file permissions, mode 0600)"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        form = "DER" if label is None else "PEM"
        raise EdgeGwError(f"{path} is not a valid private key (read as {form}: {exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EdgeGwError(
            f"{path} holds a {type(key).__name__.removeprefix('_')} key; OPC UA needs an RSA key"
        )
    return key


def thumbprint(cert: x509.Certificate) -> str:
    """The OPC UA thumbprint: SHA-1 of the DER encoding, as uppercase hex.

    SHA-1 because that is what OPC UA servers show in their trust lists, not for security.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def application_uri(cert: x509.Certificate) -> str | None:
    """The application URI from the subject alternative name, None if there is none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe(cert: x509.Certificate) -> str:
    """One line naming a certificate the way an operator finds it in a trust list."""
    cn = common_name(cert)
    subject = f"CN={cn}" if cn is not None else cert.subject.rfc4514_string() or "(no subject)"
    start = cert.not_valid_before_utc.strftime("%Y-%m-%d")
    end = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    return f"{subject} thumbprint {thumbprint(cert)} valid {start} to {end}"
