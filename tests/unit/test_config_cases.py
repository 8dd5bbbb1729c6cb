"""Data-driven config cases: each folder in tests/configs holds a config.yaml and the exact
errors `edgegw check` must print (expected.txt; empty means the config is valid).

To add a case: make the folder, write config.yaml, and write expected.txt by hand; the test
prints the actual output on mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.cli.main import EX_CONFIG, main
from tests.support.cli import run_edgegw

CASES = sorted(p for p in (Path(__file__).parent.parent / "configs").iterdir() if p.is_dir())


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_config_case(
    case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(case)
    expected = (case / "expected.txt").read_text()
    status = main(["check", "-c", "config.yaml"])
    err = capsys.readouterr().err
    if expected:
        assert status == EX_CONFIG
        assert err == expected
    else:
        assert status == 0, err


@pytest.mark.timeout(30)
def test_check_and_run_exit_78_with_both_errors_positioned() -> None:
    case = Path(__file__).parent.parent / "configs" / "unknown-key-and-type"
    for command in ("check", "run"):
        result = run_edgegw(command, "-c", "config.yaml", cwd=case, timeout=20)
        assert result.returncode == 78, result.stderr
        assert (
            "config.yaml:6:5 sources[0].pol: unknown key 'pol'; did you mean 'poll'?"
            in result.stderr
        )
        assert "config.yaml:9:53 sources[0].tags[1].type: unknown value 'uint61'" in result.stderr


def test_schema_command_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "gateway" in schema["properties"]
    assert schema["$defs"]["ModbusTag"]["properties"]["address"]["pattern"]


def test_every_command_has_help() -> None:
    for argv in (
        ["--help"],
        ["run", "--help"],
        ["check", "--help"],
        ["demo", "--help"],
        ["schema", "--help"],
        ["outbox", "stats", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
