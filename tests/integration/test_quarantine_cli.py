"""`edgegw quarantine` as an operator runs it (docs/events.md, "Quarantine"): `--since` a
duration or an ISO time, and a release that the running gateway picks up by itself (it moves
released records into the outbox every 2 s), without a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.store import Outbox
from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.cli import run_edgegw
from tests.support.gateway import GatewayProcess, config_dict, write_config
from tests.support.subscriber import Subscriber
from tests.support.wait import until

# Above the sum of the waits inside (the longest test: 20 + 15 + 10 + 30 + 20 s, plus CLI runs
# of up to 60 s each inside the waits).
pytestmark = pytest.mark.timeout(300)

STATE, GOOD, BATCH = 0, 1, 210
# A zone in summer time in December and in winter time in June: a local-time reading of an ISO
# or epoch time would be off by hours there, whatever the machine's own zone.
FAR_ZONE = {"TZ": "Australia/Sydney"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_edgegw(*args, env=env or {})


async def acli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cli` from an async test, off the event loop."""
    return await asyncio.to_thread(cli, *args, env=env)


def listed(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------------------------
# --since


def held_value(subject: str, created: float) -> QuarantineRecord:
    """A tag value out of range, quarantined at `created` (epoch seconds)."""
    return QuarantineRecord(
        key=f"k-{subject}",
        kind="telemetry",
        subject=subject,
        rule="range",
        value=130,
        reason="130 is above max 100",
        topic="s/a/l/cell/x",
        payload=None,
        trace=f"t-{subject}",
        ts=created,
        created=created,
    )


def iso(epoch: float, offset_hours: int = 0) -> str:
    """An ISO time with its offset: `...Z` for 0, else `...+HH:00`."""
    local = time.gmtime(epoch + offset_hours * 3600)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    return text + ("Z" if offset_hours == 0 else f"+{offset_hours:02d}:00")


async def test_since_a_duration_or_an_iso_time(tmp_path: Path) -> None:
    tags = [{"name": "x", "address": "holding:0", "type": "uint16"}]
    config = write_config(tmp_path / "gw.yaml", config_dict(tmp_path / "state", 1883, 502, tags))
    now = time.time()
    box = Outbox(str(tmp_path / "state" / "outbox.sqlite3"), gateway="test-gw")
    await box.open()
    await box.append(
        [],
        [
            held_value("cell.three_hours_ago", now - 3 * 3600),
            held_value("cell.half_an_hour_ago", now - 1800),
            held_value("cell.a_minute_ago", now - 60),
        ],
    )
    await box.close()

    async def subjects(*extra: str) -> list[str]:
        result = await acli("quarantine", "-c", str(config), "--json", *extra, env=FAR_ZONE)
        return [record["subject"] for record in listed(result)]

    everything = ["cell.three_hours_ago", "cell.half_an_hour_ago", "cell.a_minute_ago"]
    assert await subjects() == everything
    assert await subjects("--since", "4h") == everything
    assert await subjects("--since", "2h") == everything[1:]
    assert await subjects("--since", "10m") == everything[2:]
    assert await subjects("--since", "10s") == []
    # An ISO time is an instant: the same one written in UTC or with an offset.
    two_hours_ago = now - 2 * 3600
    assert await subjects("--since", iso(two_hours_ago)) == everything[1:]
    assert await subjects("--since", iso(two_hours_ago, offset_hours=11)) == everything[1:]
    assert await subjects("--since", iso(now - 600, offset_hours=5)) == everything[2:]

    text = await acli("quarantine", "-c", str(config), "--since", "2h", env=FAR_ZONE)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[3] for line in lines[:-1]] == everything[1:]
    assert lines[-1].startswith("2 record(s);")
    empty = await acli("quarantine", "-c", str(config), "--since", "10s")
    assert empty.stdout.strip() == "quarantine is empty since 10s"

    wrong = await acli("quarantine", "-c", str(config), "--since", "yesterday")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        "edgegw quarantine: --since 'yesterday' is neither a duration (e.g. 2h, 30m) nor an "
        "ISO time (e.g. 2026-11-29T08:00:00Z)"
    )


# --------------------------------------------------------------------------------------------
# a release picked up by the running gateway


