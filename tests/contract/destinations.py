"""The destinations the sink contract suite runs against: one class per sink configuration.

A destination is a real server (Mosquitto today; RabbitMQ and a directory with issue 20) with a
cuttable link in front of it and a consumer of our own behind it. The suite sees only this
interface, so a new sink type joins by adding a class here and a param to `destination` in
conftest.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from tests.support.broker import Mosquitto
from tests.support.ledger import telemetry
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber

ALLOW_ALL = "topic readwrite #\n"


class Destination(Protocol):
    kind: str  # the sink configuration under test, e.g. "mqtt-batched"

    def entry(self, name: str) -> dict[str, Any]:
        """The `sinks:` entry that delivers here, through the cuttable link."""
        ...

    def items(self) -> list[dict[str, Any]]:
        """Every data message received so far (batch items unpacked), in arrival order."""
        ...

    async def refuse(self, source: str) -> None:
        """From now on, refuse the messages of `source`'s telemetry (the connection stays)."""
        ...

    async def accept_all(self) -> None: ...

    def stall(self) -> None:
        """Hold every byte on the link, both ways, until `cut()`: messages sent from now on
        stay unacknowledged."""
        ...

    def cut(self) -> None:
        """Drop the link to the gateway and refuse new connections until `heal()`."""
        ...

    def heal(self) -> None: ...


class MqttDestination:
    """Mosquitto with an ACL file (so that it can refuse: PUBACK 0x87), a proxy, a subscriber."""

    def __init__(
        self, broker: Mosquitto, proxy: CuttableProxy, subscriber: Subscriber, *, batched: bool
    ) -> None:
        self.kind = "mqtt-batched" if batched else "mqtt"
        self.broker = broker
        self.proxy = proxy
        self.subscriber = subscriber
        self.batched = batched
        self._parsed = 0
        self._items: list[dict[str, Any]] = []

    def entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{self.proxy.port}",
            "keepalive": "2s",
            "inflight": 50,
        }
        if self.batched:
            entry["batch"] = {"max_values": 100, "max_delay": "50ms"}
        return entry

    def items(self) -> list[dict[str, Any]]:
        new = self.subscriber.since(self._parsed)
        self._parsed += len(new)
        self._items.extend(telemetry(new))
        return self._items

    async def refuse(self, source: str) -> None:
        self.broker.acl = f"{ALLOW_ALL}topic deny s/a/l/{source}/#\n"
        await asyncio.to_thread(self.broker.reload)

    async def accept_all(self) -> None:
        self.broker.acl = ALLOW_ALL
        await asyncio.to_thread(self.broker.reload)

    def stall(self) -> None:
        self.proxy.pause()

    def cut(self) -> None:
        self.proxy.cut()
        self.proxy.resume()  # new connections flow again once healed

    def heal(self) -> None:
        self.proxy.heal()
