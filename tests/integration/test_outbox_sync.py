"""`outbox: {synchronous: normal}`: a running gateway syncs the WAL every 200 ms, so a power cut
takes at most the last fraction of a second of commits (docs/delivery.md, "Power loss")."""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support.gateway import bench_tags, config_dict, running_gateway
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    """A loopback port nobody listens on: the broker stays away, the rows stay in the outbox."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows_in_main_file(path: Path, scratch: Path) -> int | None:
    """Rows the main database file holds by itself, without its -wal file (a copy taken now).

    Rows reach the main file only through a checkpoint, and with synchronous=normal SQLite
    fsyncs the WAL before each checkpoint and the main file after it: these rows survive a
    power cut. A commit that is only in the WAL is not fsynced yet. Chosen over counting fsync
    calls (which would need a wrapper around SQLite's VFS): it is what a power cut would leave.
    None when the copy caught a checkpoint half-written (try again)."""
    copy = scratch / f"main-only-{time.monotonic_ns()}.sqlite3"
    shutil.copyfile(path, copy)
    try:
        with contextlib.closing(sqlite3.connect(copy)) as db:
            return int(db.execute("SELECT coalesce(sum(count), 0) FROM segments").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            return 0  # the schema itself is only in the WAL
        return None
    finally:
        copy.unlink()


async def test_a_running_gateway_syncs_the_wal_by_itself(tmp_path: Path, plc: ModbusPlc) -> None:
    data = config_dict(tmp_path / "state", closed_port(), plc.port, bench_tags(10))
    data["outbox"] = {"synchronous": "normal"}
    scratch = tmp_path / "copies"
    scratch.mkdir()
    async with running_gateway(data) as gateway:
        path = Path(gateway.outbox.path)

        def synced_at_least(n: int) -> bool:
            rows = rows_in_main_file(path, scratch)
            return rows is not None and rows >= n

        # The bench registers change at every 100 ms poll: ~100 rows a second, far below the
        # 1000 WAL pages after which SQLite would checkpoint on its own.
        await until(lambda: gateway.outbox.depth >= 20, 20, "20 rows committed")
        await until(lambda: synced_at_least(20), 10, "the first 20 rows in the main file")
        # Not once: every commit reaches the main file shortly after, while the gateway runs.
        later = gateway.outbox.depth + 50
        await until(lambda: gateway.outbox.depth >= later, 20, f"{later} rows committed")
        await until(lambda: synced_at_least(later), 10, f"{later} rows in the main file")
