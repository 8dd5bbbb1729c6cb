"""A real file system that fills up (a small tmpfs), not SQLite's page ceiling: intake stops with
an alarm, nothing committed is touched, and once space is freed every value read is counted
out (issue 15: fakes where the real part runs here).

Mounting needs root (CI and the developers' machines run as root); elsewhere the test skips and
tests/faults/test_delivery_faults.py's max_page_count variant stands in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegw.service.app import Gateway
from simulators.modbus_plc import ModbusPlc
from tests.faults.conftest import FaultReport
from tests.support.broker import Mosquitto
from tests.support.gateway import bench_tags, build_config, config_dict
from tests.support.ledger import assert_complete, delivered_and_stored
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Above the sum of the waits inside (30 + 30 + 60 + 60 + 60 + 120 + 30 = 390 s, plus the
# progress wait of delivered_and_stored, which goes on only while messages arrive).
pytestmark = pytest.mark.timeout(600)

SIZE = 24 * 1024 * 1024  # the file system
LEFT = 1024 * 1024  # free once the ballast is in: fills in a second or two of intake


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _ballast(directory: Path) -> Path:
    """Fill the file system but for LEFT bytes."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    path = directory / "ballast"
    with path.open("wb") as out:
        chunk = b"\0" * (1024 * 1024)
        remaining = free - LEFT
        while remaining > 0:
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
    return path


async def test_a_full_file_system_stops_intake_and_space_freed_resumes_it(
    small_fs: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    state = small_fs / "state"
    data = config_dict(state, mosquitto.port, plc.port, bench_tags(40), poll="50ms", timeout="3s")
    gateway = Gateway(build_config(data))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 30)
    try:
        await until(lambda: gateway.committed > 200, 30, "commits")
        mosquitto.pause()  # nothing acknowledged: the outbox must grow into the free space
        ballast = _ballast(small_fs)
        await until(lambda: gateway.outbox_alarm is not None, 60, "the disk-full alarm")
        assert "full" in (gateway.outbox_alarm or ""), gateway.outbox_alarm
        stuck = gateway.committed
        ballast.unlink()  # the operator frees space
        await until(lambda: gateway.outbox_alarm is None, 60, "intake resumed")
        await until(lambda: gateway.committed > stuck + 100, 60, "commits after the space")
        mosquitto.resume()
        await until(lambda: gateway.outbox.depth < 100, 120, "the backlog sent")
    finally:
        with contextlib.suppress(Exception):
            mosquitto.resume()
        gateway.request_stop()
        await asyncio.wait_for(task, 30)
    items, last = await delivered_and_stored(subscriber, str(state / "outbox.sqlite3"))
    assert_complete(items, last)  # every seq 1..last: delivered or waiting on disk
    fault_report.add(
        "real file system full, then space freed",
        events_in=last,
        events_out=len({p["seq"] for p in items}),
        lost=last - len({p["seq"] for p in items}),
        note=f"tmpfs {SIZE // 2**20} MB; stopped at seq {stuck}",
    )
