"""Business events end to end: Modbus simulator -> `edgegw run` -> outbox -> Mosquitto ->
the reference MES consumer, across a gateway restart and with duplicates forced on the wire;
contract violations land in the quarantine and never on the wire as good data."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mes_consumer import MesConsumer
from simulators.modbus_plc import ModbusPlc
from tests.conftest import StartModbusPlc
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import GatewayProcess, write_config
from tests.support.subscriber import Subscriber
from tests.support.wait import until

STATE, GOOD, ORDER_STATUS, PRESSURE, BATCH = 0, 1, 30, 40, 210


@pytest.fixture
async def plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    sim = await start_modbus_plc()  # frozen: the test sets every register
    set_line(sim, state=1, good=0, batch="B1001", order_status=0, pressure=60)
    return sim


def set_line(sim: ModbusPlc, **values: Any) -> None:
    registers = {"state": STATE, "good": GOOD, "order_status": ORDER_STATUS, "pressure": PRESSURE}
    for name, value in values.items():
        if name == "batch":
            raw = value.encode().ljust(16, b"\0")
            sim.set_holding(BATCH, [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 16, 2)])
        else:
            sim.set_holding(registers[name], [value & 0xFFFF])


def config(state_dir: Path, mqtt_port: int, modbus_port: int) -> dict[str, Any]:
    return {
        "gateway": {"id": "ev-gw", "site": "s", "area": "a", "line": "L1"}
        | {"state_dir": str(state_dir)},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "keepalive": "2s"},
        "sources": [
            {
                "name": "cell",
                "protocol": "modbus",
                "url": f"tcp://127.0.0.1:{modbus_port}",
                "poll": "100ms",
                "tags": [
                    {
                        "name": "state",
                        "address": f"holding:{STATE}",
                        "type": "uint16",
                        "values": {0: "idle", 1: "running", 3: "done"},
                    },
                    {"name": "good", "address": f"holding:{GOOD}", "type": "uint16"},
                    {"name": "batch", "address": f"holding:{BATCH}", "type": "string", "length": 8},
                    {
                        "name": "pressure",
                        "address": f"holding:{PRESSURE}",
                        "type": "int16",
                        "min": 0,
                        "max": 100,
                        "unit": "bar",
                    },
                    {
                        "name": "order_status",
                        "address": f"holding:{ORDER_STATUS}",
                        "type": "uint16",
                        "values": {0: "created", 1: "released", 2: "running", 3: "completed"},
                    },
                ],
            }
        ],
        "events": [
            {
                "type": "batch.completed",
                "trigger": {"tag": "cell.state", "changes_to": "done"},
                "key": ["batch"],
                "fields": {"batch": "cell.batch", "good": "cell.good"},
                "contract": {
                    "good": {"type": "int", "min": 0, "max": 50000},
                    "batch": {"type": "str", "pattern": "^B[0-9]{3,}$"},
                },
            }
        ],
        "sequences": [
            {
                "tag": "cell.order_status",
                "transitions": {
                    "created": ["released"],
                    "released": ["running"],
                    "running": ["completed"],
                },
            }
        ],
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_edgegw(*args)


def replay_twice(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish each message twice more: duplicates as a broker or a resend would make them."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages * 2:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


async def test_one_event_per_batch_across_restart_and_duplicates(
    plc: ModbusPlc, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", config(tmp_path / "state", mosquitto.port, plc.port))
    consumer = MesConsumer(tmp_path / "mes.sqlite3", port=mosquitto.port, topic="s/a/L1/#")
    with consumer, Subscriber(mosquitto.port, "s/a/L1/events/#") as wire:
        gateway = await GatewayProcess(path).start()
        await until(lambda: consumer.summary().telemetry > 0, 20, "telemetry")
        set_line(plc, state=3, good=1180)  # batch B1001 completes
        await until(lambda: consumer.summary().events_by_type, 10, "the first event")

        # Restart: the batch is still 'done' and is detected again at the first poll.
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
        before = consumer.summary().telemetry
        restart_seq = consumer.summary().gateways["ev-gw"].max_seq
        gateway = await GatewayProcess(path).start()
        await until(
            lambda: consumer.summary().telemetry > before, 20, "the restarted gateway publishing"
        )
        set_line(plc, state=1, good=5, batch="B1002")
        await until(
            lambda: _tag_seen(consumer, "state", "running", after_seq=restart_seq),
            10,
            "the next batch running",
        )
        set_line(plc, state=3, good=990)
        await until(
            lambda: consumer.summary().events_by_type.get("batch.completed") == 2,
            10,
            "the second batch's event",
        )
        replay_twice(mosquitto.port, [(m.topic, m.payload) for m in wire.messages])
        summary = consumer.wait_until(lambda s: s.duplicates >= 4, 10)

        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0

    events = consumer.events("batch.completed")
    assert [(e["key"], e["data"]) for e in events] == [
        ({"batch": "B1001"}, {"good": 1180}),
        ({"batch": "B1002"}, {"good": 990}),
    ]
    assert len({e["id"] for e in events}) == 2
    assert summary.events_by_type == {"batch.completed": 2}
    assert summary.gaps == {} or all(not ranges for ranges in summary.gaps.values())
    detected_again = [line for line in gateway.log() if "detected again" in line.get("msg", "")]
    assert [line["msg"] for line in detected_again] == [
        "business event batch.completed key {batch: B1001} detected again with the same data; "
        "not sent twice"
    ], "the restarted gateway saw B1001 again and refused to send it twice"


async def test_a_reused_batch_id_is_a_conflict_released_under_a_new_id(
    plc: ModbusPlc, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The PLC restarts and completes B1001 again with other counts: held as a conflict (not
    dropped as a duplicate, not sent under the old id), then released by an operator."""
    path = write_config(tmp_path / "gw.yaml", config(tmp_path / "state", mosquitto.port, plc.port))
    consumer = MesConsumer(tmp_path / "mes.sqlite3", port=mosquitto.port, topic="s/a/L1/#")
    with consumer, Subscriber(mosquitto.port, "s/a/L1/events/#") as wire:
        gateway = await GatewayProcess(path).start()
        try:
            await until(lambda: consumer.summary().telemetry > 0, 20, "telemetry")
            set_line(plc, state=3, good=21)
            await wire.wait_for(lambda got: len(got) >= 1, 10, what="the first B1001 event")
            seq = consumer.summary().gateways["ev-gw"].max_seq
            set_line(plc, state=1, good=0)  # the PLC restarted, its batch counter too
            await until(
                lambda: _tag_seen(consumer, "state", "running", after_seq=seq),
                10,
                "the batch running again",
            )
            set_line(plc, state=3, good=4)

            def conflicts() -> list[dict[str, Any]]:
                listed = cli("quarantine", "-c", str(path), "--json")
                records = [orjson.loads(line) for line in listed.stdout.splitlines()]
                return [r for r in records if r["rule"] == "conflict"]

            await until(lambda: len(conflicts()) == 1, 15, "the conflict in the quarantine")
            (record,) = conflicts()
            reason = (
                "batch.completed key {batch: B1001} was already sent with other data: good 21 → 4"
            )
            assert record["reason"] == reason
            first = orjson.loads(wire.messages[0].payload)
            assert record["supersedes"] == first["id"]
            warned = [
                line["msg"]
                for line in gateway.log()
                if line.get("level") == "warning" and "business event conflict" in line["msg"]
            ]
            assert warned
            assert warned[0].startswith(f"business event conflict: {reason}; held")

            released = cli("quarantine", "release", "-c", str(path), str(record["qid"]))
            assert released.returncode == 0, released.stderr
            assert f"a new event superseding {first['id']}" in released.stdout
            got = await wire.wait_for(lambda got: len(got) >= 2, 15, what="the released event")
        finally:
            gateway.signal(signal.SIGTERM)
            assert await gateway.wait(20) == 0
    # In: two completions of B1001 (21, then 4). Out: two events, the second superseding.
    events = [orjson.loads(m.payload) for m in got]
    assert [(e["key"], e["data"], e.get("supersedes")) for e in events] == [
        ({"batch": "B1001"}, {"good": 21}, None),
        ({"batch": "B1001"}, {"good": 4}, first["id"]),
    ]
    assert events[1]["id"] == record["id"] != first["id"]
    assert conflicts() == []


