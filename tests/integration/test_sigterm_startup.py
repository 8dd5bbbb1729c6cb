"""SIGTERM while `edgegw run` is still starting exits 0, "clean stop (SIGTERM, also while still
starting)" (docs/operations.md, "Exit statuses"): systemd stops a unit that is still
activating the way it stops a running one, and a status other than 0 would read as a failure.

Each test holds the start-up at a known point instead of guessing a delay: the config file is
a FIFO that the test fills when it chooses (the gateway is reading its config), or the test
holds the outbox's write lock (the gateway is opening its outbox, as on a large file whose
check takes a while)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest
import yaml

from edgegw.outbox.store import Outbox
from tests.support.gateway import GatewayProcess, config_dict, write_config
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

TAGS = [{"name": "t", "address": "holding:0", "type": "uint16"}]


def nobody_port() -> int:
    """A loopback port nobody listens on (no broker needed to start, or to stop)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logged(process: GatewayProcess, text: str) -> bool:
    return any(text in line.get("msg", "") for line in process.log())


async def test_sigterm_while_the_outbox_opens_exits_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    outbox_path = state / "outbox.sqlite3"
    box = Outbox(str(outbox_path))
    await box.open()
    await box.close()
    config = write_config(tmp_path / "gw.yaml", config_dict(state, nobody_port(), 1, TAGS))

    # A write transaction of ours: the gateway's open waits for it (SQLite's busy timeout,
    # 5 s), before READY=1 and before "gateway started".
    holder = sqlite3.connect(outbox_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        process = await GatewayProcess(config).start()
        try:
            # Logged once its signal handlers are installed, just before the outbox opens.
            await until(lambda: logged(process, "audit: config loaded"), 20, "the config loaded")
            assert process.starts() == 0, "the gateway started while its outbox was locked"
            process.signal(signal.SIGTERM)
        finally:
            holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert await process.wait(20) == 0
    assert logged(process, "gateway stopped")
    errors = [line["msg"] for line in process.log() if line.get("level") in ("error", "critical")]
    assert errors == []


async def test_sigterm_while_the_config_is_read_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    os.mkfifo(config)
    text = yaml.safe_dump(config_dict(tmp_path / "state", nobody_port(), 1, TAGS)).encode()
    process = await GatewayProcess(config).start()
    try:
        # Opening a FIFO to write succeeds only once someone opened it to read: the gateway
        # (or its config-parsing child) is reading the config now, past Python's own start.
        writer = -1

        def reader_there() -> bool:
            nonlocal writer
            try:
                writer = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                return False
            return True

        await until(reader_there, 20, "the gateway reading its config")
        process.signal(signal.SIGTERM)
        # Then let it have its config, so nothing waits on the FIFO whatever it does.
        with contextlib.suppress(BrokenPipeError):
            os.set_blocking(writer, True)
            os.write(writer, text)
        os.close(writer)
        status = await process.wait(20)
    finally:
        if process.process is not None and process.process.returncode is None:
            await process.kill()
    assert status == 0
