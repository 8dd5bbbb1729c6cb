"""Readings to telemetry: report-by-exception, heartbeat, bad values, envelope and schema."""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

import jsonschema
import pytest

from edgegw.config.diagnostics import validate_document
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.outbox.store import PendingEvent
from edgegw.pipeline.keys import telemetry_key
from edgegw.pipeline.telemetry import TelemetryBuilder, iso_utc
from edgegw.reading import Reading

CONFIG = """
gateway: {id: gw1, site: s1, area: a1, line: l1, state_dir: /tmp/x}
sources:
  - name: press
    protocol: modbus
    url: tcp://127.0.0.1:5020
    tags:
      - {name: temp, address: "holding:0", type: int16, unit: degC, deadband: 2}
      - {name: flow, address: "holding:1", type: int16, deadband: "10%"}
      - {name: count, address: "holding:2", type: uint16}
      - {name: beat, address: "holding:3", type: uint16, heartbeat: 1ms}
"""


def builder() -> TelemetryBuilder:
    return TelemetryBuilder(validate_document(GatewayConfig, load_yaml_text(CONFIG)))


def reading(
    tag: str,
    value: Any,
    ts: float = 1_700_000_000.25,
    quality: str = "good",
    reason: str | None = None,
) -> Reading:
    return Reading("press", tag, value, quality, ts, ts + 0.002, reason)  # type: ignore[arg-type]


def values(events: list[Any]) -> list[Any]:
    return [e.payload["value"] for e in events]


def test_absolute_deadband() -> None:
    b = builder()
    published = [
        values(b.build([reading("temp", v, ts=i)])) for i, v in enumerate([20, 21, 22, 23, 19, 19])
    ]
    assert published == [[20], [], [], [23], [19], []]


def test_percent_deadband() -> None:
    b = builder()
    published = [
        values(b.build([reading("flow", v, ts=i)])) for i, v in enumerate([100, 109, 111, 122, 125])
    ]
    assert published == [[100], [], [111], [], [125]]


def test_any_change_without_deadband_and_quality_changes() -> None:
    b = builder()
    seq = [reading("count", 1, ts=1), reading("count", 1, ts=2), reading("count", 2, ts=3)]
    assert [values(b.build([r])) for r in seq] == [[1], [], [2]]
    bad = b.build([reading("count", None, ts=4, quality="bad", reason="no reply within 1s")])
    assert bad[0].payload["quality"] == "bad"
    assert bad[0].payload["reason"] == "no reply within 1s"
    assert b.build([reading("count", None, ts=5, quality="bad", reason="no reply within 1s")]) == []
    # A different reason is news; recovery to the same value is news too.
    assert (
        len(b.build([reading("count", None, ts=6, quality="bad", reason="modbus exception 4")]))
        == 1
    )
    assert values(b.build([reading("count", 2, ts=7)])) == [2]


def test_heartbeat_republishes_unchanged_values() -> None:
    b = builder()
    assert values(b.build([reading("beat", 5, ts=1)])) == [5]
    import time

    deadline = time.monotonic() + 0.002
    while time.monotonic() < deadline:
        pass
    assert values(b.build([reading("beat", 5, ts=2)])) == [5]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_never_good(bad: float) -> None:
    (event,) = builder().build([reading("temp", bad)])
    assert event.payload["quality"] == "bad"
    assert event.payload["value"] is None
    assert "value is" in event.payload["reason"]


def test_envelope_matches_the_shipped_schema_and_design() -> None:
    (event,) = builder().build([reading("temp", 72)])
    # Made with tuple.__new__ (no defaults, no arity check): every field must be there.
    assert len(event) == len(PendingEvent._fields)
    payload = dict(event.payload, seq=1)
    schema = json.loads(resources.files("edgegw").joinpath("schemas/telemetry-1.json").read_text())
    jsonschema.validate(payload, schema)
    assert list(payload) == [
        "schema",
        "id",
        "gateway",
        "source",
        "tag",
        "value",
        "unit",
        "quality",
        "ts",
        "gw_ts",
        "seq",
        "trace",
    ]
    assert payload["ts"] == "2023-11-14T22:13:20.250Z"
    assert payload["gw_ts"] == "2023-11-14T22:13:20.252Z"
    assert event.topic == "s1/a1/l1/press/temp"
    key = telemetry_key("gw1", "press", "temp", 1_700_000_000.25, "good", orjson_text(payload))
    assert event.id == payload["id"] == key
    bad = builder().build([reading("temp", None, quality="bad", reason="x")])[0].payload
    jsonschema.validate(dict(bad, seq=2), schema)


