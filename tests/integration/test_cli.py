"""The commands as a user runs them: demo, outbox stats."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgegw.outbox.store import read_waiting
from tests.support.cli import run_edgegw
from tests.support.wait import until_blocking

TOPIC = "plant-a/packaging/line-1"


def demo_command(tmp_path: Path, broker: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgegw",
        "--log-format",
        "text",
        "demo",
        "--broker",
        broker,
        "--state-dir",
        str(tmp_path / broker),
        *extra,
    ]


def run_demo_until(
    tmp_path: Path, broker: str, done: Callable[[list[str]], bool], within: float = 30
) -> list[str]:
    """Start `edgegw demo`, stop it (SIGTERM, as Ctrl-C does) once `done(lines)` holds, and
    return every line it printed, the summary included. The demo prints messages as they
    arrive, in no fixed order across tags."""
    out_path = tmp_path / f"demo-{broker}.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            demo_command(tmp_path, broker, "--duration", "120"),
            stdout=out,
            stderr=subprocess.DEVNULL,
        )

        def there() -> bool:
            assert process.poll() is None, f"demo exited early: {out_path.read_text()}"
            return done(out_path.read_text().splitlines())

        try:
            until_blocking(there, within, "the demo's lines", describe=out_path.read_text)
        finally:
            process.terminate()
            assert process.wait(20) == 0
    return out_path.read_text().splitlines()


def wire(lines: list[str], topic: str) -> list[dict[str, Any]]:
    """The JSON payloads printed for `topic`: the line is the topic, a space, the payload."""
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith(f"{topic} {{")]


def has_event_and_both_plcs(lines: list[str]) -> bool:
    return (
        any(line.startswith("EVENT ") for line in lines)
        and bool(wire(lines, f"{TOPIC}/press-01/state"))
        and bool(wire(lines, f"{TOPIC}/filler/running"))
    )


def summary_count(lines: list[str], label: str) -> str:
    (line,) = [line for line in lines if line.startswith(f"  {label} ")]
    return line[len(label) + 2 :].strip()


@pytest.mark.timeout(60)
def test_demo_prints_the_wire_json_each_event_and_a_summary(tmp_path: Path) -> None:
    lines = run_demo_until(tmp_path, "mosquitto", has_event_and_both_plcs)
    assert f"{TOPIC}/demo-gw/status online" in lines
    # Values as JSON, as a consumer receives them: true/false and "done", not False and 'done'.
    states = wire(lines, f"{TOPIC}/press-01/state")
    assert {m["schema"] for m in states} == {"edgegw.telemetry/1"}
    assert {m["value"] for m in states} <= {"idle", "running", "done"}
    assert {type(m["value"]) for m in wire(lines, f"{TOPIC}/filler/running")} == {bool}
    # Each business event: an EVENT line, then the event itself as sent.
    at = next(i for i, line in enumerate(lines) if line.startswith("EVENT "))
    words = lines[at].split(" ")
    assert words[:3] == ["EVENT", "batch.completed", "key"]
    key, data = json.loads(words[3]), json.loads(words[5])
    event = json.loads(lines[at + 1].split(" ", 1)[1])
    assert lines[at + 1].startswith(f"{TOPIC}/events/batch.completed {{")
    assert (event["key"], event["data"], event["seq"]) == (key, data, int(words[7]))
    assert set(data) == {"good", "scrap"}
    # The summary, after the stop: counts that match what was printed, and no gaps.
    telemetry = [line for line in lines if '"schema":"edgegw.telemetry/1"' in line]
    events = [line for line in lines if line.startswith("EVENT ")]
    assert any(line.startswith("edgegw demo: stopped after ") for line in lines)
    assert summary_count(lines, "values").startswith(f"{len(telemetry)} (telemetry of 9 tags)")
    assert summary_count(lines, "events") == f"{len(events)} ({len(events)} batch.completed)"
    assert re.fullmatch(r"0 \(seq 1\.\.\d+, every one arrived\)", summary_count(lines, "seq gaps"))
    assert summary_count(lines, "quarantined").startswith("0 records")
    assert not any(line.startswith("  silent tags ") for line in lines)
    assert "What to try next:" in lines
    assert any("edgegw check -c " in line and "demo.yaml" in line for line in lines)


@pytest.mark.timeout(60)
def test_demo_with_the_embedded_broker(tmp_path: Path) -> None:
    def both_plcs(lines: list[str]) -> bool:
        return bool(wire(lines, f"{TOPIC}/press-01/batch")) and bool(
            wire(lines, f"{TOPIC}/filler/batch")
        )

    lines = run_demo_until(tmp_path, "embedded", both_plcs)
    assert wire(lines, f"{TOPIC}/press-01/batch")[0]["value"].startswith("B1")
    assert re.fullmatch(r"0 \(seq 1\.\.\d+, every one arrived\)", summary_count(lines, "seq gaps"))


@pytest.mark.timeout(60)
def test_outbox_stats_after_a_demo(tmp_path: Path) -> None:
    """--duration ends the demo by itself; its state directory keeps the outbox and the config
    the summary points at."""
    finished = subprocess.run(
        demo_command(tmp_path, "mosquitto", "--duration", "5"),
        capture_output=True,
        text=True,
        timeout=40,
        check=True,
    )
    config_path = tmp_path / "mosquitto" / "demo.yaml"
    lines = finished.stdout.splitlines()
    assert f"  edgegw outbox stats -c {config_path}" in lines
    # What the demo's subscriber received: seq 1..received, every one.
    gaps = re.fullmatch(
        r"0 \(seq 1\.\.(\d+), every one arrived\)", summary_count(lines, "seq gaps")
    )
    assert gaps, finished.stdout
    received = int(gaps[1])
    result = run_edgegw("outbox", "stats", "-c", str(config_path), "--json", check=True)
    stats = json.loads(result.stdout)
    # What the file holds (what waits for the broker depends on how the stop went: in-flight
    # publishes finish, rows committed after stay; the subscriber may lag behind). A segment
    # may be partly acknowledged: what waits is counted per message.
    waiting = [m["seq"] for m in read_waiting(stats["path"], "mqtt")]
    assert (stats["depth"], stats["first_seq"]) == (len(waiting), min(waiting, default=None))
    assert stats["path"] == str(tmp_path / "mosquitto" / "outbox.sqlite3")
    assert stats["last_seq"] >= received  # every seq the subscriber saw was assigned
    assert stats["dropped"] == 0
    assert stats["quarantined"] == 0
    text = run_edgegw("outbox", "stats", "-c", str(config_path), check=True).stdout
    assert f"depth       {stats['depth']} events waiting for a sink" in text.splitlines()
    waiting = "none waiting" if stats["first_seq"] is None else f"first {stats['first_seq']}"
    assert f"seq         {waiting}, last assigned {stats['last_seq']}" in text.splitlines()


@pytest.mark.timeout(60)
async def test_outbox_stats_of_a_known_outbox(tmp_path: Path) -> None:
    """Exact figures: 5 events committed, seq 1 and 2 acknowledged, 1 record quarantined."""
    from edgegw.outbox.quarantine import QuarantineRecord
    from edgegw.outbox.store import Outbox, PendingEvent

    state = tmp_path / "state"
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{id: gw, site: s, area: a, line: l, state_dir: {state}}}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1883'}\n"
        "sources:\n"
        "  - {name: plc, protocol: modbus, url: 'tcp://127.0.0.1:502',\n"
        "     tags: [{name: t, address: 'holding:0', type: uint16}]}\n"
    )
    created = time.time() - 90
    box = Outbox(str(state / "outbox.sqlite3"), gateway="gw")
    await box.open()
    events = [
        PendingEvent(f"k{i}", "edgegw.telemetry/1", "s/a/l/plc/t", {"seq": 0}, "t", created)
        for i in range(5)
    ]
    held = QuarantineRecord(
        "q", "telemetry", "plc.t", "range", 9, "9 is above max 1", "s/a/l/plc/t", None, "t",
        created, created,
    )  # fmt: skip
    await box.append(events, [held])
    await box.delete_acknowledged([1, 2])
    await box.close()

    def stats(*extra: str) -> str:
        return run_edgegw("outbox", "stats", "-c", str(config), *extra, check=True).stdout

    figures = json.loads(await asyncio.to_thread(stats, "--json"))
    assert {k: figures[k] for k in ("depth", "first_seq", "last_seq", "dropped")} == {
        "depth": 3,
        "first_seq": 3,
        "last_seq": 5,
        "dropped": 0,
    }
    assert figures["quarantined"] == 1
    assert figures["sinks"]["mqtt"]["waiting"] == 3
    assert figures["sinks"]["mqtt"]["first_seq"] == 3
    assert 90 <= figures["oldest_age_seconds"] < 90 + 60
    text = (await asyncio.to_thread(stats)).splitlines()
    assert "depth       3 events waiting for a sink" in text
    assert any(line.startswith("sink        mqtt: 3 waiting, oldest 1m") for line in text), text
    assert "seq         first 3, last assigned 5" in text
    assert "quarantine  1 records (edgegw quarantine -c FILE)" in text
