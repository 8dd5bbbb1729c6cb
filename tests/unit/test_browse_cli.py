"""`edgegw browse` with a URL that cannot work: one line on stderr naming the argument and what
would be right, argparse's exit status for a usage error (2), no traceback, no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.cli.browse import EX_USAGE
from edgegw.cli.main import main
from edgegw.demo import demo_config_text


def browse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["browse", *argv])
    captured = capsys.readouterr()
    assert captured.out == ""
    return status, captured.err


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("opc.tcp//127.0.0.1:4840", "opc.tcp://127.0.0.1:4840"),  # the colon left out
        ("opc.tcp:/127.0.0.1:4840/line/", "opc.tcp://127.0.0.1:4840/line/"),
        ("http://127.0.0.1:4840", "opc.tcp://127.0.0.1:4840"),
        ("https://plc-3.local:4840/line/", "opc.tcp://plc-3.local:4840/line/"),
        ("127.0.0.1:4840", "opc.tcp://127.0.0.1:4840"),  # bare HOST:PORT
        ("plc1:4840", "opc.tcp://plc1:4840"),  # urlsplit would take 'plc1' for a scheme
    ],
)
def test_a_url_that_is_not_an_endpoint_gets_one_line_with_the_fix(
    url: str, meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = browse([url], capsys)
    assert status == EX_USAGE == 2
    assert err == (
        f"edgegw browse: URL '{url}' is not an OPC UA endpoint address; "
        f"write opc.tcp://HOST[:PORT][/PATH] (did you mean '{meant}'?)\n"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "opc.tcp://plc:99999",
            "URL 'opc.tcp://plc:99999' has an invalid port; it must be 1..65535",
        ),
        ("opc.tcp://", "URL 'opc.tcp://' has no host; write opc.tcp://HOST[:PORT][/PATH]"),
        ("", "the URL is empty; write opc.tcp://HOST[:PORT][/PATH]"),
    ],
)
def test_an_opc_tcp_url_with_another_fault_says_which(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = browse([url], capsys)
    assert (status, err) == (2, f"edgegw browse: {message}\n")


def test_credentials_in_the_url_are_refused_and_not_echoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, err = browse(["opc.tcp://operator:s3cret@plc:4840"], capsys)
    assert status == 2
    assert err == (
        "edgegw browse: credentials do not belong in the URL; put 'username' and "
        "'password_file' in the source of a config and give -c FILE --source NAME\n"
    )
    assert "s3cret" not in err


def test_no_url_and_no_config(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = browse([], capsys)
    assert (status, err) == (
        2,
        "edgegw browse: give the server's URL (opc.tcp://HOST[:PORT][/PATH]) or a config and "
        "its source (-c FILE --source NAME)\n",
    )


def test_a_bad_url_overriding_a_config_source_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "line.yaml"
    config.write_text(demo_config_text())
    status, err = browse(["-c", str(config), "--source", "filler", "opc.tcp//plc:4840"], capsys)
    assert status == 2
    assert "(did you mean 'opc.tcp://plc:4840'?)" in err
    status, err = browse(["-c", str(config), "--source", "press"], capsys)
    assert (status, err) == (
        2,
        f"edgegw browse: name one OPC UA source of {config} with --source (filler)\n",
    )
