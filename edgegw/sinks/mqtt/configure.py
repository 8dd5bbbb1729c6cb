"""An MQTT sink's settings, from the config: connection, credentials, TLS, topics, batching and
the retained schema announcements."""

from __future__ import annotations

import orjson

from edgegw.config.model import GatewayConfig, MqttSection, NamedSink
from edgegw.config.types import read_secret
from edgegw.pipeline.events.schemas import all_schemas
from edgegw.sinks.mqtt.settings import MqttSettings
from edgegw.sinks.mqtt.sink import BatchSettings, MqttSinkSettings, Topics, fill_except
from edgegw.sinks.mqtt.tls import TlsSettings


def mqtt_sink_settings(config: GatewayConfig, sink: NamedSink | None = None) -> MqttSinkSettings:
    """The settings of one MQTT sink (default: the first); reads its password file, if any."""
    sink = sink or config.sink_list()[0]
    mqtt = sink.section
    return MqttSinkSettings(
        connection=connection_settings(config, mqtt, sink.client_id),
        qos=mqtt.qos,
        window=mqtt.inflight,
        topics=topics(config, mqtt),
        announcements=tuple(announcements(config, mqtt)),
        batch=batch_settings(config, mqtt),
    )


def mqtt_settings(config: GatewayConfig) -> MqttSettings:
    """The connection of the first sink (`edgegw check` tries its credentials)."""
    sink = config.sink_list()[0]
    return connection_settings(config, sink.section, sink.client_id)


def connection_settings(config: GatewayConfig, mqtt: MqttSection, client_id: str) -> MqttSettings:
    status_topic = mqtt.status_topic.format(**config.topic_fields())
    tls_settings: TlsSettings | None = None
    if mqtt.secure:  # mqtts:// without a tls section: the system's trust store
        tls = mqtt.tls
        tls_settings = (
            TlsSettings(tls.ca, tls.cert, tls.key, tls.verify_hostname) if tls else TlsSettings()
        )
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=client_id,
        protocol=mqtt.version,
        keepalive=int(mqtt.keepalive),
        connect_timeout=mqtt.connect_timeout,
        status_topic=status_topic,
        username=mqtt.username,
        password=None if mqtt.password_file is None else read_secret(mqtt.password_file),
        tls=tls_settings,
    )


def batch_settings(config: GatewayConfig, mqtt: MqttSection) -> BatchSettings | None:
    batch = mqtt.batch
    if batch is None:
        return None
    # Every placeholder but {source}, which the sink fills per message.
    topic = fill_except(batch.topic, config.topic_fields(), "source")
    return BatchSettings(batch.max_values, batch.max_delay, topic, config.gateway.id)


def announcements(config: GatewayConfig, mqtt: MqttSection) -> list[tuple[str, bytes]]:
    """(topic, payload) of every schema the gateway publishes retained at connect."""
    if not config.events:
        return []
    fields = config.topic_fields()
    return [
        (mqtt.schema_topic.format(**fields, type=name), orjson.dumps(schema))
        for name, schema in all_schemas(config).items()
    ]


def topics(config: GatewayConfig, mqtt: MqttSection) -> Topics:
    fields = config.topic_fields()
    return Topics(
        telemetry=fill_except(mqtt.topic, fields, "source", "tag"),
        event=fill_except(mqtt.event_topic, fields, "type"),
        gap=mqtt.gap_topic.format(**fields),
    )