def _tag_seen(consumer: MesConsumer, tag: str, value: Any, *, after_seq: int) -> bool:
    import sqlite3

    with contextlib.closing(sqlite3.connect(consumer.db_path)) as db:
        rows = db.execute(
            "SELECT payload FROM messages WHERE schema = 'edgegw.telemetry/1' AND seq > ?",
            (after_seq,),
        )
        return any(
            (p := orjson.loads(row[0]))["tag"] == tag and p["value"] == value for row in rows
        )


async def test_violations_are_quarantined_not_published_as_good(
    plc: ModbusPlc, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", config(tmp_path / "state", mosquitto.port, plc.port))
    with Subscriber(mosquitto.port, "s/a/L1/#") as wire:
        gateway = await GatewayProcess(path).start()
        try:
            await until(lambda: len(wire.messages) > 3, 20, "first messages")
            set_line(plc, pressure=130, order_status=2)  # out of range; created -> running
            await until(
                lambda: sum(1 for m in _payloads(wire) if m.get("quality") == "bad") >= 2,
                10,
                "two bad telemetry messages",
            )
            set_line(plc, state=3, good=60_000)  # the event breaks its contract
            result: subprocess.CompletedProcess[str] | None = None

            def quarantined() -> list[dict[str, Any]]:
                nonlocal result
                result = cli("quarantine", "-c", str(path), "--json")
                return [orjson.loads(line) for line in result.stdout.splitlines()]

            await until(lambda: len(quarantined()) >= 3, 15, "three quarantine records")
        finally:
            gateway.signal(signal.SIGTERM)
            assert await gateway.wait(20) == 0
    records = quarantined()
    by_rule = {r["rule"]: r for r in records}
    # One record per violation, not one per poll (the value stayed out of range for seconds).
    assert sorted(r["rule"] for r in records) == ["contract", "range", "sequence"]
    assert by_rule["range"]["subject"] == "cell.pressure"
    assert by_rule["range"]["value"] == 130
    assert "above max 100" in by_rule["range"]["reason"]
    assert by_rule["sequence"]["reason"].startswith("created -> running is not allowed")
    assert by_rule["contract"]["kind"] == "event"
    assert "good 60000 is above max 50000" in by_rule["contract"]["reason"]
    payloads = _payloads(wire)
    assert not any(p.get("schema") == "edgegw.event/1" for p in payloads)
    assert not any(p.get("tag") == "pressure" and p.get("value") == 130 for p in payloads)
    bad = [p for p in payloads if p.get("tag") == "pressure" and p.get("quality") == "bad"]
    assert bad[0]["value"] is None
    assert bad[0]["reason"] == "range: 130 is above max 100"

    # An operator releases the held event: the next gateway run publishes it, with an audit.
    contract = by_rule["contract"]
    released = cli("quarantine", "release", "-c", str(path), str(contract["qid"]))
    assert released.returncode == 0, released.stderr
    assert "audit: quarantine release" in released.stderr
    dropped = cli("quarantine", "drop", "-c", str(path), str(by_rule["range"]["qid"]))
    assert dropped.returncode == 0, dropped.stderr
    with Subscriber(mosquitto.port, "s/a/L1/events/#") as events:
        gateway = await GatewayProcess(path).start()
        try:
            got = await events.wait_for(lambda got: len(got) >= 1, 15, what="the released event")
        finally:
            gateway.signal(signal.SIGTERM)
            assert await gateway.wait(20) == 0
    assert orjson.loads(got[0].payload)["id"] == contract["id"]
    # The schemas stay on the broker, retained, for consumers that come later.
    with Subscriber(mosquitto.port, "s/a/L1/schemas/#") as schemas:
        await schemas.wait_for(lambda got: len(got) >= 5, 10, what="the retained schemas")
        by_topic = {m.topic: orjson.loads(m.payload) for m in schemas.messages}
    batch_schema = by_topic["s/a/L1/schemas/batch.completed"]
    assert batch_schema["properties"]["type"] == {"const": "batch.completed"}
    assert batch_schema["properties"]["data"]["properties"]["good"]["maximum"] == 50000
    assert set(by_topic) >= {"s/a/L1/schemas/edgegw.telemetry-1", "s/a/L1/schemas/edgegw.event-1"}
    left = {r["qid"] for r in quarantined()}
    assert contract["qid"] not in left
    assert by_rule["range"]["qid"] not in left


def _payloads(sub: Subscriber) -> list[dict[str, Any]]:
    out = []
    for message in sub.messages:
        try:
            data = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and "schema" in data and "seq" in data:
            out.append(data)
    return out