def test_keys_are_deterministic_and_distinct() -> None:
    a = telemetry_key("gw1", "press", "temp", 1.000001, "good", "7.5")
    assert a == telemetry_key("gw1", "press", "temp", 1.000001, "good", "7.5")
    others = {
        telemetry_key("gw2", "press", "temp", 1.000001, "good", "7.5"),
        telemetry_key("gw1", "press", "temp", 1.000002, "good", "7.5"),
        telemetry_key("gw1", "press", "flow", 1.000001, "good", "7.5"),
        # A server with coarse timestamps: another value at the same instant is another event.
        telemetry_key("gw1", "press", "temp", 1.000001, "good", "7.6"),
        telemetry_key("gw1", "press", "temp", 1.000001, "uncertain", "7.5"),
    }
    assert len({a, *others}) == 6


def orjson_text(payload: dict[str, object]) -> str:
    import orjson

    return orjson.dumps(payload["value"]).decode()


def test_iso_utc_milliseconds() -> None:
    assert iso_utc(0.999) == "1970-01-01T00:00:00.999Z"


LEVEL_CONFIG = """
gateway: {id: gw1, site: s1, area: a1, line: l1, state_dir: /tmp/x}
sources:
  - name: press
    protocol: modbus
    url: tcp://127.0.0.1:5020
    tags:
      - {name: level, address: "holding:0", type: int16, max: 3}
"""


def test_a_lasting_violation_is_one_record_updated_every_10_s_and_at_its_end() -> None:
    from edgegw.pipeline.process import Pipeline

    config = validate_document(GatewayConfig, load_yaml_text(LEVEL_CONFIG))
    pipeline = Pipeline(config)
    records = []
    # 25 polls above max, one every second; then a good value
    for at in range(25):
        records += pipeline.process([reading("level", 4 + at % 3, ts=1000.0 + at)])[1]
    records += pipeline.process([reading("level", 2, ts=1025.0)])[1]
    assert [(r.continues, r.count, r.value, r.last_ts) for r in records] == [
        (False, 1, 4, 1000.0),
        (True, 10, 5, 1010.0),  # written again 10 s after the first
        (True, 10, 6, 1020.0),
        (True, 4, 4, 1024.0),  # and when the value is good again
    ]
    assert sum(r.count for r in records) == 25  # in: 25 violating values; out: all counted
    assert {(r.key, r.ts) for r in records} == {(records[0].key, 1000.0)}  # one record
    assert pipeline.quarantined == 1

    # A reload keeps the violation open: the next violating value goes on in the same record.
    pipeline.process([reading("level", 9, ts=1030.0)])
    reloaded = Pipeline(config)
    reloaded.carry_from(pipeline)
    after = reloaded.process([reading("level", 8, ts=1031.0)])[1]
    after += reloaded.process([reading("level", 1, ts=1032.0)])[1]
    assert [(r.continues, r.count, r.value, r.ts) for r in after] == [(True, 1, 8, 1030.0)]
    assert reloaded.quarantined == 2


def test_a_stop_writes_what_a_lasting_violation_has_not_written_yet() -> None:
    from edgegw.pipeline.process import Pipeline

    config = validate_document(GatewayConfig, load_yaml_text(LEVEL_CONFIG))
    pipeline = Pipeline(config)
    records = []
    for at in range(14):  # opened at 1000, written at 1010, 3 more pending at the stop
        records += pipeline.process([reading("level", 4 + at % 3, ts=1000.0 + at)])[1]
    records += pipeline.flush()
    assert [(r.continues, r.count, r.last_ts) for r in records] == [
        (False, 1, 1000.0),
        (True, 10, 1010.0),
        (True, 3, 1013.0),
    ]
    assert sum(r.count for r in records) == 14  # in: 14 violating values; out: all counted
    assert pipeline.flush() == []  # written once


def test_a_reload_that_takes_a_rule_away_writes_its_violation_s_last_count() -> None:
    from edgegw.pipeline.process import Pipeline

    config = validate_document(GatewayConfig, load_yaml_text(LEVEL_CONFIG))
    pipeline = Pipeline(config)
    opened = pipeline.process([reading("level", 7, ts=1000.0)])[1]
    pipeline.process([reading("level", 8, ts=1001.0)])
    pipeline.process([reading("level", 9, ts=1002.0)])
    unruled = validate_document(
        GatewayConfig, load_yaml_text(LEVEL_CONFIG.replace(", max: 3}", "}"))
    )
    reloaded = Pipeline(unruled)
    ended = reloaded.carry_from(pipeline)
    assert [(r.continues, r.count, r.value, r.key) for r in ended] == [(True, 2, 9, opened[0].key)]
