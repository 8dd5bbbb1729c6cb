"""What `edgegw demo` prints for each message and in its summary, without starting anything."""

from __future__ import annotations

import json

import orjson
import pytest

from edgegw.cli.main import main
from edgegw.demo import RunFacts, Tally, describe, missing_ranges, summary

TOPIC = "plant-a/packaging/line-1"


def telemetry(tag: str, value: object, seq: int) -> bytes:
    return orjson.dumps(
        {
            "schema": "edgegw.telemetry/1",
            "id": "00000000-0000-5000-8000-000000000000",
            "gateway": "demo-gw",
            "source": "press-01",
            "tag": tag,
            "value": value,
            "unit": None,
            "quality": "good",
            "ts": "2026-01-01T00:00:00.000Z",
            "gw_ts": "2026-01-01T00:00:00.000Z",
            "seq": seq,
            "trace": "0123456789abcdef",
        }
    )


def test_a_value_is_printed_as_it_went_on_the_wire() -> None:
    tally = Tally()
    payload = telemetry("running", False, 7)
    lines = describe(f"{TOPIC}/press-01/running", payload, tally)
    assert lines == [f"{TOPIC}/press-01/running {payload.decode()}"]
    _topic, wire = lines[0].split(" ", 1)
    assert json.loads(wire)["value"] is False  # JSON false, not Python's False
    assert (tally.values, tally.seqs, tally.tags) == (1, {7}, {"press-01.running"})


def test_an_event_gets_an_event_line_before_its_message() -> None:
    tally = Tally()
    event = {
        "schema": "edgegw.event/1",
        "type": "batch.completed",
        "key": {"batch": "B1001"},
        "data": {"good": 18, "scrap": 2},
        "seq": 12,
    }
    payload = orjson.dumps(event)
    lines = describe(f"{TOPIC}/events/batch.completed", payload, tally)
    assert lines == [
        'EVENT batch.completed key {"batch":"B1001"} data {"good":18,"scrap":2} seq 12',
        f"{TOPIC}/events/batch.completed {payload.decode()}",
    ]
    assert tally.events == {"batch.completed": 1}
    assert tally.values == 0


def test_status_and_schemas() -> None:
    tally = Tally()
    assert describe(f"{TOPIC}/demo-gw/status", b"online", tally) == [
        f"{TOPIC}/demo-gw/status online"
    ]
    schema = orjson.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    assert describe(f"{TOPIC}/schemas/edgegw.event-1", schema, tally) == [
        f"{TOPIC}/schemas/edgegw.event-1 (a JSON Schema of the messages, {len(schema)} bytes, "
        "retained)"
    ]
    assert tally.seqs == set()


def test_gaps_are_counted_from_the_received_seqs() -> None:
    assert missing_ranges([]) == []
    assert missing_ranges([3, 1, 2, 2]) == []
    assert missing_ranges([1, 2, 4, 7, 8]) == [(3, 3), (5, 6)]


def facts(quarantined: int = 0) -> RunFacts:
    return RunFacts(
        seconds=20.04,
        config_path="/tmp/x/state/demo.yaml",
        config_kept=False,
        mqtt_port=1883,
        quarantined=quarantined,
        configured_tags=("press-01.good", "filler.good"),
    )


def test_the_summary_counts_values_events_and_gaps() -> None:
    tally = Tally()
    for seq in (1, 2, 3):
        describe(f"{TOPIC}/press-01/good", telemetry("good", seq, seq), tally)
    text = "\n".join(summary(tally, facts()))
    assert "edgegw demo: stopped after 20.0 s. The subscriber received:" in text
    assert "  values       3 (telemetry of 1 tag)" in text
    assert "  events       0\n" in text
    assert "  seq gaps     0 (seq 1..3, every one arrived)" in text
    assert "  silent tags  filler.good: not one value (the gateway's log says why)" in text
    assert "  quarantined  0 records" in text
    assert "What to try next:" in text
    assert "edgegw check -c " in text
    assert "demo.yaml" in text
    assert "-t '#' -v" in text

    describe(f"{TOPIC}/press-01/good", telemetry("good", 9, 9), tally)
    describe(f"{TOPIC}/press-01/good", telemetry("good", 9, 9), tally)  # QoS 1: again
    text = "\n".join(summary(tally, facts(quarantined=2)))
    assert "  seq gaps     1 (5 seqs missing between 1 and 9: 4-8)" in text
    assert "  repeated     1 " in text
    assert "  quarantined  2 records held back by a contract" in text


def test_demo_help_names_both_simulators(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Modbus TCP PLC simulator (simulators/modbus_plc.py)" in text
    assert "OPC UA PLC simulator (simulators/opcua_plc.py)" in text
    assert "EVENT line" in text
    assert "summary" in text
