"""The commands as a user runs them: demo, outbox stats."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run_demo_until_telemetry(
    tmp_path: Path, broker: str, expected: tuple[str, ...] = ("/press-01/temperature",)
) -> str:
    """Start `edgegw demo` and return its output once every `expected` text appeared (≤ 15 s);
    the demo prints messages as they arrive, in no fixed order across tags."""
    out_path = tmp_path / f"demo-{broker}.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgegw",
                "--log-format",
                "text",
                "demo",
                "--broker",
                broker,
                "--duration",
                "30",
                "--state-dir",
                str(tmp_path / broker),
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while not all(text in out_path.read_text() for text in expected):
                assert process.poll() is None, f"demo exited early: {out_path.read_text()}"
                assert time.monotonic() < deadline, (
                    f"not all of {expected} within 15 s: {out_path.read_text()}"
                )
                time.sleep(0.1)
        finally:
            process.terminate()
            assert process.wait(15) == 0
    return out_path.read_text()


@pytest.mark.timeout(40)
def test_demo_shows_telemetry_within_15s(tmp_path: Path) -> None:
    output = run_demo_until_telemetry(tmp_path, "mosquitto")
    assert "plant-a/packaging/line-1/demo-gw/status  online" in output
    assert "72.53 degC  good" in output or "degC  good" in output


@pytest.mark.timeout(40)
def test_demo_with_the_embedded_broker(tmp_path: Path) -> None:
    recipe = "/press-01/recipe  'RCP-A12'  good"
    output = run_demo_until_telemetry(tmp_path, "embedded", ("/press-01/temperature", recipe))
    assert recipe in output


@pytest.mark.timeout(40)
def test_outbox_stats_after_a_demo(tmp_path: Path) -> None:
    run_demo_until_telemetry(tmp_path, "mosquitto")
    config = (Path(__file__).parents[2] / "config" / "demo.yaml").read_text()
    config_path = tmp_path / "gw.yaml"
    config_path.write_text(
        config.replace("state_dir: ./state", f"state_dir: {tmp_path / 'mosquitto'}")
    )
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
