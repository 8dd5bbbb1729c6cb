"""The configuration tree: one pydantic model per YAML section."""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator, WithJsonSchema, model_validator

from edgegw.config.types import (
    ByteSize,
    CredentialFile,
    Duration,
    Name,
    ReadableFile,
    StrictModel,
    TagBase,
    check_url_port,
)
from edgegw.pipeline.events.config import EventConfig, SequenceConfig
from edgegw.sources.modbus.config import ModbusSourceConfig
from edgegw.sources.opcua.config import OpcUaSourceConfig

TOPIC_PLACEHOLDERS = ("site", "area", "line", "gateway", "source", "tag")
EVENT_TOPIC_PLACEHOLDERS = ("site", "area", "line", "gateway", "type")
BATCH_PLACEHOLDERS = ("site", "area", "line", "gateway", "source")
STATUS_PLACEHOLDERS = ("site", "area", "line", "gateway")


class DataSource(Protocol):
    """A name telemetry carries as its `source`, with the tags read under it."""

    @property
    def name(self) -> str: ...
    @property
    def heartbeat(self) -> float | None: ...
    @property
    def tags(self) -> Sequence[TagBase]: ...


SourceConfig = Annotated[ModbusSourceConfig | OpcUaSourceConfig, Field(discriminator="protocol")]
"""One entry of `sources:`; its `protocol` picks the model."""


class GatewaySection(StrictModel):
    id: Name = Field(description="Unique per gateway: part of idempotency keys and client id.")
    site: Name | None = Field(default=None, description="ISA-95 site, used in topics.")
    area: Name | None = Field(default=None, description="ISA-95 area, used in topics.")
    line: Name | None = Field(default=None, description="ISA-95 line, used in topics.")
    state_dir: str = Field(
        default="/var/lib/edgegw", description="Directory of the outbox database."
    )


def _check_mqtt_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as 'mqtt://127.0.0.1:1883', got {value!r}")
    parts = urlsplit(value)
    if parts.username or parts.password:  # before anything that would echo the URL
        raise ValueError(
            "credentials do not belong in the URL (it is logged); use 'username' and "
            "'password_file'"
        )
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(
            f"unsupported scheme in '{value}'; write mqtt://HOST[:PORT] or, with TLS, "
            "mqtts://HOST[:PORT]"
        )
    if not parts.hostname:
        raise ValueError(f"'{value}' has no host; write {parts.scheme}://HOST[:PORT]")
    check_url_port(value)
    return value


MqttUrl = Annotated[
    str,
    PlainValidator(_check_mqtt_url),
    WithJsonSchema(
        {"type": "string", "pattern": r"^mqtts?://", "examples": ["mqtt://broker:1883"]}
    ),
]


def check_template(template: str, allowed: tuple[str, ...], what: str) -> None:
    from edgegw.config.diagnostics import did_you_mean

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{what} '{template}' is not a valid template: {exc}") from None
    for name in fields:
        if name not in allowed:
            hint = did_you_mean(name, allowed)
            suggestion = f"; did you mean '{{{hint}}}'?" if hint else ""
            raise ValueError(
                f"unknown placeholder '{{{name}}}' in {what}{suggestion} "
                f"(one of: {', '.join('{' + a + '}' for a in allowed)})"
            )
    if any(ch in template for ch in "+#") or template.startswith("/") or "//" in template:
        raise ValueError(f"{what} '{template}' must not contain '+', '#', '//' or start with '/'")


class BatchSection(StrictModel):
    """Telemetry as one `edgegw.batch/1` message per source and flush."""

    max_values: int = Field(default=500, ge=1, le=10_000, description="Values per message.")
    max_delay: Duration = Field(
        default=0.1, description="How long a batch that is not full may wait to fill."
    )
    topic: str = Field(
        default="{site}/{area}/{line}/{source}/batch",
        description="Placeholders: site area line gateway source.",
    )

    @model_validator(mode="after")
    def _check(self) -> BatchSection:
        check_template(self.topic, BATCH_PLACEHOLDERS, "batch.topic")
        return self


