"""Fixtures of the sink contract suite: each test runs once per destination."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgegw.outbox.store import Outbox, PendingEvent
from edgegw.sinks.forwarder import Forwarder
from edgegw.sinks.registry import sink_factory, sink_settings
from tests.contract.destinations import ALLOW_ALL, Destination, MqttDestination
from tests.support.broker import running_mosquitto
from tests.support.gateway import build_config
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber

SINK = "contract"  # the name of the sink under test
GATEWAY = "contract-gw"


@pytest.fixture(params=["mqtt", "mqtt-batched"])
async def destination(request: pytest.FixtureRequest) -> AsyncIterator[Destination]:
    with running_mosquitto(acl=ALLOW_ALL) as broker:
        proxy = await CuttableProxy(broker.port).start()
        try:
            with Subscriber(broker.port, "s/#") as subscriber:
                yield MqttDestination(
                    broker, proxy, subscriber, batched=request.param == "mqtt-batched"
                )
        finally:
            await proxy.stop()


def gateway_config(state: Path, destination: Destination, **extra: Any) -> dict[str, Any]:
    """A config whose only sink is `destination`'s; its one source is a Modbus PLC at
    `modbus_port` (the in-process tests never start it: they fill the outbox themselves)."""
    return {
        "gateway": {"id": GATEWAY, "site": "s", "area": "a", "line": "l", "state_dir": str(state)},
        "sinks": [destination.entry(SINK)],
        "sources": [
            {
                "name": "plc",
                "protocol": "modbus",
                "url": f"tcp://127.0.0.1:{extra.pop('modbus_port', 1)}",
                "poll": extra.pop("poll", "50ms"),
                "tags": extra.pop("tags", [{"name": "t", "address": "holding:0", "type": "int16"}]),
            }
        ],
        **extra,
    }


@dataclass
class Forwarding:
    outbox: Outbox
    forwarder: Forwarder
    _made: int = 0

    async def commit(self, sources: dict[str, int], *, events: int = 0) -> list[PendingEvent]:
        """One commit group as the pipeline makes it: `count` telemetry values per source (two
        tags each), then `events` business events. Returns them with their seqs set."""
        batch: list[PendingEvent] = []
        now = time.time()
        for source, count in sources.items():
            for _ in range(count):
                self._made += 1
                batch.append(_telemetry(source, f"t{self._made % 2}", self._made, now))
        for _ in range(events):
            self._made += 1
            batch.append(_order_started(f"PO{self._made}", now))
        await self.outbox.append(batch)
        return batch


def _telemetry(source: str, tag: str, value: int, now: float) -> PendingEvent:
    key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}/{tag}/{value}"))
    payload = {
        "schema": "edgegw.telemetry/1",
        "id": key,
        "gateway": GATEWAY,
        "source": source,
        "tag": tag,
        "value": value,
        "quality": "good",
        "ts": "2026-12-05T00:00:00.000Z",
        "seq": 0,
        "trace": "0" * 16,
    }
    return PendingEvent(key, "edgegw.telemetry/1", "", payload, "0" * 16, now)


def _order_started(order: str, now: float) -> PendingEvent:
    key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"order-started/{order}"))
    schema = "edgegw.event/order-started/1"
    payload = {
        "schema": schema,
        "type": "order-started",
        "id": key,
        "gateway": GATEWAY,
        "data": {"order": order},
        "ts": "2026-12-05T00:00:00.000Z",
        "seq": 0,
        "trace": "1" * 16,
    }
    return PendingEvent(key, schema, "", payload, "1" * 16, now)


@asynccontextmanager
async def forwarding(state: Path, destination: Destination) -> AsyncIterator[Forwarding]:
    """An outbox and the sink's forwarder, built from a config as the gateway builds them,
    running until the block ends."""
    config = build_config(gateway_config(state, destination))
    (sink,) = config.sink_list()
    outbox = Outbox(config.outbox_path, gateway=GATEWAY, sinks=config.sink_selectors())
    await outbox.open()
    forwarder = Forwarder(outbox, sink_factory(sink, sink_settings(config)[sink.name]))
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        yield Forwarding(outbox, forwarder)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await outbox.close()
