"""Intake waits for the forwarder when it outpaces sending, never while the broker is away."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from edgegw.outbox.store import Outbox, PendingEvent
from edgegw.sinks.forwarder import Forwarder
from edgegw.sinks.mqtt.settings import MqttSettings
from edgegw.sinks.mqtt.sink import MqttSink, MqttSinkSettings, Topics
from tests.support.broker import Mosquitto
from tests.support.proxy import CuttableProxy
from tests.support.wait import stays, until

pytestmark = pytest.mark.timeout(30)


def rows(first: int, count: int) -> list[PendingEvent]:
    return [
        PendingEvent(
            f"k{n}",
            "edgegw.telemetry/1",
            "s/a/l/src/t",
            {"schema": "edgegw.telemetry/1", "id": f"k{n}", "source": "src", "tag": "t", "seq": 0},
            "t",
            time.time(),
            n,
        )
        for n in range(first, first + count)
    ]


async def test_intake_waits_while_the_forwarder_is_behind_and_resumes_with_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    proxy = await CuttableProxy(mosquitto.port).start()
    outbox = Outbox(str(tmp_path / "outbox.sqlite3"))
    await outbox.open()
    settings = MqttSettings(
        host="127.0.0.1",
        port=proxy.port,
        client_id=f"edgegw-test-{uuid.uuid4().hex[:8]}",
        status_topic="s/a/l/status",
        connect_timeout=5.0,
    )
    topics = Topics("s/a/l/{source}/{tag}", "s/a/l/events/{type}", "s/a/l/gap")
    sink_settings = MqttSinkSettings(settings, qos=1, window=10, topics=topics)
    forwarder = Forwarder(outbox, lambda on_result: MqttSink(sink_settings, on_result))
    forwarder.intake_lead_limit = 50
    stop = asyncio.Event()
    running = asyncio.create_task(forwarder.run(stop))
    try:
        await until(lambda: forwarder.status.broker_up, 10, "broker connected")
        proxy.pause()  # PUBACKs held: at most `window` rows leave
        await outbox.append(rows(1, 200))
        await until(lambda: forwarder.sink.in_flight() == 10, 10, "window full")
        room = asyncio.create_task(forwarder.wait_for_room())
        await stays(lambda: not room.done(), 0.5, "intake waiting while the forwarder is behind")

        proxy.resume()
        await asyncio.wait_for(room, 10)
        await until(lambda: outbox.depth == 0, 10, "every row acknowledged")
        assert forwarder.status.published == 200
        assert forwarder.intake_waits == 1

        # The broker away: the outbox takes everything, nobody waits.
        proxy.cut()
        await until(lambda: not forwarder.status.broker_up, 10, "broker down noticed")
        await outbox.append(rows(201, 200))
        await asyncio.wait_for(forwarder.wait_for_room(), 1)
        assert forwarder.intake_waits == 1
    finally:
        stop.set()
        proxy.resume()
        proxy.heal()
        await asyncio.wait_for(running, 15)
        await proxy.stop()
        await outbox.close()
