"""The gateway against a Mosquitto set up like a plant broker: mutual TLS and a password file."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import (
    GatewayProcess,
    bench_tags,
    config_dict,
    running_gateway,
    write_config,
)
from tests.support.ledger import telemetry
from tests.support.subscriber import Subscriber
from tests.support.tls import CertKey, TestPki, write_password_file
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

USER = "line-1-gw"
PASSWORD = "s3cr3t-Pa55word-never-logged"


def _broker(tmp_path: Path, pki: TestPki, server: CertKey | None = None) -> Mosquitto:
    passwords = write_password_file(tmp_path / "passwd", USER, PASSWORD)
    broker = Mosquitto(tls=pki.broker_tls(server), password_file=passwords)
    broker.start()
    return broker


@pytest.fixture
def tls_broker(tmp_path: Path, pki: TestPki) -> Iterator[Mosquitto]:
    broker = _broker(tmp_path, pki)
    yield broker
    broker.cleanup()


def _tls_config(
    tmp_path: Path, broker: Mosquitto, plc: ModbusPlc, pki: TestPki, **tls: Any
) -> dict[str, Any]:
    data = config_dict(tmp_path, broker.port, plc.port, bench_tags(3), poll="100ms")
    data["mqtt"].update(
        url=f"mqtts://127.0.0.1:{broker.port}",
        username=USER,
        password_file="mqtt-password",  # a credential name: under $CREDENTIALS_DIRECTORY
        tls={"ca": str(pki.ca_file), "cert": str(pki.client.cert), "key": str(pki.client.key)}
        | tls,
    )
    data["http"] = {"listen": "127.0.0.1:0"}
    return data


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What systemd's LoadCredential= provides: a private directory of secret files."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    (directory / "mqtt-password").write_text(PASSWORD + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_edgegw("check", "-c", str(path), timeout=30)


def _tls_subscriber(broker: Mosquitto, pki: TestPki) -> Subscriber:
    def setup(client: paho.Client) -> None:
        client.tls_set(
            ca_certs=str(pki.ca_file), certfile=str(pki.client.cert), keyfile=str(pki.client.key)
        )
        client.username_pw_set(USER, PASSWORD)

    return Subscriber(broker.port, "s/a/l/#", host="localhost", setup=setup)


async def test_data_flows_over_mutual_tls_and_the_password_is_in_no_log(
    tmp_path: Path, plc: ModbusPlc, tls_broker: Mosquitto, pki: TestPki, credentials: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", _tls_config(tmp_path, tls_broker, plc, pki))
    check = await asyncio.to_thread(_check, path)
    assert check.returncode == 0, check.stderr
    gateway = GatewayProcess(path)
    with _tls_subscriber(tls_broker, pki) as subscriber:
        await gateway.start()
        try:
            await subscriber.wait_for(
                lambda m: {"r0", "r1", "r2"} <= {p.get("tag") for p in telemetry(m)},
                20,
                what="telemetry of the three tags over TLS",
            )
            port = await _metrics_port(gateway)
            pages = [await asyncio.to_thread(http.get, port, p) for p in ("/metrics", "/healthz")]
        finally:
            gateway.signal(signal.SIGTERM)
            assert await gateway.wait(30) == 0
    connected = [line for line in gateway.log() if "broker connected" in line["msg"]]
    assert connected, "no 'broker connected' line"
    assert "tls=on" in connected[0]["msg"]
    assert f"user={USER}" in connected[0]["msg"]
    everything = gateway.stderr_path.read_text() + check.stdout + check.stderr
    everything += "".join(body for _, body in pages)
    assert PASSWORD not in everything


async def _metrics_port(gateway: GatewayProcess) -> int:
    """The port the gateway bound for /metrics, from its log line."""
    line: dict[str, Any] = {}

    def logged() -> bool:
        nonlocal line
        found = [entry for entry in gateway.log() if "metrics on http" in entry["msg"]]
        if found:
            line = found[0]
        return bool(found)

    await until(logged, 10, "the metrics line")
    return int(line["msg"].split("http://")[1].split("/")[0].rsplit(":", 1)[1])


async def _broker_error(data: dict[str, Any]) -> str:
    """Run the gateway in-process until the forwarder reports why it cannot connect."""
    async with running_gateway(data) as gateway:
        await until(
            lambda: gateway.forwarders[0].status.last_error is not None, 20, "a broker error"
        )
        assert not gateway.forwarders[0].status.broker_up
        error = gateway.forwarders[0].status.last_error
        assert error is not None
        return error


async def test_a_wrong_password_is_named_without_showing_it(
    tmp_path: Path, plc: ModbusPlc, tls_broker: Mosquitto, pki: TestPki, credentials: Path
) -> None:
    (credentials / "mqtt-password").write_text("not-the-password\n")
    error = await _broker_error(_tls_config(tmp_path, tls_broker, plc, pki))
    assert "not authorized" in error
    assert "mqtt.password_file" in error
    assert "not-the-password" not in error


async def test_an_untrusted_broker_certificate_is_refused(
    tmp_path: Path, plc: ModbusPlc, pki: TestPki, credentials: Path
) -> None:
    broker = _broker(tmp_path, pki, pki.untrusted_server)
    try:
        error = await _broker_error(_tls_config(tmp_path, broker, plc, pki))
    finally:
        broker.cleanup()
    assert "TLS: the broker" in error
    assert f"not signed by the CA in mqtt.tls.ca ({pki.ca_file})" in error


async def test_a_certificate_for_another_host_is_refused_unless_allowed(
    tmp_path: Path, plc: ModbusPlc, pki: TestPki, credentials: Path
) -> None:
    broker = _broker(tmp_path, pki, pki.wrong_host_server)
    try:
        error = await _broker_error(_tls_config(tmp_path, broker, plc, pki))
        assert "not valid for '127.0.0.1'" in error
        assert "verify_hostname" in error
        data = _tls_config(tmp_path, broker, plc, pki, verify_hostname=False)
        async with running_gateway(data) as gateway:
            await until(lambda: gateway.forwarders[0].status.published > 3, 20, "publishes")
    finally:
        broker.cleanup()


async def test_a_missing_client_certificate_is_explained(
    tmp_path: Path, plc: ModbusPlc, tls_broker: Mosquitto, pki: TestPki, credentials: Path
) -> None:
    data = _tls_config(tmp_path, tls_broker, plc, pki)
    data["mqtt"]["tls"] = {"ca": str(pki.ca_file)}
    error = await _broker_error(data)
    assert "client certificate" in error


def test_check_refuses_a_key_that_is_not_the_certificates(
    tmp_path: Path, pki: TestPki, credentials: Path
) -> None:
    data = config_dict(tmp_path, 8883, 5020, bench_tags(1))
    data["mqtt"].update(
        url="mqtts://127.0.0.1:8883",
        tls={"ca": str(pki.ca_file), "cert": str(pki.client.cert), "key": str(pki.server.key)},
    )
    check = _check(write_config(tmp_path / "gw.yaml", data))
    assert check.returncode != 0
    assert f"cannot use the client certificate {pki.client.cert}" in check.stderr


async def test_mqtts_against_a_plain_listener_asks_if_it_is_one(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto, pki: TestPki, credentials: Path
) -> None:
    error = await _broker_error(_tls_config(tmp_path, mosquitto, plc, pki))
    assert error.startswith(f"cannot connect to 127.0.0.1:{mosquitto.port}: ")
    assert error.endswith(
        "during the TLS handshake: is this a TLS listener? (mqtts:// is usually port 8883, "
        "mqtt:// 1883)"
    )
