"""A broker that refuses some publishes: Mosquitto with an acl_file, a gateway end to end.

Mosquitto 2.0.11 answers a denied QoS 1 publish of an MQTT 5 client with PUBACK 0x87 "not
authorized" (tests/integration/test_mqtt_client.py shows it at the client level). Here the
gateway's tag r1 has a denied topic and r0 an allowed one: r1's rows must stay in the outbox,
be counted in `edgegw_publish_refused_total` and logged, r0 must keep flowing, and once the
rule is lifted the kept rows must arrive. Judged by key and seq: every row committed is either
received by the subscriber or still in the outbox, never both, never neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgegw.outbox.backlog import takes_all
from edgegw.outbox.store import read_stats, read_waiting
from edgegw.service.app import Gateway
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto, running_mosquitto
from tests.support.gateway import bench_tags, config_dict, running_gateway
from tests.support.http import get, metric
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Above the sum of the waits inside (the longest test: 10 start + 4 x 30 + 20 stop + 30 account
# = 180 s), so that a wait names what is missing before pytest-timeout kills the test.
pytestmark = pytest.mark.timeout(240)

ALLOWED = "s/a/l/plc/r0"
DENIED = "s/a/l/plc/r1"
ACL = f"topic readwrite s/#\ntopic deny {DENIED}\n"
REFUSED = "edgegw_publish_refused_total"
WAIT = 30.0  # seconds for anything that needs a few polls and publishes (100 ms each)


@pytest.fixture
def acl_broker() -> Iterator[Mosquitto]:
    with running_mosquitto(acl=ACL) as broker:
        yield broker


def gateway_config(state: Path, broker: Mosquitto, plc: ModbusPlc) -> dict[str, Any]:
    data = config_dict(state, broker.port, plc.port, bench_tags(2))
    data["http"] = {"listen": "127.0.0.1:0"}
    return data


async def refused_total(gateway: Gateway) -> float:
    assert gateway.metrics_port is not None
    # In a thread: the gateway serves /metrics from this very event loop.
    status, text = await asyncio.to_thread(get, gateway.metrics_port, "/metrics")
    assert status == 200, text
    value = metric(text, REFUSED)
    assert value is not None, f"{REFUSED} missing from /metrics"
    return value


def received(sub: Subscriber, topic: str) -> dict[int, str]:
    """seq -> id of the telemetry received on `topic`."""
    out: dict[int, str] = {}
    for message in sub.messages:
        if message.topic == topic:
            body = orjson.loads(message.payload)
            out[body["seq"]] = body["id"]
    return out


def outbox_rows(path: str) -> tuple[int, dict[int, tuple[str, str]]]:
    """(last seq ever assigned, seq -> (id, topic) of the messages still waiting for the
    broker)."""
    stats = read_stats(path)
    waiting = read_waiting(path)
    return stats.last_seq, {m["seq"]: (m["id"], f"s/a/l/{m['source']}/{m['tag']}") for m in waiting}


def refused_in_log(caplog: pytest.LogCaptureFixture) -> set[int]:
    """The seqs the forwarder logged as refused."""
    lines = [r for r in caplog.records if "broker refused a publish" in r.getMessage()]
    return {int(r.args[2]) for r in lines}  # type: ignore[index]


def unaccounted(sub: Subscriber, path: str) -> list[int]:
    last, waiting = outbox_rows(path)
    got = {**received(sub, ALLOWED), **received(sub, DENIED)}
    return sorted(set(range(1, last + 1)) - set(got) - set(waiting))


async def account(sub: Subscriber, path: str) -> dict[int, tuple[str, str]]:
    """Once the gateway stopped: every seq 1..last is received or waiting, not both. Returns
    what waits. The broker may still be passing the last acknowledged messages on to the
    subscriber, hence the wait (it fails on the assertion below, which names the seqs)."""
    with contextlib.suppress(AssertionError):
        await until(lambda: not unaccounted(sub, path), WAIT, "the last messages to arrive")
    last, waiting = outbox_rows(path)
    got = {**received(sub, ALLOWED), **received(sub, DENIED)}
    both = sorted(set(got) & set(waiting))
    assert not both, f"seqs both delivered and still in the outbox: {both[:10]}"
    lost = unaccounted(sub, path)
    assert not lost, f"seqs neither delivered nor in the outbox: {lost[:10]} of 1..{last}"
    for seq, key in got.items():
        assert 1 <= seq <= last, f"seq {seq} received, beyond the last committed {last}"
        assert key, seq
    return waiting


async def test_a_denied_topic_keeps_its_rows_counts_them_and_the_rest_flows(
    tmp_path: Path, acl_broker: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw")
    data = gateway_config(tmp_path / "state", acl_broker, plc)
    with Subscriber(acl_broker.port, "s/a/l/#") as sub:
        async with running_gateway(data) as gateway:
            outbox = gateway.config.outbox_path
            await until(lambda: len(received(sub, ALLOWED)) >= 20, WAIT, "20 values of r0")
            await until(lambda: gateway.forwarders[0].status.refused >= 5, WAIT, "5 refusals")
            first = await refused_total(gateway)
            assert first >= 5
            # Still growing: every new r1 value is refused in turn, nothing stalls.
            seen = len(received(sub, ALLOWED))
            await until(
                lambda: (
                    gateway.forwarders[0].status.refused > first
                    and len(received(sub, ALLOWED)) > seen
                ),
                WAIT,
                "more refusals and more r0 values",
            )
            assert await refused_total(gateway) > first
            assert gateway.forwarders[0].status.broker_up  # a refusal is not a broken connection
            connects = gateway.forwarders[0].status.connects
        waiting = await account(sub, outbox)
    refused = gateway.forwarders[0].status.refused  # final: the gateway has stopped
    assert gateway.forwarders[0].status.connects == connects == 1

    assert not received(sub, DENIED)
    denied = {seq for seq, (_key, topic) in waiting.items() if topic == DENIED}
    assert {topic for _key, topic in waiting.values()} <= {ALLOWED, DENIED}
    # Each refusal is logged once, with the row's seq, key and the reason code; one
    # connection, so each refused row was sent once, and each is still in the outbox.
    lines = [r for r in caplog.records if "broker refused a publish" in r.getMessage()]
    assert len(lines) == refused
    assert all(r.levelno == logging.ERROR for r in lines)
    logged = refused_in_log(caplog)
    assert len(logged) == refused
    missing = sorted(logged - denied)
    assert not missing, f"refused rows no longer in the outbox: {missing[:10]}"
    for record in lines[:3]:
        seq = int(record.args[2])  # type: ignore[index]
        text = record.getMessage()
        assert f"seq={seq} id={waiting[seq][0]} " in text
        assert "reason_code=0x87" in text


async def test_a_refusal_names_the_topic_and_the_reason_in_words(
    tmp_path: Path, acl_broker: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw")
    data = gateway_config(tmp_path / "state", acl_broker, plc)
    async with running_gateway(data) as gateway:
        await until(lambda: gateway.forwarders[0].status.refused >= 1, WAIT, "a refusal")
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any(DENIED in line and "not authorized" in line for line in lines), lines


async def test_kept_rows_arrive_once_the_rule_is_lifted(
    tmp_path: Path, acl_broker: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator lifts the rule (acl_file edited, SIGHUP: nobody is disconnected). The
    forwarder sends a refused row again only on its next connection (ForwarderStatus.refused:
    "kept and retried after reconnect"), so the link is then cut once, through a proxy: the
    broker and the subscriber stay up and miss nothing, and every kept r1 row must arrive."""
    caplog.set_level(logging.INFO, logger="edgegw")
    proxy = await CuttableProxy(acl_broker.port).start()
    data = gateway_config(tmp_path / "state", acl_broker, plc)
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{proxy.port}"
    try:
        with Subscriber(acl_broker.port, "s/a/l/#") as sub:
            async with running_gateway(data) as gateway:
                status = gateway.forwarders[0].status
                await until(lambda: status.refused >= 10, WAIT, "10 refusals")
                acl_broker.acl = "topic readwrite s/#\n"
                await asyncio.to_thread(acl_broker.reload)
                await until(lambda: received(sub, DENIED), WAIT, "new r1 values once allowed")
                refused = status.refused
                connects = status.connects
                proxy.cut()
                proxy.heal()
                await until(
                    lambda: status.connects > connects and status.broker_up,
                    WAIT,
                    "the gateway to reconnect",
                )
                await until(
                    lambda: refused_in_log(caplog) <= set(received(sub, DENIED)),
                    WAIT,
                    "every refused r1 row, sent again on the new connection",
                )
                assert status.refused == refused, "refused after the rule was lifted"
            waiting = await account(sub, gateway.config.outbox_path)
    finally:
        await proxy.stop()
    refused_seqs = refused_in_log(caplog)
    assert len(refused_seqs) == refused
    late = sorted(refused_seqs - set(received(sub, DENIED)))
    assert not late, f"refused rows never delivered after the lift: {late[:10]}"
    assert not refused_seqs & set(waiting)


