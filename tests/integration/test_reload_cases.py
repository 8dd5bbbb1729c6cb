"""What a reload does to each part, as docs/operations.md says: MQTT settings reconnect with
the new ones, a removed source stops alone, an identity change is refused (issue 15: reload
claims without a test)."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgegw.service.app import Gateway
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import bench_tags, build_config, config_dict, write_config
from tests.support.ledger import telemetry
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Above the sum of the waits inside (the longest test: 30 start + 3 x 30 + 30 stop = 150 s).
pytestmark = pytest.mark.timeout(200)


@asynccontextmanager
async def gateway_of(path: Path, data: dict[str, Any]) -> AsyncIterator[Gateway]:
    write_config(path, data)
    gateway = Gateway(build_config(data), config_path=str(path))
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.started.wait(), 30)
        yield gateway
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, 30)


def _two_sources(tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc) -> dict[str, Any]:
    data = config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(2), poll="100ms")
    second = copy.deepcopy(data["sources"][0])
    second["name"] = "plc2"
    data["sources"].append(second)
    return data


async def test_new_mqtt_settings_reconnect_and_publish_on_the_new_topics(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    data = config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(2), poll="100ms")
    path = tmp_path / "gw.yaml"
    with Subscriber(mosquitto.port, "#") as everything:
        async with gateway_of(path, data) as gateway:
            await everything.wait_for(lambda m: any(x.topic == "s/a/l/plc/r0" for x in m), 30)
            data["mqtt"]["topic"] = "v2/{line}/{source}/{tag}"
            write_config(path, data)
            assert await gateway.reload()
            await everything.wait_for(lambda m: any(x.topic == "v2/l/plc/r0" for x in m), 30)
            assert gateway.forwarders[0].status.connects == 2  # the new settings, a new connection
            # The gateway closed that connection itself: no broker trouble to report.
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert not [line for line in said if "broker" in line], said
            last_seq = gateway.outbox.last_seq
        # Nothing committed around the reload was lost: every seq up to the stop arrived
        # (the stop drains what is in flight; the subscriber may trail the broker a little).
        await everything.wait_for(
            lambda m: set(range(1, last_seq + 1)) <= {p["seq"] for p in telemetry(m)},
            30,
            what=f"seqs 1..{last_seq}",
        )


async def test_a_removed_source_stops_alone_and_is_no_outage(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc
) -> None:
    data = _two_sources(tmp_path, mosquitto, plc)
    path = tmp_path / "gw.yaml"
    async with gateway_of(path, data) as gateway:
        by_name = {source.name: source for source in gateway.sources}
        await until(lambda: all(s.status.reads > 3 for s in by_name.values()), 30, "both read")
        data["sources"].pop()  # plc2
        write_config(path, data)
        assert await gateway.reload()
        assert [source.name for source in gateway.sources] == ["plc"]
        removed, kept = by_name["plc2"].status, by_name["plc"].status
        reads_at_removal = removed.reads
        # The kept source goes on; over the same stretch the removed one reads nothing more.
        target = kept.reads + 10
        await until(lambda: kept.reads >= target, 30, "10 more reads of the kept source")
        assert removed.reads == reads_at_removal
        assert removed.outages == 0  # stopped on purpose


async def test_an_identity_change_is_refused_and_the_running_config_stays(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw.audit")
    data = config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(2), poll="100ms")
    path = tmp_path / "gw.yaml"
    async with gateway_of(path, data) as gateway:
        await until(lambda: gateway.forwarders[0].status.published > 5, 30, "publishes")
        data["gateway"]["id"] = "another-gw"
        write_config(path, data)
        assert not await gateway.reload()
        assert gateway.reloads == {"applied": 0, "refused": 1}
        assert gateway.config.gateway.id == "test-gw"
        published = gateway.forwarders[0].status.published
        await until(lambda: gateway.forwarders[0].status.published > published + 5, 30, "more")
    refusal = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refusal) == 1
    assert "why=gateway.id changed, which takes a restart (systemctl restart edgegw)" in refusal[0]
