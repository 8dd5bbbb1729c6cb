"""The commands as a user runs them: demo, outbox stats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
        try:
            deadline = time.monotonic() + within
            while not done(out_path.read_text().splitlines()):
                assert process.poll() is None, f"demo exited early: {out_path.read_text()}"
                assert time.monotonic() < deadline, (
                    f"not there in {within} s: {out_path.read_text()}"
                )
                time.sleep(0.1)
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
    assert f"  edgegw outbox stats -c {config_path}" in finished.stdout.splitlines()
    result = subprocess.run(
        [sys.executable, "-m", "edgegw", "outbox", "stats", "-c", str(config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    stats = json.loads(result.stdout)
    assert stats["last_seq"] >= 1
    assert stats["depth"] >= 0
    assert stats["dropped"] == 0
    text = subprocess.run(
        [sys.executable, "-m", "edgegw", "outbox", "stats", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert "events waiting for the broker" in text
