"""Configuration of an OPC UA source: the `protocol: opcua` entries under `sources:`."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from edgegw.config.types import (
    CredentialFile,
    Duration,
    Name,
    ReadableFile,
    StrictModel,
    TagBase,
    check_readable_file,
    check_url_port,
    parse_deadband,
)
from edgegw.sources.opcua.nodeid import NodeRef, parse_node_ref

SecurityPolicyName = Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]

NodeField = Annotated[
    NodeRef,
    PlainValidator(parse_node_ref),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=",
            "examples": ["nsu=urn:example:filler;s=Filler.State", "ns=2;i=1042"],
        }
    ),
]


def _check_trust_entry(value: Any) -> str:
    if isinstance(value, str) and os.path.isdir(value):
        return value
    return check_readable_file(value)


TrustEntry = Annotated[
    str,
    PlainValidator(_check_trust_entry),
    WithJsonSchema(
        {"type": "string", "description": "A server certificate (DER or PEM) or a directory."}
    ),
]


class OpcUaSecurity(StrictModel):
    """Message security: a policy, a mode, our certificate and the servers we trust."""

    policy: SecurityPolicyName
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: ReadableFile = Field(description="The gateway's certificate, DER or PEM.")
    private_key: ReadableFile = Field(description="Its private key, PEM or DER, unencrypted.")
    trust: list[TrustEntry] = Field(
        min_length=1,
        description="Server certificates accepted (files, or directories of .der/.pem files); "
        "any other server certificate is refused.",
    )


def _security(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # Dispatch by shape so a wrong mapping reports only its own fields, not also
    # "expected 'none'" from the other member of the union.
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return "none"
        raise ValueError(
            f"'{value}' is not a security setting; write 'none' or a mapping with "
            "policy, mode, certificate, private_key and trust"
        )
    if isinstance(value, dict):
        return OpcUaSecurity.model_validate(value)
    return handler(value)


SecurityField = Annotated[OpcUaSecurity | Literal["none"] | None, WrapValidator(_security)]


def _check_opcua_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as 'opc.tcp://10.0.0.5:4840/', got {value!r}")
    parts = urlsplit(value)
    if parts.username or parts.password:  # before anything that would echo the URL
        raise ValueError(
            "credentials do not belong in the URL (it is logged); use 'username' and "
            "'password_file'"
        )
    if parts.scheme != "opc.tcp":
        raise ValueError(
            f"unsupported scheme '{parts.scheme or value}'; write opc.tcp://HOST[:PORT][/PATH]"
        )
    if not parts.hostname:
        raise ValueError(f"'{value}' has no host; write opc.tcp://HOST[:PORT][/PATH]")
    check_url_port(value)
    return value


OpcUaUrl = Annotated[
    str,
    PlainValidator(_check_opcua_url),
    WithJsonSchema(
        {"type": "string", "pattern": r"^opc\.tcp://", "examples": ["opc.tcp://10.0.0.5:4840/"]}
    ),
]


class OpcUaTag(TagBase):
    """One variable of the server."""

    node: NodeField

    @model_validator(mode="after")
    def _check_deadband(self) -> OpcUaTag:
        if self.deadband is not None:
            parse_deadband(self.deadband)
        return self


class OpcUaSourceConfig(StrictModel):
    """An OPC UA server, read by subscription (monitored items) or by polling."""

    name: Name
    protocol: Literal["opcua"]
    url: OpcUaUrl
    mode: Literal["subscribe", "poll"] = Field(
        default="subscribe",
        description="subscribe: the server reports changes (monitored items); "
        "poll: batched reads every interval.",
    )
    interval: Duration = Field(
        default=1.0, description="Publishing and sampling interval, or poll period."
    )
    security: SecurityField = Field(
        default=None,
        description="Omitted: no security, refused if the server offers secure endpoints; "
        "'none' accepts an unsecured connection to such a server deliberately.",
    )
    username: str | None = Field(default=None, description="User name; use ${ENV} references.")
    password_file: CredentialFile | None = Field(
        default=None,
        description="File holding the password: an absolute path, or a credential name in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential=); never in YAML.",
    )
    timeout: Duration = Field(default=5.0, description="How long one request may take.")
    keepalive: Duration = Field(
        default=1.0,
        description="Probe the session this often; a dead server is noticed after about "
        "twice this.",
    )
    session_timeout: Duration = Field(
        default=60.0,
        description="How long the server keeps our session (and its subscription) after the "
        "link drops, so a reconnect can take it over without losing notifications.",
    )
    queue_size: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Samples the server keeps per item between two publishes (subscribe mode).",
    )
    retry: Duration = Field(
        default=10.0, description="How often nodes that failed alone are tried again."
    )
    heartbeat: Duration | None = Field(
        default=None, description="Default heartbeat of the tags: republish unchanged values."
    )
    tags: list[OpcUaTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OpcUaSourceConfig:
        for field in ("interval", "timeout", "keepalive", "session_timeout", "retry"):
            if getattr(self, field) <= 0:
                raise ValueError(f"'{field}' must be longer than 0")
        if self.password_file is not None and self.username is None:
            raise ValueError("'password_file' needs 'username'")
        if self.username is not None and self.password_file is None:
            raise ValueError("'username' needs 'password_file' (the password is never in YAML)")
        return self

    def data_sources(self) -> list[OpcUaSourceConfig]:
        """What telemetry names as its sources: this server."""
        return [self]

    @property
    def secured(self) -> OpcUaSecurity | None:
        return self.security if isinstance(self.security, OpcUaSecurity) else None
