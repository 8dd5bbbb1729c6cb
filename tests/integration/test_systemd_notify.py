"""sd_notify: READY once started, WATCHDOG at half of WATCHDOG_USEC, STOPPING at SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegw.service.sdnotify import Notifier
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import GatewayProcess, bench_tags, config_dict, write_config
from tests.support.wait import until

pytestmark = pytest.mark.timeout(40)


class NotifySocket:
    """What systemd would receive on NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        while True:
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


async def test_ready_watchdog_pings_and_stopping(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    path = write_config(
        tmp_path / "gw.yaml", config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(5))
    )
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    process = await GatewayProcess(path, env=env).start()
    try:
        await until(
            lambda: any(m.startswith("READY=1") for m in notify_socket.received()), 20, "READY=1"
        )
        await until(
            lambda: notify_socket.received().count("WATCHDOG=1") >= 3, 10, "3 watchdog pings"
        )
    finally:
        process.signal(signal.SIGTERM)
        assert await process.wait(15) == 0
    messages = notify_socket.received()
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert re.search(r"\nSTATUS=[01]/1 sources up, broker (up|down), outbox \d+", ready), ready
    assert messages.index(ready) < messages.index("WATCHDOG=1")
    # Watchdog pings go on while the stop drains (they prove the loop still turns).
    stopping = [i for i, m in enumerate(messages) if m.startswith("STOPPING=1")]
    assert len(stopping) == 1, messages[-5:]
    assert stopping[0] > messages.index(ready)
    assert all(m in ("WATCHDOG=1",) or m.startswith("STATUS=") for m in messages[stopping[0] + 1 :])


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened: list[tuple[object, ...]] = []

    def no_socket(*args: object) -> socket.socket:
        opened.append(args)
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)  # what sdnotify would send with
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    with caplog.at_level(logging.DEBUG, logger="edgegw.service.sdnotify"):
        notifier.ready("x")
        notifier.watchdog()
        notifier.status("y")
        notifier.stopping("z")
    assert opened == []
    assert caplog.records == []


def test_watchdog_interval_is_half_and_only_for_this_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 15.0
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_an_abstract_socket_name_and_a_vanished_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"edgegw-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        listener.close()
    missing = tmp_path / "missing.sock"
    gone = Notifier({"NOTIFY_SOCKET": str(missing)})
    with caplog.at_level(logging.DEBUG, logger="edgegw.service.sdnotify"):
        for _ in range(3):  # never raised...
            gone.watchdog()
        gone.status("still here")
    # ... and logged once, naming the socket, not once per ping (every WatchdogSec/2).
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"cannot notify systemd socket={missing} error=[Errno 2] No such file or directory",
        )
    ]
