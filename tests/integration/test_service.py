"""The gateway as a service: /metrics and /healthz while a PLC goes away and returns, SIGHUP."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgegw.service.metrics import FAMILIES
from simulators.modbus_plc import ModbusPlc
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.gateway import (
    GatewayProcess,
    bench_tags,
    config_dict,
    running_gateway,
    write_config,
)
from tests.support.ledger import assert_complete, delivered_and_stored, telemetry
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Each test's timeout is at least the sum of its waits (see each test); they take 6 to 10 s here.


def samples(text: str, name: str) -> dict[str, float]:
    """Every sample of one family: label text (or '') -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            series, value = line.rsplit(" ", 1)
            out[series[len(name) :]] = float(value)
    return out


async def get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http.get, port, path)


# 10 start + 15 published + 6 HTTP gets x 5 + 3 `edgegw status` x 30 + 10 down + 15 back
# + 20 stop = 190 s
@pytest.mark.timeout(210)
async def test_metrics_and_health_follow_a_plc_outage(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto
) -> None:
    data = config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(4), poll="50ms")
    data["http"] = {"listen": "127.0.0.1:0"}
    # Durations the gateway reports are checked against what the test itself saw pass (no
    # figure sized on one machine): that catches a wrong unit or a wrong origin all the same.
    started = time.monotonic()
    async with running_gateway(data) as gateway:
        await until(lambda: gateway.forwarders[0].status.published > 40, 15, "40 events published")
        port = gateway.metrics_port
        assert port is not None

        status, body = await get(port, "/metrics")
        assert status == 200
        for name, kind in FAMILIES.items():
            assert f"# TYPE {name} {kind}\n" in body, f"{name} missing from /metrics"
        assert samples(body, "edgegw_source_up") == {'{source="plc"}': 1}
        assert samples(body, "edgegw_broker_up") == {"": 1}
        assert samples(body, "edgegw_published_total")[""] > 40
        assert samples(body, "edgegw_source_availability_ratio")['{source="plc"}'] > 0.5
        assert samples(body, "edgegw_mttr_seconds") == {}  # no repair yet: no figure
        running = time.monotonic() - started
        assert 0 <= samples(body, "edgegw_outbox_oldest_age_seconds")[""] <= running
        latency = samples(body, "edgegw_e2e_latency_seconds_count")[""]
        assert latency > 40
        # Source timestamp to PUBACK: no value can have taken longer than the gateway ran.
        assert 0 < samples(body, "edgegw_e2e_latency_seconds_sum")[""] / latency <= running
        buckets = samples(body, "edgegw_e2e_latency_seconds_bucket")
        assert buckets['{le="+Inf"}'] == latency
        assert list(buckets.values()) == sorted(buckets.values()), "buckets are cumulative"

        status, body = await get(port, "/healthz")
        assert status == 200, body
        assert orjson.loads(body)["sources"]["plc"]["up"] is True
        # `edgegw status` asks the same endpoint: the config names the bound port.
        config_path = write_config(
            tmp_path / "gw.yaml", {**data, "http": {"listen": f"127.0.0.1:{port}"}}
        )
        code, table = await edgegw_status(config_path)
        assert code == 0, table
        assert re.search(r"^plc +up ", table, re.M), table

        outage_from = time.monotonic()
        await plc.stop()
        await until(lambda: not gateway.sources[0].status.connected, 10, "the source down")
        status, body = await get(port, "/healthz")
        assert status == 503
        health = orjson.loads(body)
        assert health["status"] == "failing"
        assert any(part.startswith("source plc:") for part in health["failing"]), health
        assert health["sources"]["plc"]["last_error"]
        code, table = await edgegw_status(config_path)
        assert code == 1, table
        assert re.search(r"^plc +DOWN ", table, re.M), table
        assert "failing: source plc:" in table

        await plc.start()
        await until(lambda: gateway.sources[0].status.connected, 15, "the source back")
        outage = time.monotonic() - outage_from
        status, body = await get(port, "/healthz")
        assert status == 200, body

        _, text = await get(port, "/metrics")
        assert samples(text, "edgegw_source_outages_total") == {'{source="plc"}': 1}
        mttr = samples(text, "edgegw_mttr_seconds")['{source="plc"}']
        assert 0 < mttr <= outage  # the one repair: within the outage the test caused
        assert samples(text, "edgegw_source_availability_ratio")['{source="plc"}'] < 1
        assert samples(text, "edgegw_read_errors_total")['{source="plc"}'] >= 1
    code, table = await edgegw_status(config_path)
    assert code == 3
    assert "not answering" in table
    assert "events waiting" in table


async def edgegw_status(config_path: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegw",
        "status",
        "-c",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


def _tags_received(subscriber: Subscriber) -> set[str]:
    return {p["tag"] for p in telemetry(subscriber.messages) if "tag" in p}


# 20 tags + 20 reload + 30 r2 + 20 refusal + 20 r2 again + 30 stop + subscriber caught up
# (15 + 5) = 160 s
@pytest.mark.timeout(180)
async def test_sighup_applies_a_new_tag_and_refuses_a_bad_config(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    data: dict[str, Any] = config_dict(
        tmp_path, mosquitto.port, plc.port, bench_tags(2), poll="100ms"
    )
    data["http"] = {"listen": "127.0.0.1:0"}
    path = write_config(tmp_path / "gw.yaml", data)
    gateway = GatewayProcess(path)
    await gateway.start()
    try:
        await subscriber.wait_for(lambda m: {"r0", "r1"} <= _tags_received(subscriber), 20)
        assert "r2" not in _tags_received(subscriber)

        # Broker hung (its sessions kept): what is read across the reload waits in the outbox.
        mosquitto.pause()
        data["sources"][0]["tags"] = bench_tags(3)
        write_config(path, data)
        gateway.signal(signal.SIGHUP)
        await until(
            lambda: any("config reloaded" in line.get("msg", "") for line in gateway.log()),
            20,
            "the reload's audit line",
        )
        mosquitto.resume()
        await subscriber.wait_for(lambda m: "r2" in _tags_received(subscriber), 30)
        reload_line = next(line for line in gateway.log() if "config reloaded" in line["msg"])
        assert reload_line["audit"] == "config-reload"
        assert len(reload_line["sha256"]) == 64
        assert "sources changed: plc" in reload_line["msg"]

        good = path.read_text()
        path.write_text(good.replace("poll: 100ms", "poll: soon"))
        gateway.signal(signal.SIGHUP)
        await until(
            lambda: any("config reload refused" in line.get("msg", "") for line in gateway.log()),
            20,
            "the refusal",
        )
        errors = [line["msg"] for line in gateway.log() if line["msg"].startswith("config reload:")]
        assert any(f"{path}:" in error and "poll" in error for error in errors), errors
        # The old config keeps running: r2 is still read after the refused reload.
        before = len([p for p in telemetry(subscriber.messages) if p.get("tag") == "r2"])
        await subscriber.wait_for(
            lambda m: len([p for p in telemetry(m) if p.get("tag") == "r2"]) > before + 3, 20
        )
    finally:
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(30) == 0
    received, last_seq = await delivered_and_stored(subscriber, str(tmp_path / "outbox.sqlite3"))
    assert_complete(received, last_seq)
    loads = [line for line in gateway.log() if line.get("audit") == "config-load"]
    assert len(loads) == 1
    assert len(loads[0]["sha256"]) == 64
