"""TLS for the broker connection: whom to trust, who we are, and SSL errors in words."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from edgegw.errors import SinkError


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Whom to trust and who we are; file paths, so settings compare by value on a reload."""

    ca: str | None = None  # None: the system's trust store
    cert: str | None = None  # client certificate for mutual TLS, with `key`
    key: str | None = None
    verify_hostname: bool = True


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context: TLS 1.2 at least, the broker's certificate verified against `ca`,
    its name checked unless told otherwise. SinkError naming the file that cannot be used."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"cannot use the CA file {tls.ca}: {ssl_words(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.verify_hostname
    if tls.cert is not None:
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"cannot use the client certificate {tls.cert} with key {tls.key}: {ssl_words(exc)}"
            ) from None
    return context


def ssl_words(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or exc)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)
