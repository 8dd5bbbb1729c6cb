"""A clean stop says goodbye: "offline" once, and a DISCONNECT so the broker keeps its will."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.modbus_plc import ModbusPlc
from tests.support.broker import Mosquitto
from tests.support.gateway import bench_tags, config_dict, running_gateway
from tests.support.subscriber import Subscriber
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_a_clean_stop_sends_disconnect_and_the_will_stays_unsent(
    tmp_path: Path, mosquitto: Mosquitto, plc: ModbusPlc
) -> None:
    with Subscriber(mosquitto.port, "s/a/l/test-gw/status") as status:
        async with running_gateway(config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(1))):
            await status.wait_for(lambda got: b"online" in [m.payload for m in got], 20)
        await status.wait_for(lambda got: b"offline" in [m.payload for m in got], 20)
        # Mosquitto logs how each client left: "disconnected." after a DISCONNECT packet,
        # "closed its connection." when the socket just went (and then it sends the will).
        await until(lambda: "Client edgegw-test-gw " in mosquitto.log(), 20, "the broker's log")
        left = [line for line in mosquitto.log().splitlines() if "Client edgegw-test-gw " in line]
        assert left[-1].endswith("Client edgegw-test-gw disconnected."), left
    assert [m.payload for m in status.messages] == [b"online", b"offline"]
