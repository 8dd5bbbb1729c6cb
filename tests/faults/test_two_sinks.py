"""Two MQTT sinks on two brokers (issue 16): one out of reach for a while and the gateway killed
-9 meanwhile; each still receives every seq, with one id per seq on both. And `select:`
routes what each sink takes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgegw.outbox.backlog import takes_all
from edgegw.outbox.store import read_stats, read_waiting
from simulators.modbus_plc import ModbusPlc
from tests.faults.conftest import FaultReport
from tests.support.broker import Mosquitto, running_mosquitto
from tests.support.gateway import GatewayProcess, bench_tags, config_dict, write_config
from tests.support.ledger import Tally, telemetry
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber
from tests.support.wait import stays, until, until_progress

# 30 start + 30 traffic + 60 outage + 30 restart + 60 drain + 2 x 15 stall + 15 exit ~ 195 s
pytestmark = pytest.mark.timeout(300)

SINKS = {"mqtt": takes_all, "second": takes_all}


@pytest.fixture
def second_broker() -> Iterator[Mosquitto]:
    """A broker of its own for the second sink."""
    with running_mosquitto() as broker:
        yield broker


def two_sink_config(
    tmp_path: Path, first: int, second: int, plc: ModbusPlc, **second_keys: Any
) -> Path:
    data = config_dict(tmp_path, first, plc.port, bench_tags(20), poll="50ms", timeout="3s")
    data["mqtt"]["inflight"] = 20
    data["sinks"] = [
        {
            "name": "second",
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{second}",
            "topic": data["mqtt"].get("topic", "{site}/{area}/{line}/{source}/{tag}"),
            **second_keys,
        }
    ]
    return write_config(tmp_path / "gw.yaml", data)


def by_seq(subscriber: Subscriber) -> dict[int, set[str]]:
    """seq -> the ids it arrived with (one, if all is well)."""
    out: dict[int, set[str]] = {}
    for message in telemetry(subscriber.messages):
        out.setdefault(message["seq"], set()).add(message["id"])
    return out


async def test_each_sink_gets_every_seq_though_one_was_away_and_the_gateway_killed(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    second_broker: Mosquitto,
    fault_report: FaultReport,
) -> None:
    proxy = await CuttableProxy(second_broker.port).start()
    path = two_sink_config(tmp_path, mosquitto.port, proxy.port, plc)
    outbox = str(tmp_path / "outbox.sqlite3")
    try:
        with Subscriber(second_broker.port, "s/a/l/#") as far:
            process = await GatewayProcess(path).start()
            await until(lambda: subscriber.count > 20 and far.count > 20, 30, "both sinks flow")
            proxy.cut()  # the second sink is out of reach ...
            before = subscriber.count
            # ... while the first takes 4,000 more values (about 10 s at this poll)
            await until(lambda: subscriber.count > before + 4000, 60, "the first sink goes on")
            # What the second sink missed waits for it alone (the first keeps up).
            backlogs = read_stats(outbox, SINKS).sinks
            assert backlogs["second"].waiting > max(3000, backlogs["mqtt"].waiting), backlogs
            await process.kill()  # ... and the gateway dies meanwhile
            proxy.heal()
            process = await GatewayProcess(path).start()
            # The second sink catches up on what it missed, for as long as it makes progress.
            backlog = read_stats(outbox, SINKS).last_seq
            await until_progress(
                lambda: len(set(by_seq(far)) & set(range(1, backlog + 1))),
                backlog,
                what="seqs of the backlog on the second broker",
            )
            process.signal(signal.SIGTERM)
            assert await process.wait(15) == 0
            last = read_stats(outbox, SINKS).last_seq
            ids: dict[str, dict[int, set[str]]] = {}
            for name, sub in (("mqtt", subscriber), ("second", far)):
                waiting = {m["seq"] for m in read_waiting(outbox, name)}
                await Tally(sub).wait_seqs(set(range(1, last + 1)) - waiting)
                got = by_seq(sub)
                missing = set(range(1, last + 1)) - set(got) - waiting
                assert not missing, f"sink {name}: {len(missing)} seqs neither sent nor waiting"
                assert all(len(each) == 1 for each in got.values()), f"sink {name}: two ids"
                ids[name] = got
    finally:
        await proxy.stop()
    both = set(ids["mqtt"]) & set(ids["second"])
    assert len(both) > 200
    assert all(ids["mqtt"][seq] == ids["second"][seq] for seq in both), "one id per seq"
    fault_report.add(
        "two sinks: one away + kill -9",
        events_in=last,
        events_out=len(both),
        lost=0,
        note=f"each sink: seqs 1..{last} received or waiting on disk for it; one id per seq",
    )


async def test_select_routes_what_each_sink_takes(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    second_broker: Mosquitto,
) -> None:
    path = two_sink_config(
        tmp_path, mosquitto.port, second_broker.port, plc, select={"sources": ["nothing-*"]}
    )
    with Subscriber(second_broker.port, "s/a/l/#") as far:
        process = await GatewayProcess(path).start()
        await until(lambda: subscriber.count > 50, 30, "the first sink flows")
        await stays(
            lambda: not telemetry(far.messages), 2.0, "no telemetry on the sink that selects none"
        )
        assert telemetry(subscriber.messages)
        process.signal(signal.SIGTERM)
        assert await process.wait(15) == 0