class TlsSection(StrictModel):
    """TLS to the broker (mqtts://): whom to trust, and our certificate for mutual TLS."""

    ca: ReadableFile | None = Field(
        default=None,
        description="CA certificate(s), PEM, that signed the broker's certificate; default: "
        "the system's trust store.",
    )
    cert: ReadableFile | None = Field(
        default=None, description="The gateway's client certificate, PEM (mutual TLS)."
    )
    key: ReadableFile | None = Field(
        default=None, description="Its private key, PEM, unencrypted; keep it mode 0600."
    )
    verify_hostname: bool = Field(
        default=True,
        description="Check that the broker's certificate names the host in the URL. Turn off "
        "only for a broker reached by an address its certificate does not list.",
    )

    @model_validator(mode="after")
    def _check(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("'cert' and 'key' go together (mutual TLS needs both)")
        return self


class MqttSection(StrictModel):
    url: MqttUrl = Field(
        default="mqtt://127.0.0.1:1883",
        description="mqtt://HOST[:PORT] (1883), or mqtts://HOST[:PORT] (8883) for TLS.",
    )
    tls: TlsSection | None = Field(
        default=None,
        description="With mqtts://: {ca, cert, key, verify_hostname}; TLS 1.2 at least.",
    )
    username: str | None = Field(
        default=None, max_length=256, description="User name; use a ${ENV} reference."
    )
    password_file: CredentialFile | None = Field(
        default=None,
        description="File holding the password: an absolute path, or a credential name in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential=); never in YAML.",
    )
    client_id: str | None = Field(
        default=None,
        max_length=128,
        description="Default: edgegw-{gateway.id}. Unique per gateway.",
    )
    qos: Literal[0, 1] = Field(default=1, description="1 (at least once) keeps the promise.")
    version: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version.")
    topic: str = Field(
        default="{site}/{area}/{line}/{source}/{tag}",
        description="Telemetry topic; placeholders: site area line gateway source tag.",
    )
    status_topic: str = Field(
        default="{site}/{area}/{line}/{gateway}/status",
        description="Retained 'online' on connect, 'offline' as last will.",
    )
    gap_topic: str = Field(
        default="{site}/{area}/{line}/{gateway}/gap",
        description="Where edgegw.gap/1 messages say which seq ranges retention dropped.",
    )
    event_topic: str = Field(
        default="{site}/{area}/{line}/events/{type}",
        description="Business events; placeholders: site area line gateway type.",
    )
    schema_topic: str = Field(
        default="{site}/{area}/{line}/schemas/{type}",
        description="Retained JSON Schema of each message type, published at connect.",
    )
    keepalive: Duration = Field(default=30.0)
    connect_timeout: Duration = Field(default=10.0)
    batch: BatchSection | None = Field(
        default=None,
        description="Batched telemetry, e.g. {max_values: 500, max_delay: 100ms}; default: "
        "one message per value. Each item keeps its own id and seq.",
    )
    inflight: int = Field(
        default=100, ge=1, le=10000, description="Publishes awaiting their PUBACK at once."
    )

    @model_validator(mode="after")
    def _check_topics(self) -> MqttSection:
        check_template(self.topic, TOPIC_PLACEHOLDERS, "topic")
        check_template(self.status_topic, STATUS_PLACEHOLDERS, "status_topic")
        check_template(self.gap_topic, STATUS_PLACEHOLDERS, "gap_topic")
        check_template(self.event_topic, EVENT_TOPIC_PLACEHOLDERS, "event_topic")
        check_template(self.schema_topic, EVENT_TOPIC_PLACEHOLDERS, "schema_topic")
        if self.keepalive < 1:
            raise ValueError("keepalive must be at least 1s")
        if self.tls is not None and not self.secure:
            raise ValueError(f"'tls' needs an mqtts:// url (got {self.url})")
        if self.password_file is not None and self.username is None:
            raise ValueError("'password_file' needs 'username'")
        return self

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.secure else 1883)


SINK_KINDS = ("telemetry", "event", "gap")


class SelectSection(StrictModel):
    """What a sink takes; without `select` (or a key of it) it takes everything."""

    kinds: list[Literal["telemetry", "event", "gap"]] | None = Field(
        default=None, min_length=1, description="Message kinds: telemetry, event, gap."
    )
    sources: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Telemetry of these sources only (shell patterns, e.g. 'press-*'); "
        "business events and gap messages have no source and are not filtered by it.",
    )

    def matches(self, kind: str, source: str) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.sources is None or kind != "telemetry":
            return True
        return any(fnmatch.fnmatchcase(source, pattern) for pattern in self.sources)


class MqttSinkSection(MqttSection):
    """One entry of `sinks:` of type mqtt: the keys of the `mqtt:` section, and a name."""

    name: Name = Field(description="The sink's name: in metrics, health and logs; unique.")
    type: Literal["mqtt"] = Field(description="The kind of sink: mqtt.")
    select: SelectSection | None = Field(
        default=None, description="What this sink takes: {kinds: [...], sources: [...]}."
    )


@dataclass(frozen=True, slots=True)
class NamedSink:
    """A sink of the config: an entry of `sinks:`, or the `mqtt:` section (named mqtt)."""

    name: str
    type: str
    section: MqttSection
    select: SelectSection | None
    client_id: str
    path: tuple[str | int, ...]  # where it is in the file, for messages

    def selects(self, kind: str, source: str) -> bool:
        """Whether this sink takes messages of this kind (and telemetry of this source)."""
        return self.select is None or self.select.matches(kind, source)


class OutboxSection(StrictModel):
    synchronous: Literal["full", "normal", "extra"] = Field(
        default="full",
        description="SQLite synchronous mode: full survives power loss; normal may lose the "
        "last commits on power loss (never on a crash of the process).",
    )
    max_rows: int = Field(default=10_000_000, ge=1000, description="Retention by row count.")
    max_age: Duration = Field(default=7 * 86400.0, description="Retention by age, e.g. '7d'.")
    max_bytes: ByteSize | None = Field(
        default=None,
        description="Retention by size of the stored data, e.g. '2GB' (the file itself keeps "
        "its largest size; freed pages are reused). Default: no limit.",
    )
    path: str | None = Field(
        default=None, description="Database file; default: {state_dir}/outbox.sqlite3."
    )


