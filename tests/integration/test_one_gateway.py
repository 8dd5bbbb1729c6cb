"""One gateway per state directory, and gateways that share a client id back off.

Issue 14: a second `edgegw run` on a live state directory published 269 seqs twice with two
ids in 10 s, and two gateways with one client id took the MQTT session from each other about
1,700 times in 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
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

# Above the sum of the waits inside (the longest test: 4 x 60 s, plus a progress wait).
pytestmark = pytest.mark.timeout(360)


def _edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return run_edgegw(*args, timeout=120)


async def test_second_instance_on_one_state_dir_exits_and_the_first_stays_whole(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, plc: ModbusPlc
) -> None:
    data = config_dict(tmp_path / "state", mosquitto.port, plc.port, bench_tags(5))
    config = write_config(tmp_path / "gw.yaml", data)
    first = await GatewayProcess(config).start()
    try:
        await subscriber.wait_for(
            lambda got: len(telemetry(got)) >= 50, 60, what="50 values from the first gateway"
        )
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgegw",
            "run",
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        # "At once": before it opened anything. Bounded generously for a slow machine; a
        # second gateway that runs would never exit by itself.
        _, stderr = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 73, stderr
        assert first.process is not None
        words = stderr.decode()
        assert f"is in use by PID {first.process.pid}" in words, words
        assert "one gateway per state directory" in words, words
        assert "Traceback" not in words, words
        # The first goes on publishing, then stops cleanly.
        before = len(telemetry(subscriber.messages))
        await subscriber.wait_for(
            lambda got: len(telemetry(got)) >= before + 50, 60, what="50 more values"
        )
    finally:
        first.signal(signal.SIGTERM)
        assert await first.wait(60) == 0
    received, last_seq = await delivered_and_stored(
        subscriber, str(tmp_path / "state" / "outbox.sqlite3")
    )
    assert_complete(received, last_seq)  # gap-free, one id per seq


def test_check_and_run_name_an_unusable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data = config_dict(blocker / "state", 1883, 502, bench_tags(1))
    config = write_config(tmp_path / "gw.yaml", data)
    line = next(
        number
        for number, text in enumerate(config.read_text().splitlines(), 1)
        if "state_dir:" in text
    )
    checked = _edgegw("check", "-c", str(config))
    assert checked.returncode == 78, checked.stderr
    assert f"{config}:{line}:" in checked.stderr
    assert "gateway.state_dir: the state directory" in checked.stderr
    assert f"{blocker}/state does not exist and" in checked.stderr
    assert "1 error; the config is not valid." in checked.stderr
    ran = _edgegw("run", "-c", str(config))
    assert ran.returncode == 73, ran.stderr  # RestartPreventExitStatus: no restart loop
    assert f"cannot create the state directory {blocker}/state" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_two_gateways_with_one_client_id_back_off(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw.sinks.forwarder")
    configs = []
    for name in ("one", "two"):
        data = config_dict(tmp_path / name, mosquitto.port, plc.port, bench_tags(2))
        data["mqtt"]["client_id"] = "edgegw-shared-id"
        configs.append(data)
    async with running_gateway(configs[0]) as one, running_gateway(configs[1]) as two:
        gateways = (one, two)

        def connects() -> int:
            return sum(g.forwarders[0].status.connects for g in gateways)

        # Progress first: the two have knocked each other off a few times.
        await until(lambda: connects() >= 4, 60, "the two gateways to connect 4 times")
        start = connects()
        # Over the next 12 s: without backoff 64 connects here (about 1,700 in 10 s between
        # two processes); with delays that double from 0.1-0.2 s up to 2.5-5 s, each of the
        # pair connects at most ~10 times, whatever the machine's speed.
        await asyncio.sleep(12)  # a window to count in, not a wait for something to happen
        grown = connects() - start
        assert grown <= 22, f"{grown} connects in 12 s: no backoff"
    warnings = [r.getMessage() for r in caplog.records if "dropped the connection" in r.msg]
    # Said once per gateway, not per reconnect.
    assert 1 <= len(warnings) <= 2, warnings
    assert all("reconnecting with growing delays" in w for w in warnings)
    reasons = " ".join(warnings)
    assert "same client id 'edgegw-shared-id'" in reasons or "session taken over" in reasons


def test_an_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = config_dict(tmp_path / "state", 1883, 502, bench_tags(1))
        data["http"] = {"listen": f"127.0.0.1:{port}"}
        ran = _edgegw("run", "-c", str(write_config(tmp_path / "gw.yaml", data)))
    assert ran.returncode == 1, ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        f"edgegw run: http.listen 127.0.0.1:{port}: cannot listen: Address already in use: "
        "another process listens there (another edgegw?); choose a free port"
    )
    assert "Traceback" not in ran.stderr
    assert "ExceptionGroup" not in ran.stderr


async def test_status_asks_the_running_gateway_even_after_a_refused_reload(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc
) -> None:
    data = config_dict(tmp_path / "state", mosquitto.port, plc.port, bench_tags(1))
    data["http"] = {"listen": "127.0.0.1:0"}  # the file cannot tell the port: the lock can
    config = write_config(tmp_path / "gw.yaml", data)
    gateway = await GatewayProcess(config).start()
    try:
        await until(lambda: gateway.starts() == 1, 60, "the gateway to start")
        first = await asyncio.to_thread(_edgegw, "status", "-c", str(config))
        assert first.returncode in (0, 1), first.stderr
        assert "gateway test-gw" in first.stdout
        data["http"] = {"listen": "127.0.0.1:1"}  # a restart-only change: refused on SIGHUP
        write_config(config, data)
        gateway.signal(signal.SIGHUP)
        await until(
            lambda: any("reload refused" in line.get("msg", "") for line in gateway.log()),
            60,
            "the reload to be refused",
        )
        after = await asyncio.to_thread(_edgegw, "status", "-c", str(config))
        assert after.returncode in (0, 1), after.stderr
        assert "gateway test-gw" in after.stdout
    finally:
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(60) == 0
    stopped = await asyncio.to_thread(_edgegw, "status", "-c", str(config))
    assert stopped.returncode == 3, stopped.stderr
