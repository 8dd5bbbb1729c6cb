"""The sink types a config can name, and how each becomes a sink.

Adding a sink type: a package under sinks/ with its Sink (sinks/base.py), an entry here, a
`type:` in the config model, a sample config, and a harness in tests/contract/ so that the
shared contract suite runs against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgegw.config.model import GatewayConfig, NamedSink
from edgegw.sinks.forwarder import MakeSink
from edgegw.sinks.mqtt.configure import mqtt_sink_settings
from edgegw.sinks.mqtt.sink import MqttSink, MqttSinkSettings


@dataclass(frozen=True, slots=True)
class SinkType:
    # Everything the sink needs from the config, read once (secrets included), comparable
    # with ==: a reload reconnects exactly the sinks whose settings changed.
    settings: Callable[[GatewayConfig, NamedSink], Any]
    build: Callable[[Any, str], MakeSink]  # (settings, sink name) -> the forwarder's factory


def _mqtt(settings: MqttSinkSettings, name: str) -> MakeSink:
    return lambda on_result: MqttSink(settings, on_result, name=name)


SINK_TYPES: dict[str, SinkType] = {
    "mqtt": SinkType(mqtt_sink_settings, _mqtt),
}


def sink_settings(config: GatewayConfig) -> dict[str, Any]:
    """Each sink's settings by name, in config order."""
    return {sink.name: SINK_TYPES[sink.type].settings(config, sink) for sink in config.sink_list()}


def sink_factory(sink: NamedSink, settings: Any) -> MakeSink:
    return SINK_TYPES[sink.type].build(settings, sink.name)
