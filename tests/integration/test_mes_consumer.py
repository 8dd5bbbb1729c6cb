"""The reference MES consumer against a real Mosquitto, fed by a raw paho publisher.

The publisher crafts what a gateway puts on the wire, including what at-least-once delivery
and restarts produce: the same id two or three times, resends after newer messages, a lost
seq range, retained status and schema messages.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators.mes_consumer import MesConsumer, Summary
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parents[2]
BASE = "acme/plant1/line1"
WAIT = 5.0  # seconds; every wait ends as soon as its condition holds


def event(
    gateway: str, seq: int, kind: str, *, batch: str, msg_id: str | None = None
) -> dict[str, Any]:
    return {
        "schema": "edgegw.event/1",
        "id": msg_id or str(uuid.uuid4()),
        "gateway": gateway,
        "seq": seq,
        "trace": uuid.uuid4().hex,
        "type": kind,
        "key": {"line": "line1", "batch": batch},
        "data": {"good": 20, "scrap": 1},
        "ts": "2026-11-29T05:37:14.123Z",
    }


def telemetry(gateway: str, seq: int, value: float) -> dict[str, Any]:
    return {
        "schema": "edgegw.telemetry/1",
        "id": str(uuid.uuid4()),
        "gateway": gateway,
        "seq": seq,
        "trace": uuid.uuid4().hex,
        "source": "press-01",
        "tag": "temperature",
        "value": value,
        "quality": "good",
        "ts": "2026-11-29T05:37:14.123Z",
    }


class Publisher:
    """A raw paho MQTT 5 publisher; every publish waits for its PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.count = 0

    def send(self, topic: str, payload: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        props = None
        if isinstance(payload, dict):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [
                ("id", payload["id"]),
                ("schema", payload["schema"]),
                ("trace", payload["trace"]),
            ]
            props.ContentType = "application/json"
            payload = json.dumps(payload).encode()
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"no PUBACK for {topic}"
        self.count += 1

    def data(self, message: dict[str, Any], times: int = 1) -> None:
        kind = message.get("type", message.get("tag"))
        for _ in range(times):
            self.send(f"{BASE}/{message['gateway']}/{kind}", message)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.port)
    try:
        yield pub
    finally:
        pub.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mes.sqlite3"


def consumer_for(broker: Mosquitto, db: Path, **options: Any) -> MesConsumer:
    return MesConsumer(db, host=broker.host, port=broker.port, **options)


def received(n: int) -> Callable[[Summary], bool]:
    return lambda s: s.received >= n


