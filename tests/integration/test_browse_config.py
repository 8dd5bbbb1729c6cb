"""`edgegw browse -c FILE --source NAME` uses that source's security and credentials: it reaches
a server that offers SignAndEncrypt only (issue 15: a documented claim untested)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from edgegw.sources.opcua.pki import create_application_certificate
from simulators.opcua_plc import NAMESPACE_URI, OpcUaPlc

pytestmark = pytest.mark.timeout(120)

NSU = f"nsu={NAMESPACE_URI};s="


@pytest.fixture
async def secure_plc(tmp_path: Path) -> AsyncIterator[OpcUaPlc]:
    sim = OpcUaPlc(security="sign_encrypt", pki_dir=tmp_path / "server-pki", tick=0.05)
    await sim.start()
    yield sim
    await sim.stop()


async def _edgegw(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegw",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_browse_with_a_config_uses_the_sources_security(
    secure_plc: OpcUaPlc, tmp_path: Path
) -> None:
    assert secure_plc.server_certificate_path is not None
    pki = create_application_certificate(tmp_path / "gw-pki", gateway_id="gw")
    config = {
        "gateway": {"id": "gw", "site": "s", "area": "a", "line": "l", "state_dir": str(tmp_path)},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "sources": [
            {
                "name": "filler",
                "protocol": "opcua",
                "url": secure_plc.url,
                "security": {
                    "policy": "Basic256Sha256",
                    "mode": "SignAndEncrypt",
                    "certificate": str(pki.certificate),
                    "private_key": str(pki.private_key),
                    "trust": [str(secure_plc.server_certificate_path)],
                },
                "tags": [{"name": "speed", "node": f"{NSU}Filler.Speed"}],
            }
        ],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = await _edgegw(
        "browse", "-c", str(path), "--source", "filler", "--under", f"{NSU}Filler", "--depth", "2"
    )
    assert code == 0, err
    nodes = {tag["node"] for tag in yaml.safe_load(out)["tags"]}
    assert f"{NSU}Filler.Speed" in nodes
    assert f"{NSU}Filler.BatchId" in nodes
    # The same server without the config's security: no endpoint the plain browse may use.
    code, _, err = await _edgegw("browse", secure_plc.url, "--depth", "1")
    assert code == 1, err
    assert "Traceback" not in err
