"""Node id parsing and resolution, status -> quality, variant -> JSON value, timestamps."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from asyncua import ua

from edgegw.sources.opcua.nodeid import NamespaceMissing, parse_node_ref
from edgegw.sources.opcua.values import json_value, quality_of, reading_of, timestamp_of

GUID = "09087e75-8e5e-499b-954f-f2a9603db28a"
NAMESPACES = ["http://opcfoundation.org/UA/", "urn:server", "urn:dummy", "urn:filler"]


@pytest.mark.parametrize(
    ("text", "identifier", "index"),
    [
        ("nsu=urn:filler;s=Filler.State", "Filler.State", 3),
        ("ns=2;i=1042", 1042, 2),
        ("i=2258", 2258, 0),
        ("nsu=urn:filler;s=a;b=c", "a;b=c", 3),
        (
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            uuid.UUID(int=0x09087E758E5E499B954FF2A9603DB28A),
            1,
        ),
        ("ns=1;b=AQID", b"\x01\x02\x03", 1),
    ],
)
def test_node_ids_resolve_against_the_namespace_array(
    text: str, identifier: object, index: int
) -> None:
    node = parse_node_ref(text).resolve(NAMESPACES)
    assert (node.Identifier, node.NamespaceIndex) == (identifier, index)


def test_nsu_follows_the_namespace_when_its_index_moves() -> None:
    ref = parse_node_ref("nsu=urn:filler;s=Speed")
    shifted = [*NAMESPACES[:2], "urn:x", "urn:y", "urn:z", "urn:filler"]
    assert ref.resolve(NAMESPACES).NamespaceIndex == 3
    assert ref.resolve(shifted).NamespaceIndex == 5
    with pytest.raises(NamespaceMissing, match="urn:filler"):
        ref.resolve(NAMESPACES[:2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Filler.State", "is not a node id"),
        ("ns=2;i=-1", "i= takes a number"),
        ("ns=2;s=", "s= needs a string"),
        ("ns=2;g=nope", "g= takes a GUID"),
        ("ns=2;b=***", "b= takes base64"),
        ("ns=65536;i=1", "above 65535"),
    ],
)
def test_bad_node_ids_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node_ref(text)


@pytest.mark.parametrize(
    ("code", "quality", "reason"),
    [
        (ua.StatusCodes.Good, "good", None),
        (ua.StatusCodes.GoodClamped, "good", None),
        (ua.StatusCodes.UncertainLastUsableValue, "uncertain", "UncertainLastUsableValue"),
        (ua.StatusCodes.BadSensorFailure, "bad", "BadSensorFailure"),
        (ua.StatusCodes.BadNodeIdUnknown, "bad", "BadNodeIdUnknown"),
    ],
)
def test_status_codes_map_to_quality(code: int, quality: str, reason: str | None) -> None:
    assert quality_of(ua.StatusCode(code)) == (quality, reason)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (ua.Variant(True, ua.VariantType.Boolean), True),
        (ua.Variant(-5, ua.VariantType.Int32), -5),
        (ua.Variant(2**64 - 1, ua.VariantType.UInt64), 2**64 - 1),
        (ua.Variant(72.52999877929688, ua.VariantType.Float), 72.53),
        (ua.Variant(72.52999877929688, ua.VariantType.Double), 72.52999877929688),
        (ua.Variant("héllo", ua.VariantType.String), "héllo"),
        (ua.Variant(b"\x01\x02", ua.VariantType.ByteString), "AQI="),
        (
            ua.Variant(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), ua.VariantType.DateTime),
            "2026-01-02T03:04:05.000000Z",
        ),
        (ua.Variant(ua.LocalizedText("Text", "en"), ua.VariantType.LocalizedText), "Text"),
        (ua.Variant([1, 2], ua.VariantType.Int16), [1, 2]),
        (ua.Variant(None, ua.VariantType.Null), None),
    ],
)
def test_values_keep_their_json_kind(variant: ua.Variant, expected: object) -> None:
    value = json_value(variant)
    assert value == expected
    assert type(value) is type(expected)


def test_timestamp_prefers_source_then_server_then_receipt() -> None:
    source = dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    server = dt.datetime(2026, 1, 1, 0, 0, 2, tzinfo=dt.UTC)
    both = ua.DataValue(ua.Variant(1.0), SourceTimestamp=source, ServerTimestamp=server)
    only_server = ua.DataValue(ua.Variant(1.0), ServerTimestamp=server)
    neither = ua.DataValue(ua.Variant(1.0))
    assert timestamp_of(both, 99.0) == source.timestamp()
    assert timestamp_of(only_server, 99.0) == server.timestamp()
    assert timestamp_of(neither, 99.0) == 99.0


def test_a_bad_value_is_published_without_its_value() -> None:
    data = ua.DataValue(
        ua.Variant(12.5, ua.VariantType.Double),
        StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
    )
    reading = reading_of("src", "tag", data, 10.0)
    assert (reading.value, reading.quality, reading.reason) == (None, "bad", "BadSensorFailure")
