"""What the commands say: one rule for -c, errors worded for the command, figures that mean
what they say (issue 14, point 6)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from edgegw.cli.main import EX_CONFIG, main
from edgegw.outbox.store import Outbox
from tests.support.gateway import bench_tags, config_dict


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path / "state", 1883, 502, bench_tags(1))))
    return path


def test_outbox_stats_of_an_empty_outbox_says_none_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)

    async def create() -> None:
        outbox = Outbox(str(tmp_path / "state" / "outbox.sqlite3"), gateway="test-gw")
        await outbox.open()
        await outbox.close()

    asyncio.run(create())
    assert main(["outbox", "stats", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "seq         none waiting, last assigned 0" in out
    assert "None" not in out


@pytest.mark.parametrize(
    ("command", "summary"),
    [
        (["check"], "1 error; the config is not valid."),
        (["status"], "1 error; edgegw status needs a valid config to find the gateway."),
        (["outbox", "stats"], "1 error; edgegw outbox needs a valid config to find the outbox."),
        (["quarantine"], "1 error; edgegw quarantine needs a valid config to find the outbox."),
    ],
)
def test_the_summary_line_is_worded_for_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], summary: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(_config(tmp_path).read_text().replace("poll:", "pol:"))
    assert main([*command, "-c", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert "unknown key 'pol'; did you mean 'poll'?" in err[0]
    assert err[-1] == summary


@pytest.mark.parametrize("command", [["check"], ["status"], ["outbox", "stats"], ["run"]])
def test_every_command_defaults_to_the_same_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    missing = tmp_path / "nowhere.yaml"
    monkeypatch.setenv("EDGEGW_CONFIG", str(missing))
    assert main(command) == EX_CONFIG
    assert capsys.readouterr().err.strip() == (
        f"edgegw {command[0]}: no config file given and none at {missing}; give one with "
        "-c FILE (or set EDGEGW_CONFIG)"
    )
