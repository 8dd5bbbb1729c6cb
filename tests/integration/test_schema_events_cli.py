"""`edgegw schema --events -c FILE` (docs/events.md, "Schemas"): the envelope schemas and one
per event type with its contract; the messages the gateway sends follow them, and it publishes
the same schemas, retained, under `schema_topic`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import GatewayProcess, config_dict, write_config
from tests.support.subscriber import Subscriber

pytestmark = pytest.mark.timeout(60)

STATE, GOOD, BATCH = 0, 1, 210
ENVELOPES = {"edgegw.telemetry-1", "edgegw.event-1", "edgegw.gap-1", "edgegw.batch-1"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_edgegw(*args)


def line_config(state_dir: Path, mqtt_port: int, modbus_port: int) -> dict[str, Any]:
    tags = [
        {
            "name": "state",
            "address": f"holding:{STATE}",
            "type": "uint16",
            "values": {1: "running", 3: "done"},
        },
        {"name": "good", "address": f"holding:{GOOD}", "type": "uint16"},
        {"name": "batch", "address": f"holding:{BATCH}", "type": "string", "length": 8},
    ]
    data = config_dict(state_dir, mqtt_port, modbus_port, tags)
    data["events"] = [
        {
            "type": "batch.completed",
            "trigger": {"tag": "plc.state", "changes_to": "done"},
            "key": ["line", "batch"],
            "fields": {"line": "gateway.line", "batch": "plc.batch", "good": "plc.good"},
            "contract": {
                "good": {"type": "int", "min": 0, "max": 50000},
                "batch": {"type": "str", "pattern": "^B[0-9]{3,}$"},
            },
        },
        {
            "type": "line.started",
            "trigger": {"tag": "plc.state", "changes_to": "running"},
            "key": ["batch"],
            "fields": {"batch": "plc.batch"},
        },
    ]
    return data


def printed_schemas(config: Path) -> dict[str, dict[str, Any]]:
    result = cli("schema", "--events", "-c", str(config))
    assert result.returncode == 0, result.stderr
    schemas: dict[str, dict[str, Any]] = orjson.loads(result.stdout)
    return schemas


def test_the_schemas_of_a_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", line_config(tmp_path / "state", 1883, 502))
    schemas = printed_schemas(config)
    assert set(schemas) == ENVELOPES | {"batch.completed", "line.started"}
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)  # each one a valid schema
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
    completed = schemas["batch.completed"]
    props = completed["properties"]
    assert props["type"] == {"const": "batch.completed"}
    assert props["gateway"] == {"const": "test-gw"}
    assert props["key"]["required"] == ["line", "batch"]
    assert props["key"]["properties"]["batch"]["pattern"] == "^B[0-9]{3,}$"
    assert props["data"]["required"] == ["good"]
    good = props["data"]["properties"]["good"]
    assert (good["type"], good["minimum"], good["maximum"]) == ("integer", 0, 50000)

    event = {
        "schema": "edgegw.event/1",
        "id": "c1c5ecab-b37d-5b33-a6a4-99b4987b518e",
        "gateway": "test-gw",
        "type": "batch.completed",
        "key": {"line": "l", "batch": "B1001"},
        "data": {"good": 1180},
        "ts": "2026-11-29T05:41:02.300Z",
        "seq": 12346,
        "trace": "51ab00c0ffee0001",
    }
    jsonschema.validate(event, completed)
    for wrong in (
        {"data": {"good": 60_000}},  # above the contract's max
        {"key": {"line": "l", "batch": "X12"}},  # not the pattern
        {"data": {}},  # a field missing
        {"type": "line.started"},  # another type
        {"gateway": "other-gw"},  # another gateway's
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(event | wrong, completed)


def test_without_a_config_or_with_a_wrong_one(tmp_path: Path) -> None:
    alone = cli("schema", "--events")
    assert alone.returncode == 1
    assert alone.stderr.strip() == "edgegw schema: schema --events needs -c FILE"
    data = line_config(tmp_path / "state", 1883, 502)
    data["events"][0]["contract"]["good"]["type"] = "integr"
    wrong = cli("schema", "--events", "-c", str(write_config(tmp_path / "gw.yaml", data)))
    assert wrong.returncode == 78
    assert wrong.stderr.startswith(f"{tmp_path / 'gw.yaml'}:"), wrong.stderr
    assert "integr" in wrong.stderr


def set_line(sim: ModbusPlc, *, state: int, good: int, batch: str) -> None:
    raw = batch.encode().ljust(16, b"\0")
    sim.set_holding(BATCH, [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 16, 2)])
    sim.set_holding(GOOD, [good])
    sim.set_holding(STATE, [state])


async def test_the_gateway_sends_what_the_schemas_say_and_publishes_them(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    config = write_config(
        tmp_path / "gw.yaml", line_config(tmp_path / "state", mosquitto.port, plc.port)
    )
    schemas = await asyncio.to_thread(printed_schemas, config)
    set_line(plc, state=3, good=1180, batch="B1001")  # done at the first read: an event
    gateway = await GatewayProcess(config).start()
    try:

        def numbered() -> list[dict[str, Any]]:
            out = []
            for message in subscriber.messages:
                payload = orjson.loads(message.payload) if message.payload[:1] == b"{" else {}
                if "seq" in payload:
                    out.append(payload)
            return out

        await subscriber.wait_for(
            lambda _: (
                any(p["schema"] == "edgegw.event/1" for p in numbered())
                and any(p.get("tag") == "good" for p in numbered())
            ),
            20,
            what="an event and telemetry",
        )
        # A consumer that comes later gets every schema, retained.
        with Subscriber(mosquitto.port, "s/a/l/schemas/#") as late:
            await late.wait_for(
                lambda got: len(got) >= len(schemas), 10, what=f"{len(schemas)} schemas"
            )
            retained = {m.topic: (m.retain, orjson.loads(m.payload)) for m in late.messages}
    finally:
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
    assert retained == {f"s/a/l/schemas/{name}": (True, schema) for name, schema in schemas.items()}
    messages = numbered()
    for payload in messages:
        if payload["schema"] == "edgegw.event/1":
            jsonschema.validate(payload, schemas[payload["type"]])
            jsonschema.validate(payload, schemas["edgegw.event-1"])
        else:
            assert payload["schema"] == "edgegw.telemetry/1"
            jsonschema.validate(payload, schemas["edgegw.telemetry-1"])
    (event,) = [p for p in messages if p["schema"] == "edgegw.event/1"]
    assert (event["key"], event["data"]) == ({"line": "l", "batch": "B1001"}, {"good": 1180})
