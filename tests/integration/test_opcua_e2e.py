"""OPC UA end to end: simulator -> `edgegw run` -> SQLite outbox -> Mosquitto -> subscriber,
and the browse command's output accepted by `edgegw check`."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from simulators.opcua_plc import NAMESPACE_URI, OpcUaPlc
from tests.conftest import StartOpcUaPlc
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import GatewayProcess, write_config
from tests.support.subscriber import Subscriber
from tests.support.wait import until

NSU = f"nsu={NAMESPACE_URI};s="


@pytest.fixture
async def plc(start_opcua_plc: StartOpcUaPlc) -> OpcUaPlc:
    return await start_opcua_plc(seed=2)


def gateway_config(state_dir: Path, mqtt_port: int, url: str) -> dict[str, Any]:
    def source(name: str, mode: str) -> dict[str, Any]:
        return {
            "name": name,
            "protocol": "opcua",
            "url": url,
            "mode": mode,
            "interval": "100ms",
            "keepalive": "500ms",
            "tags": [
                {"name": "state", "node": f"{NSU}Filler.State"},
                {"name": "count", "node": f"{NSU}Filler.GoodCount"},
                {"name": "running", "node": f"{NSU}Filler.Running"},
                {"name": "speed", "node": f"{NSU}Filler.Speed", "unit": "1/min"},
                {"name": "frozen", "node": f"{NSU}Filler.Frozen", "heartbeat": "500ms"},
            ],
        }

    return {
        "gateway": {
            "id": "ua-gw",
            "site": "s",
            "area": "a",
            "line": "l",
            "state_dir": str(state_dir),
        },
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "keepalive": "2s"},
        "sources": [source("sub", "subscribe"), source("pol", "poll")],
    }


def epoch(stamp: str) -> float:
    """'2026-12-04T21:13:24.123Z' as seconds since the epoch, whatever the local time zone
    (time.mktime reads local time: an hour off under summer time, even corrected by
    time.timezone, which is the zone's winter offset)."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def payloads(sub: Subscriber) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in sub.messages if not m.topic.endswith("/status")]


async def test_subscribed_and_polled_sources_reach_mqtt_and_survive_a_server_restart(
    plc: OpcUaPlc, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "gw.yaml", gateway_config(tmp_path / "state", mosquitto.port, plc.url)
    )
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        gateway = await GatewayProcess(config).start()
        try:

            def seen(source: str, tag: str, since: float = 0.0) -> list[dict[str, Any]]:
                return [
                    p
                    for p in payloads(sub)
                    if p["source"] == source
                    and p["tag"] == tag
                    and p["quality"] == "good"
                    and epoch(p["gw_ts"]) >= since
                ]

            await until(
                lambda: all(seen(s, t) for s in ("sub", "pol") for t in ("state", "count")),
                20,
                "both sources on the broker",
            )
            message = seen("sub", "speed")[-1]
            assert isinstance(message["value"], float)
            assert message["unit"] == "1/min"
            assert isinstance(seen("pol", "count")[-1]["value"], int)
            assert isinstance(seen("sub", "running")[-1]["value"], bool)
            assert isinstance(seen("sub", "state")[-1]["value"], str)

            await plc.restart(namespace_shift=4)
            restarted = time.time()
            await until(
                lambda: seen("sub", "frozen", restarted) and seen("pol", "frozen", restarted),
                15,
                "data from both sources within 15 s of the server restart",
            )
            assert {p["value"] for p in seen("sub", "frozen", restarted)} == {42.5}
            assert gateway.process is not None
            assert gateway.process.returncode is None
        finally:
            gateway.signal(signal.SIGTERM)
            assert await gateway.wait(20) == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_edgegw(*args)


async def test_browse_prints_tags_that_check_accepts(plc: OpcUaPlc, tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        run_cli, "browse", plc.url, "--under", f"{NSU}Filler", "--depth", "2"
    )
    assert result.returncode == 0, result.stderr
    fragment = yaml.safe_load(result.stdout)
    nodes = {tag["node"] for tag in fragment["tags"]}
    assert f"{NSU}Filler.Speed" in nodes
    assert f"{NSU}Filler.BatchId" in nodes
    config = {
        "gateway": {"id": "gw", "site": "s", "area": "a", "line": "l", "state_dir": str(tmp_path)},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "sources": [{"name": "filler", "protocol": "opcua", "url": plc.url, **fragment}],
    }
    path = tmp_path / "browsed.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    check = await asyncio.to_thread(run_cli, "check", "-c", str(path))
    assert check.returncode == 0, check.stderr
    assert f"{len(fragment['tags'])} tags" in check.stdout


async def test_browse_of_an_unreachable_server_fails_clearly(tmp_path: Path) -> None:
    result = await asyncio.to_thread(run_cli, "browse", "opc.tcp://127.0.0.1:9/x/")
    assert result.returncode == 1
    assert "cannot connect to opc.tcp://127.0.0.1:9/x/" in result.stderr


async def test_pki_create_refuses_to_overwrite(tmp_path: Path) -> None:
    first = await asyncio.to_thread(
        run_cli, "pki", "create", "--out", str(tmp_path / "p"), "--gateway-id", "g1"
    )
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "p" / "gw.der").exists()
    again = await asyncio.to_thread(
        run_cli, "pki", "create", "--out", str(tmp_path / "p"), "--gateway-id", "g1"
    )
    assert again.returncode == 1
    assert "gw.der" in again.stderr
