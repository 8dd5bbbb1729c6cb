"""Message ids as documented, so a consumer may recompute them: the namespaces and vectors are
pinned here as literals (docs/messages.md, docs/events.md), never taken from the code under
test; the hand-rolled UUIDv5 and the cached timestamp formatter give the library's results."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.config.diagnostics import validate_document
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.outbox.quarantine import conflict_key, data_digest
from edgegw.pipeline.keys import (
    EVENT_NAMESPACE,
    TELEMETRY_NAMESPACE,
    event_key,
    telemetry_key,
    uuid5_text,
)
from edgegw.pipeline.process import Pipeline
from edgegw.reading import Reading
from edgegw.timefmt import iso_utc

DOCS = Path(__file__).parent.parent.parent / "docs"
# As published in the reference; a consumer hard-codes them, so they never change.
TELEMETRY_NS = "6f0c2a1e-5b7d-5d2e-9a43-2f6e1c0b7a10"  # docs/messages.md, `id`
EVENT_NS = "3c9a7f52-8d4e-5b61-9f2a-7e0d4c1b8a93"  # docs/events.md, "Event id"
# Vectors computed once from the documented rule with RFC 4122 (SHA-1 of namespace bytes and
# name; see `rfc4122_uuid5`), and checked against Python's uuid.uuid5.
TELEMETRY_ID = "4f173608-d372-520c-b772-cb63170d894a"  # gw␟press␟temp␟1764666000123457␟good␟72.5
BAD_TELEMETRY_ID = "a3f727d2-3af8-5d6e-8533-bd41b15246d7"  # ...␟1764666000123457␟bad␟null
EVENT_ID = "c1c5ecab-b37d-5b33-a6a4-99b4987b518e"  # ipc-line1␟batch.completed␟line=..␟batch=..
PIPELINE_TELEMETRY_ID = "4b336c8c-e2fc-53e2-9827-210d402f3793"  # ipc-line1␟press␟temp␟(as above)
B1006_ID = "c1879800-7185-5f32-9ecc-c4acf082f03a"  # gw1␟batch.completed␟batch="B1006"
GOOD_4_DIGEST = "a9c8e0f118974f345b64fdf61fcd1b97"  # SHA-256 of {"good":4}, 32 hex digits
RELEASED_ID = "ad6bd6c2-61e4-504c-a71b-1f24957cea18"  # B1006_ID␟conflict␟GOOD_4_DIGEST


def rfc4122_uuid5(namespace: str, name: str) -> str:
    """UUIDv5 by the RFC, without the uuid module: what a consumer in another language does."""
    raw = bytearray(
        hashlib.sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode()).digest()
    )
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def test_the_documented_namespaces_are_the_ones_used() -> None:
    assert f"UUIDv5 in namespace `{TELEMETRY_NS}`" in (DOCS / "messages.md").read_text()
    assert f"UUIDv5 in namespace `{EVENT_NS}`" in (DOCS / "events.md").read_text()
    assert str(TELEMETRY_NAMESPACE) == TELEMETRY_NS
    assert str(EVENT_NAMESPACE) == EVENT_NS


def test_the_pinned_vectors_follow_the_documented_rule() -> None:
    """The literals above are what the documented rule gives (guards a typo in a pin)."""
    sep = "\x1f"
    telemetry = sep.join(["gw", "press", "temp", "1764666000123457", "good", "72.5"])
    assert rfc4122_uuid5(TELEMETRY_NS, telemetry) == TELEMETRY_ID
    assert str(uuid.uuid5(uuid.UUID(TELEMETRY_NS), telemetry)) == TELEMETRY_ID
    telemetry = sep.join(["ipc-line1", "press", "temp", "1764666000123457", "good", "72.5"])
    assert rfc4122_uuid5(TELEMETRY_NS, telemetry) == PIPELINE_TELEMETRY_ID
    event = sep.join(["ipc-line1", "batch.completed", 'line="line-1"', 'batch="B1001"'])
    assert rfc4122_uuid5(EVENT_NS, event) == EVENT_ID
    assert str(uuid.uuid5(uuid.UUID(EVENT_NS), event)) == EVENT_ID
    assert hashlib.sha256(b'{"good":4}').hexdigest()[:32] == GOOD_4_DIGEST
    assert rfc4122_uuid5(EVENT_NS, sep.join([B1006_ID, "conflict", GOOD_4_DIGEST])) == RELEASED_ID


@settings(max_examples=500, deadline=None)
@given(name=st.text())
def test_uuid5_text_is_uuid5(name: str) -> None:
    namespace = uuid.UUID(EVENT_NS)
    state = hashlib.sha1(namespace.bytes, usedforsecurity=False)
    assert uuid5_text(state, name) == str(uuid.uuid5(namespace, name))


def test_telemetry_key_gives_the_pinned_vector() -> None:
    assert telemetry_key("gw", "press", "temp", 1764666000.123457, "good", "72.5") == TELEMETRY_ID
    assert telemetry_key("gw", "press", "temp", 1764666000.123457, "bad", "null") == (
        BAD_TELEMETRY_ID
    )


def test_event_key_gives_the_pinned_vector() -> None:
    key = [("line", '"line-1"'), ("batch", '"B1001"')]
    assert event_key("ipc-line1", "batch.completed", key) == EVENT_ID
    # The order of the config's `key:` is part of the id.
    assert event_key("ipc-line1", "batch.completed", key[::-1]) != EVENT_ID


def test_a_released_conflict_gets_the_pinned_id() -> None:
    assert data_digest({"good": 4}) == GOOD_4_DIGEST
    assert conflict_key(B1006_ID, GOOD_4_DIGEST) == RELEASED_ID


CONFIG = """
gateway: {id: ipc-line1, site: plant-a, area: packaging, line: line-1, state_dir: /tmp/unused}
sources:
  - name: press
    protocol: modbus
    url: tcp://127.0.0.1:5020
    tags:
      - {name: temp, address: "holding:0", type: float32}
      - {name: state, address: "holding:2", type: uint16, values: {1: running, 3: done}}
      - {name: batch, address: "holding:210", type: string, length: 8}
      - {name: good, address: "holding:3", type: uint16}