def test_duplicates_gap_resends_and_non_data(
    mosquitto: Mosquitto, publisher: Publisher, db: Path
) -> None:
    # Retained non-data before the consumer subscribes: it gets them on SUBACK.
    publisher.send(f"{BASE}/gw-a/status", b"online", retain=True)
    publisher.send(f"{BASE}/gw-b/status", b'{"state": "online", "since": 1}', retain=True)
    schema_doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}
    publisher.send(
        f"{BASE}/gw-a/schemas/batch.completed", json.dumps(schema_doc).encode(), retain=True
    )

    with consumer_for(mosquitto, db) as consumer:
        sent_before = publisher.count
        a = [event("gw-a", 1, "order.released", batch="B1001")]
        a += [telemetry("gw-a", 2, 72.5), telemetry("gw-a", 3, 72.6)]
        a += [event("gw-a", 4, "batch.completed", batch="B1001")]
        a += [telemetry("gw-a", 5, 72.7)]
        # seq 6..8 are lost (never published)
        a += [event("gw-a", 9, "order.released", batch="B1002")]
        a += [event("gw-a", 10, "batch.completed", batch="B1002")]
        a += [event("gw-a", 11, "batch.completed", batch="B1003")]
        b = [event("gw-b", seq, "batch.completed", batch=f"C{seq}") for seq in range(1, 4)]

        publisher.data(a[0])
        publisher.data(a[1])
        publisher.data(a[3], times=3)  # at-least-once: one event three times
        publisher.data(a[4])
        publisher.data(a[5], times=2)
        publisher.data(a[7])
        publisher.data(a[6])
        publisher.data(b[1])
        publisher.data(b[0])
        # A gateway restart: resend of older messages after newer ones, seq 3 first seen here.
        publisher.data(a[0])
        publisher.data(a[2])
        publisher.data(a[1])
        publisher.data(b[2])
        publisher.send(f"{BASE}/gw-a/garbage", b"\xff\xfe not json")
        publisher.send(f"{BASE}/gw-a/other", b'{"id": "x-1", "note": "an id but no seq"}')

        total = publisher.count - sent_before + 3  # + the three retained messages
        summary = consumer.wait_until(received(total), WAIT)

        assert summary.received == total
        assert summary.stored == summary.inserted == len(a) + len(b) == 11
        assert summary.duplicates == 2 + 1 + 2  # a[3] twice more, a[5] once more, a[0]+a[1]
        assert summary.other == 5  # 2 status, 1 schema, garbage, id without seq
        assert summary.errors == summary.conflicts == 0
        assert summary.received == summary.inserted + summary.duplicates + summary.other

        gw_a, gw_b = summary.gateways["gw-a"], summary.gateways["gw-b"]
        assert (gw_a.min_seq, gw_a.max_seq, gw_a.count) == (1, 11, 8)
        assert gw_a.missing == ((6, 8),)
        assert gw_a.missing_count == 3
        assert (gw_b.min_seq, gw_b.max_seq, gw_b.count, gw_b.missing) == (1, 3, 3, ())
        assert summary.gaps == {"gw-a": ((6, 8),)}
        assert summary.events_by_type == {"batch.completed": 6, "order.released": 2}
        assert summary.telemetry == 3
        assert summary.by_schema == {"edgegw.event/1": 8, "edgegw.telemetry/1": 3}
        assert "gw-a seq 1..11 n=8 missing 3 [6-8]" in summary.line()

        completed = consumer.events("batch.completed")
        assert [(e["gateway"], e["seq"]) for e in completed] == [
            ("gw-a", 4),
            ("gw-a", 10),
            ("gw-a", 11),
            ("gw-b", 1),
            ("gw-b", 2),
            ("gw-b", 3),
        ]
        assert completed[0] == a[3]  # the payload as published
        assert [e["key"]["batch"] for e in consumer.events("order.released")] == ["B1001", "B1002"]
        assert len(consumer.events()) == 8

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, COUNT(*) FROM messages GROUP BY id").fetchall()
        assert len(rows) == 11
        assert all(n == 1 for _, n in rows)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert {r[0] for r in rows} == {m["id"] for m in a + b}


def test_gap_is_judged_on_the_set_not_arrival_order(
    mosquitto: Mosquitto, publisher: Publisher, db: Path
) -> None:
    msgs = {seq: event("gw-a", seq, "part.done", batch="B1") for seq in range(1, 8)}
    with consumer_for(mosquitto, db) as consumer:
        for seq in (1, 2, 6, 7):
            publisher.data(msgs[seq])
        summary = consumer.wait_until(lambda s: s.stored == 4, WAIT)
        assert summary.gateways["gw-a"].missing == ((3, 5),)

        publisher.data(msgs[4])  # late resends, newest first
        summary = consumer.wait_until(lambda s: s.stored == 5, WAIT)
        assert summary.gateways["gw-a"].missing == ((3, 3), (5, 5))
        assert "missing 2 [3, 5]" in summary.line()

        publisher.data(msgs[5])
        publisher.data(msgs[3])
        publisher.data(msgs[6])  # and one duplicate among them
        summary = consumer.wait_until(received(8), WAIT)
        gw = summary.gateways["gw-a"]
        assert (gw.min_seq, gw.max_seq, gw.count, gw.missing) == (1, 7, 7, ())
        assert (summary.stored, summary.duplicates) == (7, 1)
        assert [e["seq"] for e in consumer.events("part.done")] == list(range(1, 8))


