"""Shared fixtures. Integration fixtures start real processes on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from simulators.modbus_plc import ModbusPlc
from simulators.opcua_plc import OpcUaPlc
from tests.support.broker import Mosquitto, running_mosquitto
from tests.support.gateway import GatewayProcess
from tests.support.subscriber import Subscriber
from tests.support.tasks import cancel_leftover_tasks
from tests.support.tls import TestPki, make_pki


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything outside tests/unit starts servers or processes: `slow`, so that
    `pytest -m "not slow"` is the quick loop (the unit tests, seconds)."""
    for item in items:
        if "unit" not in item.path.parts:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
async def _no_gateway_left() -> AsyncIterator[None]:
    """A test that failed halfway must not leave an `edgegw run` behind, publishing into the
    next test's broker or holding a port (seen: one still running an hour later)."""
    yield
    await GatewayProcess.kill_leftovers()
    await cancel_leftover_tasks()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A test CA with server, client and deliberately wrong certificates (read only: made once
    per run, RSA keys take a while)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free 127.0.0.1 port, stopped after the test."""
    with running_mosquitto() as broker:
        yield broker


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    """A subscriber to everything the test gateways publish under site s, area a, line l."""
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        yield sub


StartModbusPlc = Callable[..., Awaitable[ModbusPlc]]
StartOpcUaPlc = Callable[..., Awaitable[OpcUaPlc]]


@asynccontextmanager
async def _stopped_after(started: list[Any]) -> AsyncIterator[None]:
    """Stop every simulator in `started`, newest first, on the way out."""
    try:
        yield
    finally:
        for sim in reversed(started):
            await sim.stop()


@pytest.fixture
async def start_modbus_plc() -> AsyncIterator[StartModbusPlc]:
    """Start Modbus PLC simulators with the test's options (on a free loopback port); every
    one started is stopped after the test. `before_start(sim)` may set registers first."""
    started: list[ModbusPlc] = []

    async def start(
        before_start: Callable[[ModbusPlc], None] | None = None, **options: Any
    ) -> ModbusPlc:
        sim = ModbusPlc(**{"host": "127.0.0.1", "port": 0, "tick": 0, **options})
        if before_start is not None:
            before_start(sim)
        await sim.start()
        started.append(sim)
        return sim

    async with _stopped_after(started):
        yield start


@pytest.fixture
async def start_opcua_plc() -> AsyncIterator[StartOpcUaPlc]:
    """Start OPC UA PLC simulators with the test's options; every one stopped after."""
    started: list[OpcUaPlc] = []

    async def start(**options: Any) -> OpcUaPlc:
        sim = OpcUaPlc(**{"tick": 0.05, "seed": 1, **options})
        await sim.start()
        started.append(sim)
        return sim

    async with _stopped_after(started):
        yield start


@pytest.fixture
async def modbus_plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    """A Modbus simulator with 10 bench registers (holding 1000.., they change at every read),
    the simulation frozen."""
    return await start_modbus_plc(bench_registers=10)


@pytest.fixture
async def opcua_plc(start_opcua_plc: StartOpcUaPlc) -> OpcUaPlc:
    """An OPC UA simulator, its line model ticking every 50 ms."""
    return await start_opcua_plc()


@pytest.fixture
def plc(modbus_plc: ModbusPlc) -> ModbusPlc:
    """The usual name in the tests: the Modbus simulator. Files that need another PLC define
    their own `plc` from `start_modbus_plc` or `start_opcua_plc` in one line."""
    return modbus_plc