def _check_listen(value: object) -> str:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(f"expected HOST:PORT such as '127.0.0.1:9108', got {value!r}")
    host, port = value.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{value}' is not HOST:PORT with a port 0..65535")
    return value


class HttpSection(StrictModel):
    listen: Annotated[str, PlainValidator(_check_listen), WithJsonSchema({"type": "string"})] = (
        Field(description="Where /metrics and /healthz are served, e.g. 127.0.0.1:9108.")
    )

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    gateway: GatewaySection
    mqtt: MqttSection = Field(
        default_factory=MqttSection,
        description="The MQTT broker: a sink named 'mqtt' (when given, or when there is no "
        "'sinks:').",
    )
    sinks: list[MqttSinkSection] = Field(
        default_factory=list,
        description="Where messages go, several at once, each with its own delivery state: "
        "[{name, type: mqtt, url, ..., select: {kinds, sources}}].",
    )
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    http: HttpSection | None = Field(
        default=None, description="Local HTTP endpoint for Prometheus metrics and health."
    )
    sources: list[SourceConfig] = Field(min_length=1)
    events: list[EventConfig] = Field(
        default_factory=list, description="Business events derived from tag changes."
    )
    sequences: list[SequenceConfig] = Field(
        default_factory=list, description="Allowed transitions of status tags."
    )

    @model_validator(mode="after")
    def _check_lines_unshared(self) -> GatewayConfig:
        """Two sources on one serial port (or one RTU converter) would talk over each other."""
        seen: dict[str, str] = {}
        for source in self.sources:
            if not isinstance(source, ModbusSourceConfig) or source.transport == "tcp":
                continue
            line = (
                source.serial.path if source.transport == "rtu" else f"{source.host}:{source.port}"
            )
            if line in seen:
                raise ValueError(
                    f"sources '{seen[line]}' and '{source.name}' are both on {line}: one line "
                    "is one source; list its unit ids under one source's 'devices:'"
                )
            seen[line] = source.name
        return self

    @model_validator(mode="after")
    def _check_placeholders_defined(self) -> GatewayConfig:
        for sink in self.sink_list():
            mqtt = sink.section
            at = "mqtt" if sink.path == ("mqtt",) else f"sinks[{sink.path[1]}]"
            for template, what in (
                (mqtt.topic, f"{at}.topic"),
                (mqtt.status_topic, f"{at}.status_topic"),
                (mqtt.gap_topic, f"{at}.gap_topic"),
                *([(mqtt.batch.topic, f"{at}.batch.topic")] if mqtt.batch else []),
                *(
                    # Only used when there are events: a telemetry-only config need not set
                    # site.
                    [
                        (mqtt.event_topic, f"{at}.event_topic"),
                        (mqtt.schema_topic, f"{at}.schema_topic"),
                    ]
                    if self.events
                    else []
                ),
            ):
                for level in ("site", "area", "line"):
                    if "{" + level + "}" in template and getattr(self.gateway, level) is None:
                        raise ValueError(
                            f"{what} uses {{{level}}} but gateway.{level} is not set; set it "
                            "or drop the placeholder"
                        )
        return self

    def sink_selectors(self) -> dict[str, Callable[[str, str], bool]]:
        """Each sink's name and what it selects, as the outbox keeps them."""
        return {sink.name: sink.selects for sink in self.sink_list()}

    def sink_list(self) -> list[NamedSink]:
        """Every sink, in order: the `mqtt:` section first (named mqtt) when it is given or
        when there is no `sinks:`, then the entries of `sinks:`."""
        out: list[NamedSink] = []
        if "mqtt" in self.model_fields_set or not self.sinks:
            mqtt = self.mqtt
            client = mqtt.client_id or f"edgegw-{self.gateway.id}"
            out.append(NamedSink("mqtt", "mqtt", mqtt, None, client, ("mqtt",)))
        for index, sink in enumerate(self.sinks):
            client = sink.client_id or f"edgegw-{self.gateway.id}-{sink.name}"
            out.append(NamedSink(sink.name, sink.type, sink, sink.select, client, ("sinks", index)))
        return out

    def data_sources(self) -> list[DataSource]:
        """Every `source` telemetry can carry, with its tags: a source, or each device of a
        Modbus line."""
        return [view for source in self.sources for view in source.data_sources()]

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgegw-{self.gateway.id}"

    @property
    def outbox_path(self) -> str:
        import os

        return self.outbox.path or os.path.join(self.gateway.state_dir, "outbox.sqlite3")

    def topic_fields(self) -> dict[str, str]:
        g = self.gateway
        return {"site": g.site or "", "area": g.area or "", "line": g.line or "", "gateway": g.id}
