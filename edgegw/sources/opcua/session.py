"""Open one OPC UA session: pick the endpoint, check the server's certificate, log in.

The gateway refuses what it was not told to accept: a server certificate outside `trust`
(named by its thumbprint so the engineer can find it), and an unsecured connection to a
server that offers secure endpoints unless the config says `security: none`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edgegw.config.types import read_secret
from edgegw.errors import EdgeGwError
from edgegw.sources.opcua.config import OpcUaSecurity, OpcUaSourceConfig
from edgegw.sources.opcua.pki import (
    application_uri,
    describe,
    load_certificate,
    load_private_key,
    thumbprint,
)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
_NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"


class ConnectError(EdgeGwError):
    """A connection attempt failed; the message says why in words."""


class UntrustedServer(ConnectError):
    """The server's certificate is not in `trust`, or not valid now."""


class TrustStore:
    """The server certificates a source accepts, compared byte for byte."""

    def __init__(self, entries: list[str]) -> None:
        self.certificates: dict[bytes, x509.Certificate] = {}
        for entry in entries:
            path = Path(entry)
            files = (
                sorted(p for p in path.iterdir() if p.suffix.lower() in _CERT_SUFFIXES)
                if path.is_dir()
                else [path]
            )
            for file in files:
                cert = load_certificate(file)
                self.certificates[cert.public_bytes(Encoding.DER)] = cert

    def check(self, cert: x509.Certificate) -> None:
        if cert.public_bytes(Encoding.DER) not in self.certificates:
            raise UntrustedServer(
                f"server certificate {describe(cert)} is not trusted; if this is the right "
                f"server, add its certificate (thumbprint {thumbprint(cert)}) to 'trust'"
            )
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise UntrustedServer(
                f"server certificate {describe(cert)} is trusted but not valid now "
                f"({now:%Y-%m-%d %H:%M} UTC)"
            )

    async def validate(self, cert: x509.Certificate, _server: ua.ApplicationDescription) -> None:
        """asyncua's hook: the certificate the server presents in CreateSession."""
        self.check(cert)


_DER = __import__(
    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
).Encoding.DER


def first_certificate(blob: bytes) -> bytes:
    """The leading certificate of a DER blob that may hold a whole chain."""
    if len(blob) < 4 or blob[0] != 0x30:
        return blob
    if blob[1] == 0x82:
        return blob[: int.from_bytes(blob[2:4], "big") + 4]
    if blob[1] == 0x83:
        return blob[: int.from_bytes(blob[2:5], "big") + 5]
    return blob


def _endpoint_name(endpoint: ua.EndpointDescription) -> str:
    policy = (endpoint.SecurityPolicyUri or "").rsplit("#", 1)[-1]
    return f"{policy}/{endpoint.SecurityMode.name.rstrip('_')}"


def _offered(endpoints: list[ua.EndpointDescription]) -> str:
    return ", ".join(sorted({_endpoint_name(ep) for ep in endpoints})) or "nothing"


