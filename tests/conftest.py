"""Shared fixtures. Integration fixtures start real processes on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.subscriber import Subscriber


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free 127.0.0.1 port, stopped after the test."""
    broker = Mosquitto()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    """A subscriber to everything the test gateways publish under site s, area a, line l."""
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        yield sub


@pytest.fixture
async def plc() -> AsyncIterator[ModbusPlc]:
    """A Modbus simulator with 10 bench registers (holding 1000.., they change at every read),
    the simulation frozen. Files needing another PLC define their own `plc`."""
    sim = ModbusPlc(host="127.0.0.1", port=0, tick=0, bench_registers=10)
    await sim.start()
    yield sim
    await sim.stop()