events:
  - type: batch.completed
    trigger: {tag: press.state, changes_to: done}
    key: [line, batch]
    fields: {line: gateway.line, batch: press.batch, good: press.good}
"""


def test_the_pipeline_stamps_the_pinned_ids() -> None:
    """End to end through the pipeline: the ids a consumer receives are the pinned ones."""
    config = validate_document(GatewayConfig, load_yaml_text(CONFIG))
    pipeline = Pipeline(config)
    at = 1764666000.123457
    events, held = pipeline.process(
        [
            Reading("press", "temp", 72.5, "good", at, at + 0.01),
            Reading("press", "state", 3, "good", at, at + 0.01),
            Reading("press", "batch", "B1001", "good", at, at + 0.01),
            Reading("press", "good", 1180, "good", at, at + 0.01),
        ]
    )
    assert held == []
    by_schema = {(e.payload["schema"], e.payload.get("tag")): e.payload for e in events}
    event = by_schema[("edgegw.event/1", None)]
    assert (event["key"], event["data"]) == ({"line": "line-1", "batch": "B1001"}, {"good": 1180})
    assert event["id"] == EVENT_ID
    telemetry = by_schema[("edgegw.telemetry/1", "temp")]
    assert telemetry["value"] == 72.5
    assert telemetry["id"] == PIPELINE_TELEMETRY_ID


@settings(max_examples=500, deadline=None)
@given(
    stamps=st.lists(
        st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=20
    )
)
def test_iso_utc_matches_datetime_whatever_the_order(stamps: list[float]) -> None:
    for ts in stamps:
        seconds = int(ts)
        millis = int((ts - seconds) * 1000)
        when = dt.datetime.fromtimestamp(seconds, dt.UTC)
        assert iso_utc(ts) == when.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