def describe_error(exc: BaseException) -> str:
    """A connection failure in words, without a traceback."""
    if isinstance(exc, ConnectError):
        return str(exc)
    if isinstance(exc, UaStatusCodeError):
        return f"server answered {ua.StatusCode(exc.code).name}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class SessionFactory:
    """Builds connected asyncua clients for one source's config."""

    def __init__(self, config: OpcUaSourceConfig, *, client_name: str = "edgegw") -> None:
        self.config = config
        self.client_name = client_name
        secured = config.secured
        self.trust = TrustStore(secured.trust) if secured is not None else None
        self._app_uri = "urn:edgegw"
        self._own_der = b""
        self._key_der = b""
        if secured is not None:
            # Loaded here by content: asyncua tells PEM from DER by the file suffix alone.
            certificate = load_certificate(Path(secured.certificate))
            self._own_der = certificate.public_bytes(Encoding.DER)
            self._key_der = load_private_key(Path(secured.private_key)).private_bytes(
                Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
            )
            self._app_uri = application_uri(certificate) or self._app_uri
        self._password = self._read_password()

    def _read_password(self) -> str | None:
        if self.config.password_file is None:
            return None
        return read_secret(self.config.password_file)

    def _new_client(self) -> Client:
        config = self.config
        client = Client(config.url, timeout=config.timeout, watchdog_intervall=config.keepalive)
        client.name = self.client_name
        client.description = f"{self.client_name} source {config.name}"
        client.application_uri = self._app_uri
        client.session_timeout = int(config.session_timeout * 1000)
        return client

    async def connect(self) -> Client:
        """A client with an activated session; ConnectError (or OSError) when it fails."""
        config = self.config
        client = self._new_client()
        endpoints: list[ua.EndpointDescription] = await asyncio.wait_for(
            client.connect_and_get_server_endpoints(), config.timeout * 2
        )
        secured = config.secured
        if secured is None:
            self._check_unsecured(endpoints)
        else:
            await self._secure(client, secured, endpoints)
        if self._password is not None:
            self._check_password_protected(endpoints, secured)
        if config.username is not None:
            client.set_user(config.username)
            if self._password is not None:
                client.set_password(self._password)
        try:
            await asyncio.wait_for(client.connect(), config.timeout * 2)
        except BaseException:
            await close_quietly(client)
            raise
        return client

    def _check_password_protected(
        self, endpoints: list[ua.EndpointDescription], secured: OpcUaSecurity | None
    ) -> None:
        """Refuse to send the password where the server would receive it in clear text."""
        if secured is not None and secured.mode == "SignAndEncrypt":
            return
        mode = ua.MessageSecurityMode.None_ if secured is None else MODES[secured.mode]
        policy = _NONE_URI if secured is None else POLICIES[secured.policy].URI
        offered = False
        for endpoint in endpoints:
            if endpoint.SecurityMode != mode or endpoint.SecurityPolicyUri != policy:
                continue
            for token in endpoint.UserIdentityTokens or []:
                if token.TokenType != ua.UserTokenType.UserName:
                    continue
                offered = True
                # An empty token policy means the endpoint's own policy encrypts the secret.
                effective = token.SecurityPolicyUri or endpoint.SecurityPolicyUri
                if effective and effective != _NONE_URI:
                    return
        if not offered:
            raise ConnectError("the server accepts no user name and password on this endpoint")
        raise ConnectError(
            "the server would receive the password unencrypted on this endpoint; configure "
            "'security:' with mode SignAndEncrypt"
        )

    def _check_unsecured(self, endpoints: list[ua.EndpointDescription]) -> None:
        none = ua.MessageSecurityMode.None_
        if not any(ep.SecurityMode == none for ep in endpoints):
            raise ConnectError(
                f"the server offers no unsecured endpoint (it offers {_offered(endpoints)}); "
                "configure 'security:' with a policy, mode and certificates"
            )
        secure = [ep for ep in endpoints if ep.SecurityMode != none]
        if secure and self.config.security is None:
            raise ConnectError(
                f"the server also offers secure endpoints ({_offered(secure)}); configure "
                "'security:', or write 'security: none' to connect unsecured deliberately"
            )

    async def _secure(
        self, client: Client, secured: OpcUaSecurity, endpoints: list[ua.EndpointDescription]
    ) -> None:
        policy = POLICIES[secured.policy]
        mode = MODES[secured.mode]
        matching = [
            ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode
        ]
        if not matching:
            raise ConnectError(
                f"the server offers no {secured.policy}/{secured.mode} endpoint "
                f"(it offers {_offered(endpoints)})"
            )
        server_der = first_certificate(matching[0].ServerCertificate or b"")
        assert self.trust is not None
        try:
            server_cert = x509.load_der_x509_certificate(server_der)
        except ValueError:
            raise ConnectError("the server's endpoint carries no readable certificate") from None
        # Checked before any secure channel is opened, and again by asyncua on the certificate
        # the server presents in CreateSession.
        self.trust.check(server_cert)
        await client.set_security(
            policy,
            certificate=self._own_der,
            private_key=self._key_der,
            server_certificate=server_der,
            mode=mode,
        )
        client.certificate_validator = self.trust.validate


async def close_quietly(client: Client, *, grace: float = 2.0) -> None:
    """Close the session and socket; a dead server must not hold up a reconnect or a stop."""
    try:
        await asyncio.wait_for(client.disconnect(), grace)
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelling():
            raise
    finally:
        _abort_socket(client)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def drop_transport(client: Client) -> None:
    """Forget a dead connection without CloseSession: the server keeps the session and its
    subscription for `session_timeout`, so the next connection can transfer it."""
    client.uaclient.request_disconnect()
    for task in (client._supervisor_task, client._stale_watchdog_task, client._renew_channel_task):
        if task is not None:
            task.cancel()
    publish = client.uaclient.session._publish_task
    if publish is not None:
        publish.cancel()
    _abort_socket(client)


def _abort_socket(client: Client) -> None:
    # After asyncua's supervisor marked the client disconnected, disconnect_socket() is a
    # no-op and the socket would stay open on the server: close the transport itself.
    protocol = client.uaclient.protocol
    transport = protocol.transport if protocol is not None else None
    if transport is not None:
        transport.abort()
    client.disconnect_socket()