async def test_a_refusing_sink_holds_back_no_other(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc
) -> None:
    """Two sinks: one broker refuses r1 (PUBACK 0x87), the other takes everything. The refused
    messages wait in the outbox for the refusing sink alone; the other sink keeps receiving
    r1 and r0 as they come, and nothing waits for it once the gateway stopped cleanly."""
    data = gateway_config(tmp_path / "state", mosquitto, plc)
    with running_mosquitto(acl=ACL) as strict_broker:
        data["sinks"] = [
            {"name": "strict", "type": "mqtt", "url": f"mqtt://127.0.0.1:{strict_broker.port}"}
        ]
        with (
            Subscriber(mosquitto.port, "s/a/l/#") as open_sub,
            Subscriber(strict_broker.port, "s/a/l/#") as strict_sub,
        ):
            async with running_gateway(data) as gateway:
                outbox = gateway.config.outbox_path
                strict = next(f for f in gateway.forwarders if f.sink.name == "strict")
                await until(lambda: strict.status.refused >= 10, WAIT, "10 refusals (strict)")
                seen = len(received(open_sub, DENIED))
                await until(
                    lambda: len(received(open_sub, DENIED)) > seen + 10,
                    WAIT,
                    "r1 still arriving through the other sink",
                )
                assert all(f.status.broker_up for f in gateway.forwarders)
            last = read_stats(outbox, dict.fromkeys(("mqtt", "strict"), takes_all)).last_seq
            waiting_open = {m["seq"] for m in read_waiting(outbox, "mqtt")}
            await until(
                lambda: (
                    set(range(1, last + 1)) - waiting_open
                    <= set(received(open_sub, ALLOWED)) | set(received(open_sub, DENIED))
                ),
                WAIT,
                "every seq the open sink acknowledged, received",
            )
            waiting_strict = read_waiting(outbox, "strict")
    assert not received(strict_sub, DENIED)
    # What waits for the strict sink is r1 (refused) and whatever the stop left in flight.
    assert {m["tag"] for m in waiting_strict} >= {"r1"}
    assert len(waiting_open) < len(waiting_strict)
