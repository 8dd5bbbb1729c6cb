"""The outbox alarm is repeated while it lasts (every ALARM_EVERY, 30 s in production), not
said once and forgotten, and not at every retry (issue 15: a documented claim untested)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest

from edgegw.service import app
from edgegw.service.app import Gateway
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import bench_tags, build_config, config_dict
from tests.support.wait import until

# Above the sum of the waits inside (30 + 30 + 60 + 30 + 30 = 180 s).
pytestmark = pytest.mark.timeout(240)


async def test_the_alarm_repeats_while_the_outbox_takes_no_data(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The interval shortened (the mechanism is what is tested); retries stay every second.
    monkeypatch.setattr(app, "ALARM_EVERY", 2.5)
    caplog.set_level(logging.INFO, logger="edgegw.service.app")
    data = config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(20), poll="50ms")
    gateway = Gateway(build_config(data))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 30)

    def alarms() -> list[str]:
        return [r.getMessage() for r in caplog.records if "ALARM intake stopped" in r.msg]

    try:
        await until(lambda: gateway.committed > 100, 30, "commits")
        mosquitto.pause()  # nothing acknowledged: no page is freed, the file must grow
        async with gateway.outbox._lock:
            # SQLite's ceiling stands in for a full file system: SQLITE_FULL, as on a full disk.
            (pages,) = await (await gateway.outbox.db.execute("PRAGMA page_count")).fetchone()
            await gateway.outbox.db.execute(f"PRAGMA max_page_count = {pages}")
        await until(lambda: len(alarms()) >= 3, 60, "the alarm said three times")
        async with gateway.outbox._lock:
            await gateway.outbox.db.execute("PRAGMA max_page_count = 1073741823")
        mosquitto.resume()
        await until(lambda: gateway.outbox_alarm is None, 30, "intake resumed")
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, 30)
    said = [r for r in caplog.records if "ALARM intake stopped" in r.msg]
    # Once per interval, each at ERROR, with how long it has lasted: 0 s, then >= 2 s, >= 5 s.
    assert all(r.levelno == logging.ERROR for r in said)
    assert "takes no data for 0 s" in said[0].getMessage()
    gaps = [b.created - a.created for a, b in itertools.pairwise(said)]
    assert all(gap >= 2.5 for gap in gaps), gaps
    assert any("intake resumed" in r.getMessage() for r in caplog.records)
