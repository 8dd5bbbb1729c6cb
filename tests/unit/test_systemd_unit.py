"""The shipped unit is hardened (systemd's own score) and runs the daemon under Type=notify."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgegw.service"

pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_exposure_score_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    found = re.search(r"Overall exposure level for edgegw\.service: ([\d.]+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    assert float(found.group(1)) <= 2.0, result.stdout


def test_notify_watchdog_and_no_restart_on_a_bad_config() -> None:
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["WatchdogSec"] == "30s"
    assert set(settings["RestartPreventExitStatus"].split()) == {"73", "78"}
    assert settings["StateDirectory"] == "edgegw"
