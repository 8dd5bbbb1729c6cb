"""JSON Schemas of the messages: the envelopes and one per configured event type.

`edgegw schema --events -c FILE` prints them; the gateway publishes them retained under
`mqtt.schema_topic` at every connect, so a consumer can discover what a line sends.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from edgegw.config.model import GatewayConfig
from edgegw.pipeline.events.config import EventConfig
from edgegw.pipeline.events.contract import build_contract

ENVELOPES = {
    "edgegw.telemetry-1": "telemetry-1.json",
    "edgegw.event-1": "event-1.json",
    "edgegw.gap-1": "gap-1.json",
    "edgegw.batch-1": "batch-1.json",
}


def envelope(name: str) -> dict[str, Any]:
    text = resources.files("edgegw").joinpath("schemas", ENVELOPES[name]).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


def event_type_schema(config: GatewayConfig, event: EventConfig) -> dict[str, Any]:
    """The event envelope narrowed to one type: its key and data fields with their contract."""
    schema = envelope("edgegw.event-1")
    fields = build_contract(event).model_json_schema()["properties"]
    for spec in fields.values():
        spec.pop("title", None)
        # pydantic leaves ge/le under their Python names when a validator wraps the type.
        for ours, standard in (("ge", "minimum"), ("le", "maximum")):
            if ours in spec:
                spec[standard] = spec.pop(ours)
    key = {name: fields[name] for name in event.key}
    data = {name: spec for name, spec in fields.items() if name not in event.key}
    schema["$id"] = schema["$id"].replace(".json", f"/{event.type}.json")
    schema["title"] = f"edgegw.event/1 {event.type}"
    if event.description:
        schema["description"] = event.description
    props = schema["properties"]
    props["type"] = {"const": event.type}
    props["gateway"] = {"const": config.gateway.id}
    props["key"] = {
        "type": "object",
        "properties": key,
        "required": list(key),
        "additionalProperties": False,
    }
    props["data"] = {
        "type": "object",
        "properties": data,
        "required": list(data),
        "additionalProperties": False,
    }
    return schema


def all_schemas(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    schemas = {name: envelope(name) for name in ENVELOPES}
    for event in config.events:
        schemas[event.type] = event_type_schema(config, event)
    return schemas
