"""OPC UA DataValues -> readings: JSON-ready values, quality from the status code, timestamps."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

from asyncua import ua

from edgegw.floats import shortest_float32
from edgegw.reading import Quality, Reading, Value


def quality_of(status: ua.StatusCode | None) -> tuple[Quality, str | None]:
    """Good -> good; Uncertain -> uncertain; Bad -> bad; the reason is the status name."""
    if status is None:
        return "good", None
    code = status.value
    severity = code & 0xC0000000
    if severity == 0:
        return "good", None
    name = status.name
    if severity == 0x40000000:
        return "uncertain", name
    return "bad", name


def json_value(variant: ua.Variant | None) -> Value:
    """The variant's value as JSON can carry it, keeping its kind (integer, bool, string)."""
    if variant is None:
        return None
    value = variant.Value
    if variant.VariantType == ua.VariantType.Float and isinstance(value, float):
        # A float32 widened to double shows digits the PLC never had (72.5299987...).
        return shortest_float32(value)
    if isinstance(value, list):
        if variant.VariantType == ua.VariantType.Float:
            return [shortest_float32(item) if isinstance(item, float) else item for item in value]
        return [_plain(item) for item in value]
    plain: Value = _plain(value)
    return plain


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return iso_datetime(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.QualifiedName):
        return value.Name
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return str(value)


def iso_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def timestamp_of(data: ua.DataValue, received: float) -> float:
    """Source timestamp, else server timestamp, else when we received it (epoch seconds)."""
    stamp = data.SourceTimestamp or data.ServerTimestamp
    if stamp is None:
        return received
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def reading_of(source: str, tag: str, data: ua.DataValue, received: float) -> Reading:
    quality, reason = quality_of(data.StatusCode)
    value = None if quality == "bad" else json_value(data.Value)
    return Reading(source, tag, value, quality, timestamp_of(data, received), received, reason)