def set_line(sim: ModbusPlc, *, state: int, good: int, batch: str = "B1001") -> None:
    raw = batch.encode().ljust(16, b"\0")
    sim.set_holding(BATCH, [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 16, 2)])
    sim.set_holding(GOOD, [good])
    sim.set_holding(STATE, [state])


def event_config(state_dir: Path, mqtt_port: int, modbus_port: int) -> dict[str, Any]:
    tags = [
        {
            "name": "state",
            "address": f"holding:{STATE}",
            "type": "uint16",
            "values": {0: "idle", 1: "running", 3: "done"},
        },
        {"name": "good", "address": f"holding:{GOOD}", "type": "uint16"},
        {"name": "batch", "address": f"holding:{BATCH}", "type": "string", "length": 8},
    ]
    # A generous timeout: a read that times out makes the state unknown, and `changes_to`
    # fires again when it is read back (a repeat, not what this file tests).
    data = config_dict(state_dir, mqtt_port, modbus_port, tags, timeout="3s")
    data["events"] = [
        {
            "type": "batch.completed",
            "trigger": {"tag": "plc.state", "changes_to": "done"},
            "key": ["batch"],
            "fields": {"batch": "plc.batch", "good": "plc.good"},
            "contract": {"good": {"type": "int", "min": 0, "max": 50000}},
        }
    ]
    return data


async def test_a_release_is_published_by_the_running_gateway(
    tmp_path: Path, plc: ModbusPlc, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    set_line(plc, state=1, good=0)
    config = write_config(
        tmp_path / "gw.yaml", event_config(tmp_path / "state", mosquitto.port, plc.port)
    )
    gateway = await GatewayProcess(config).start()
    try:

        def payloads() -> list[dict[str, Any]]:
            """The numbered messages (not the status, not the retained schemas)."""
            return [
                p
                for m in subscriber.messages
                if m.payload.startswith(b"{") and "seq" in (p := orjson.loads(m.payload))
            ]

        await until(lambda: any(p.get("tag") == "state" for p in payloads()), 20, "telemetry")
        set_line(plc, state=3, good=60_000)  # the batch completes, breaking its contract

        records: list[dict[str, Any]] = []

        def held() -> bool:
            records[:] = listed(cli("quarantine", "-c", str(config), "--json"))
            return any(r["rule"] == "contract" for r in records)

        await until(held, 15, "the event in the quarantine")
        (record,) = [r for r in records if r["rule"] == "contract"]
        assert record["reason"] == "good 60000 is above max 50000"
        await until(lambda: any(p.get("value") == 60_000 for p in payloads()), 10, "good 60000")
        assert not [p for p in payloads() if p["schema"] == "edgegw.event/1"]
        seq_before = max(p["seq"] for p in payloads())

        released = await acli("quarantine", "release", "-c", str(config), str(record["qid"]))
        assert released.returncode == 0, released.stderr
        assert "the running gateway publishes it within seconds" in released.stdout

        def events() -> list[dict[str, Any]]:
            return [p for p in payloads() if p["schema"] == "edgegw.event/1"]

        # Moved every 2 s; the ceiling is for a hang, not a measure of the 2 s.
        await until(lambda: bool(events()), 30, "the released event on the broker")
        (event,) = events()
        # The same process published it: no restart, its own audit line.
        assert gateway.process is not None
        assert gateway.process.returncode is None
        assert gateway.starts() == 1
        audit = [
            line["msg"]
            for line in gateway.log()
            if line.get("msg", "").startswith("audit: released event published")
        ]
        assert audit == [
            f"audit: released event published id={record['id']} seq={event['seq']} "
            f"trace={event['trace']}"
        ]
    finally:
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
    # Held, never sent: released under its own id, with the data it was detected with, and a
    # seq assigned at the release (after everything committed before it).
    assert event["id"] == record["id"]
    assert (event["type"], event["key"], event["data"]) == (
        "batch.completed",
        {"batch": "B1001"},
        {"good": 60_000},
    )
    assert event["seq"] > seq_before
    assert "supersedes" not in event
    # The record is gone (moved, not merely marked), and no other holds this event: one
    # detected again while held is counted in its record (see test_event_cases.py).
    left = listed(await acli("quarantine", "-c", str(config), "--json"))
    assert record["id"] not in [r["id"] for r in left]