def test_restart_keeps_dedupe_and_gets_what_was_queued(
    mosquitto: Mosquitto, publisher: Publisher, db: Path
) -> None:
    msgs = [event("gw-a", seq, "batch.completed", batch=f"B{seq}") for seq in range(1, 6)]
    first = consumer_for(mosquitto, db).start()
    try:
        for m in msgs[:3]:
            publisher.data(m)
        first.wait_until(lambda s: s.stored == 3, WAIT)
    finally:
        first.stop()

    # While the consumer is down: a resend of seq 2 and a new seq 4 (the broker queues both
    # for the persistent session).
    publisher.data(msgs[1])
    publisher.data(msgs[3])

    second = consumer_for(mosquitto, db)
    assert second.client_id == first.client_id  # same database, same session
    with second.start():
        summary = second.wait_until(received(2), WAIT)
        assert (summary.stored, summary.inserted, summary.duplicates) == (4, 1, 1)

        publisher.data(msgs[0])  # older than anything this run saw, stored by the first run
        publisher.data(msgs[4])
        summary = second.wait_until(received(4), WAIT)
        assert (summary.stored, summary.inserted, summary.duplicates) == (5, 2, 2)
        gw = summary.gateways["gw-a"]
        assert (gw.min_seq, gw.max_seq, gw.count, gw.missing) == (1, 5, 5, ())
        assert summary.events_by_type == {"batch.completed": 5}
        assert [e["id"] for e in second.events()] == [m["id"] for m in msgs]


def test_mqtt_311_clean_session(mosquitto: Mosquitto, publisher: Publisher, db: Path) -> None:
    consumer = consumer_for(mosquitto, db, mqtt_version="3.1.1", persistent_session=False)
    with consumer:
        m = event("gw-a", 7, "order.released", batch="B1")
        publisher.data(m, times=2)
        publisher.data(telemetry("gw-a", 8, 1.5))
        summary = consumer.wait_until(received(3), WAIT)
        assert (summary.stored, summary.duplicates, summary.telemetry) == (2, 1, 1)
        assert summary.gateways["gw-a"].missing == ()


def test_wait_until_timeout_reports_the_last_summary(mosquitto: Mosquitto, db: Path) -> None:
    with consumer_for(mosquitto, db) as consumer:
        with pytest.raises(TimeoutError, match=r"received=0 stored=0") as info:
            consumer.wait_until(lambda s: s.stored > 0, 0.2)
        assert "within 0.2 s" in str(info.value)


def test_start_fails_fast_without_a_broker(db: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        consumer = MesConsumer(db, port=port)
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            consumer.start(timeout=2)


def _summary_reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_matching(lines: queue.Queue[str], needle: str, timeout: float) -> str:
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            seen.append(line)
            if needle in line:
                return line
    except queue.Empty:
        raise AssertionError(f"no line with {needle!r}; got: {seen}") from None


def test_cli_prints_summaries_and_a_final_one(
    mosquitto: Mosquitto, publisher: Publisher, db: Path
) -> None:
    cli = [sys.executable, "-m", "simulators.mes_consumer"]
    help_text = subprocess.run(
        [*cli, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert "--every" in help_text
    assert "dedupe" in help_text

    proc = subprocess.Popen(
        [*cli, "--port", str(mosquitto.port), "--db", str(db), "--every", "100ms"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _summary_reader(proc)
        _next_matching(lines, "MES consumer:", WAIT)  # printed once subscribed
        m = event("gw-a", 1, "batch.completed", batch="B1")
        publisher.data(m, times=2)
        publisher.data(event("gw-a", 3, "batch.completed", batch="B3"))
        _next_matching(lines, "received=3 stored=2", WAIT)
        proc.send_signal(signal.SIGINT)
        final = _next_matching(lines, "final", WAIT)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "duplicates=1" in final
    assert "gw-a seq 1..3 n=2 missing 1 [2]" in final
    assert "batch.completed=2" in final
