"""Tests of the OPC UA filling-line simulator, through a real asyncua client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.common.node import Node
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyBasic256Sha256,
)
from cryptography import x509

from simulators.opcua_plc import (
    APPLICATION_URI,
    DUMMY_NAMESPACE_PREFIX,
    FILLER_STATES,
    FILLER_VARIABLES,
    NAMESPACE_URI,
    OPERATION_LIMITS,
    TYPE_VALUES,
    TYPE_VARIANTS,
    OpcUaPlc,
    _parse_args,
    write_self_signed_certificate,
)
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

CLIENT_URI = "urn:edgegw:test:client"


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    client = Client(url, timeout=5)
    await client.connect()
    try:
        yield client
    finally:
        # The server may be gone already (restart tests); that is fine here.
        with contextlib.suppress(Exception):
            await client.disconnect()


@pytest.fixture
def plc(opcua_plc: OpcUaPlc) -> OpcUaPlc:
    return opcua_plc


def filler(client: Client, idx: int, name: str) -> Node:
    return client.get_node(ua.NodeId(f"Filler.{name}", idx))


async def test_node_ids_are_browse_paths_in_namespace_2(plc: OpcUaPlc) -> None:
    async with connected(plc.url) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        assert idx == 2 == plc.namespace_index
        assert plc.url == f"opc.tcp://127.0.0.1:{plc.port}/line/"
        for folder in ("Filler", "Types", "Bench"):
            node = await client.nodes.objects.get_child(f"{idx}:{folder}")
            assert node.nodeid == ua.NodeId(folder, idx)
        children = await client.get_node(ua.NodeId("Filler", idx)).get_children()
        names = {(await child.read_browse_name()).Name: child.nodeid for child in children}
        assert names == {name: ua.NodeId(f"Filler.{name}", idx) for name in FILLER_VARIABLES}
        assert await filler(client, idx, "Frozen").read_value() == 42.5
        assert await client.get_node(ua.NodeId("Bench", idx)).get_children() == []


async def test_namespace_shift_moves_the_filler_namespace() -> None:
    async with OpcUaPlc(namespace_shift=3, tick=0) as sim, connected(sim.url) as client:
        namespaces = await client.get_namespace_array()
        assert namespaces[1] == APPLICATION_URI
        assert namespaces[2:] == [
            f"{DUMMY_NAMESPACE_PREFIX}0",
            f"{DUMMY_NAMESPACE_PREFIX}1",
            f"{DUMMY_NAMESPACE_PREFIX}2",
            NAMESPACE_URI,
        ]
        assert sim.namespace_index == 5
        assert await client.get_node("ns=5;s=Filler.Frozen").read_value() == 42.5


async def test_types_read_back_as_type_values_and_can_be_written() -> None:
    async with OpcUaPlc(tick=0) as sim, connected(sim.url) as client:
        idx = sim.namespace_index
        for name, expected in TYPE_VALUES.items():
            dv = await client.get_node(ua.NodeId(f"Types.{name}", idx)).read_data_value()
            assert dv.Value is not None
            assert dv.Value.Value == expected, name
            assert dv.Value.VariantType == TYPE_VARIANTS[name], name
        array = client.get_node(ua.NodeId("Types.Int32Array", idx))
        assert await array.read_value_rank() == ua.ValueRank.OneDimension

        await sim.write("Types.Int16", 7)
        assert await client.get_node(ua.NodeId("Types.Int16", idx)).read_value() == 7
        # Types are writable by clients too.
        text = client.get_node(ua.NodeId("Types.String", idx))
        await text.write_value(ua.Variant("from client", ua.VariantType.String))
        assert await text.read_value() == "from client"

        await sim.write("Filler.GoodCount", 4_294_967_290)
        assert await filler(client, idx, "GoodCount").read_value() == 4_294_967_290
        assert sim.stats.value_writes > 0
        with pytest.raises(KeyError):
            await sim.write("Filler.NoSuchThing", 1)
        with pytest.raises(KeyError):
            await sim.write("Bench.Item00000", 1.0)


async def test_temperature_source_timestamp_is_two_seconds_before_server_timestamp(
    plc: OpcUaPlc,
) -> None:
    async with connected(plc.url) as client:
        node = filler(client, plc.namespace_index, "Temperature")
        stamps: set[dt.datetime] = set()
        for _ in range(3):
            dv = await node.read_data_value()
            assert dv.SourceTimestamp is not None
            assert dv.ServerTimestamp is not None
            assert dv.ServerTimestamp - dv.SourceTimestamp == dt.timedelta(seconds=2)
            stamps.add(dv.ServerTimestamp)
            await asyncio.sleep(plc.tick * 2)
        assert len(stamps) > 1  # rewritten every tick
        frozen = await filler(client, plc.namespace_index, "Frozen").read_data_value()
        assert frozen.SourceTimestamp == frozen.ServerTimestamp


class StatusRecorder:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.statuses.append(data.monitored_item.Value.StatusCode.value)


async def test_sensor_fault_gives_bad_sensor_failure_then_good(plc: OpcUaPlc) -> None:
    async with connected(plc.url) as client:
        node = filler(client, plc.namespace_index, "Sensor")
        recorder = StatusRecorder()
        subscription = await client.create_subscription(20, recorder)
        await subscription.subscribe_data_change(node)

        async def status() -> int:
            dv = await node.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode is not None
            return dv.StatusCode.value

        async def sensor_bad() -> bool:
            return await status() == ua.StatusCodes.BadSensorFailure

        async def sensor_good() -> bool:
            return await status() == ua.StatusCodes.Good

        async def good_notified_after_bad() -> bool:
            statuses = recorder.statuses
            bad = ua.StatusCodes.BadSensorFailure
            return bad in statuses and ua.StatusCodes.Good in statuses[statuses.index(bad) :]

        assert await sensor_good()
        plc.faults.sensor_bad = True
        await until(sensor_bad, 10, "BadSensorFailure")
        # The last reading is kept and still sent along with the bad status.
        kept = await node.read_data_value(raise_on_bad_status=False)
        assert kept.Value is not None
        assert isinstance(kept.Value.Value, float)
        await asyncio.sleep(plc.tick * 3)
        again = await node.read_data_value(raise_on_bad_status=False)
        assert again.Value == kept.Value

        plc.faults.clear()
        await until(sensor_good, 10, "Good again")
        await until(good_notified_after_bad, 10, "notifications: BadSensorFailure, then Good")
        await subscription.delete()


async def test_state_machine_advances(plc: OpcUaPlc) -> None:
    async with connected(plc.url) as client:
        idx = plc.namespace_index
        state = filler(client, idx, "State")
        first = await state.read_value()
        assert first in FILLER_STATES

        async def state_changed() -> bool:
            return await state.read_value() != first

        await until(state_changed, 10, "Filler.State to change")
        good = filler(client, idx, "GoodCount")
        before = await good.read_value()

        async def counted() -> bool:
            return await good.read_value() > before

        await until(counted, 10, "GoodCount to rise")


async def test_line_cycles_deterministically_without_a_server() -> None:
    a = OpcUaPlc(tick=0, seed=3)
    b = OpcUaPlc(tick=0, seed=3)
    trace_a: list[dict[str, object]] = []
    trace_b: list[dict[str, object]] = []
    for _ in range(80):
        await a.step()
        await b.step()
        trace_a.append(a.filler_values())
        trace_b.append(b.filler_values())
    assert trace_a == trace_b

    # States follow the cycle order; counters only move while filling; a new batch id
    # after every "done".
    seen = [v["State"] for v in trace_a]
    transitions = {(x, y) for x, y in itertools.pairwise(seen) if x != y}
    assert transitions == {
        ("idle", "filling"),
        ("filling", "capping"),
        ("capping", "done"),
        ("done", "idle"),
    }
    for prev, cur in itertools.pairwise(trace_a):
        assert cur["StateCode"] == FILLER_STATES.index(str(cur["State"]))
        assert cur["Running"] == (cur["State"] in ("filling", "capping"))
        if cur["GoodCount"] != prev["GoodCount"]:
            assert prev["State"] == "filling"
        if prev["State"] == "done" and cur["State"] == "idle":
            assert cur["BatchId"] != prev["BatchId"]
    assert trace_a[0]["BatchId"] == "B001"
    assert {v["Frozen"] for v in trace_a} == {42.5}


async def test_restart_serves_again_on_the_same_port_with_a_new_shift(plc: OpcUaPlc) -> None:
    port = plc.port
    old = Client(plc.url, timeout=2)
    await old.connect()
    try:
        subscription = await old.create_subscription(50, StatusRecorder())
        await subscription.subscribe_data_change(filler(old, 2, "Speed"))

        await plc.restart(namespace_shift=2)
        assert plc.port == port
        async with connected(plc.url) as client:
            assert await client.get_namespace_index(NAMESPACE_URI) == 4
            assert await filler(client, 4, "Frozen").read_value() == 42.5
            # Immediately again, with a client connected: the port must be reusable at once.
            await plc.restart(namespace_shift=0)
        async with connected(plc.url) as client:
            assert await client.get_namespace_index(NAMESPACE_URI) == 2
        # The first server closed its sessions: the old client's connection is dead.
        with pytest.raises(ConnectionError):
            await filler(old, 2, "Frozen").read_value()
    finally:
        with contextlib.suppress(Exception):
            await old.disconnect()
    assert plc.stats.starts == 3


async def test_sign_encrypt_only_accepts_secured_clients(tmp_path: Path) -> None:
    sim = OpcUaPlc(security="sign_encrypt", pki_dir=tmp_path / "pki", tick=0)
    assert sim.server_certificate_path == tmp_path / "pki" / "server_cert.der"
    client_cert = tmp_path / "client" / "cert.der"
    client_key = tmp_path / "client" / "key.pem"
    write_self_signed_certificate(
        client_cert,
        client_key,
        application_uri=CLIENT_URI,
        common_name="edgegw test client",
        dns_names=("localhost", socket.gethostname()),
    )
    async with sim:
        cert = x509.load_der_x509_certificate(sim.server_certificate_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert APPLICATION_URI in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        assert cert.public_key().key_size == 2048  # type: ignore[union-attr]

        endpoints = await Client(sim.url).connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints}
        mode = ua.MessageSecurityMode.SignAndEncrypt
        assert offered == {
            ("Basic256Sha256", mode),
            ("Aes128_Sha256_RsaOaep", mode),
            ("Aes256_Sha256_RsaPss", mode),
        }

        with pytest.raises(ua.UaError):
            await Client(sim.url, timeout=5).connect()

        # A client that ignores the endpoint list gets a None channel (needed for
        # discovery) but no data out of it.
        rogue = Client(sim.url, timeout=5)
        await rogue.connect_socket()
        try:
            await rogue.send_hello()
            await rogue.open_secure_channel()
            with pytest.raises(ua.UaError):
                await rogue.create_session()  # the asyncua client itself gives up here
            await rogue.activate_session()  # asyncua lets it activate; the data stays shut
            read = ua.ReadParameters()
            read.NodesToRead = [
                ua.ReadValueId(
                    NodeId=ua.NodeId("Filler.Frozen", sim.namespace_index),
                    AttributeId=ua.AttributeIds.Value,
                )
            ]
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await rogue.uaclient.read(read)
        finally:
            rogue.disconnect_socket()

        for policy in (SecurityPolicyBasic256Sha256, SecurityPolicyAes128Sha256RsaOaep):
            client = Client(sim.url, timeout=5)
            client.application_uri = CLIENT_URI
            await client.set_security(
                policy,
                str(client_cert),
                str(client_key),
                server_certificate=str(sim.server_certificate_path),
                mode=ua.MessageSecurityMode.SignAndEncrypt,
            )
            async with client:
                idx = await client.get_namespace_index(NAMESPACE_URI)
                assert await filler(client, idx, "Frozen").read_value() == 42.5

        # The certificate is made once and reused.
        der = sim.server_certificate_path.read_bytes()
        await sim.restart()
        assert sim.server_certificate_path.read_bytes() == der


async def test_bench_items_change_between_reads() -> None:
    async with (
        OpcUaPlc(tick=0, bench_items=300, bench_interval=0.1) as sim,
        connected(sim.url) as client,
    ):
        idx = sim.namespace_index
        children = await client.get_node(ua.NodeId("Bench", idx)).get_children()
        assert len(children) == 300
        first = client.get_node(ua.NodeId("Bench.Item00000", idx))
        last = client.get_node(ua.NodeId("Bench.Item00299", idx))
        before = (await first.read_value(), await last.read_value())

        async def both_changed() -> bool:
            now = (await first.read_value(), await last.read_value())
            return now[0] != before[0] and now[1] != before[1]

        await until(both_changed, 10, "bench items to change")

        async def measured() -> bool:
            return sim.stats.bench_writes_per_s > 0

        await until(measured, 10, "a bench rate in stats")
        assert sim.stats.bench_writes >= 300
        assert sim.stats.bench_write_capacity_per_s > 0


def test_constructor_and_cli_validation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="pki_dir"):
        OpcUaPlc(security="sign_encrypt")
    with pytest.raises(SystemExit) as exc:
        _parse_args(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--port", "--security", "--pki-dir", "--namespace-shift", "--bench-items"):
        assert option in help_text
    with pytest.raises(SystemExit):
        _parse_args(["--security", "sign_encrypt"])
    args = _parse_args(["--port", "4841", "--namespace-shift", "2", "--tick", "0.5"])
    assert (args.port, args.namespace_shift, args.tick) == (4841, 2, 0.5)


def test_security_both_and_operation_limits_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="security='both' needs pki_dir"):
        OpcUaPlc(security="both")
    both = OpcUaPlc(security="both", pki_dir=tmp_path)
    assert both.server_certificate_path == tmp_path / "server_cert.der"
    with pytest.raises(ValueError, match="unknown operation limit 'MaxNodesPerWrite'"):
        OpcUaPlc(operation_limits={"MaxNodesPerWrite": 5})
    with pytest.raises(ValueError, match="MaxNodesPerRead must be an integer >= 1"):
        OpcUaPlc(operation_limits={"MaxNodesPerRead": 0})
    limited = OpcUaPlc(operation_limits={"MaxNodesPerRead": 5}, advertise_limits=False)
    assert (limited.operation_limits, limited.advertise_limits) == ({"MaxNodesPerRead": 5}, False)
    assert set(limited.stats.request_sizes) == set(OPERATION_LIMITS.values())

    args = _parse_args(
        [
            "--security",
            "both",
            "--pki-dir",
            str(tmp_path),
            "--operation-limit",
            "MaxNodesPerRead=10",
            "--operation-limit",
            "MaxMonitoredItemsPerCall=7",
        ]
    )
    assert args.security == "both"
    assert args.operation_limits == {"MaxNodesPerRead": 10, "MaxMonitoredItemsPerCall": 7}
    assert not args.unadvertised_limits
    assert _parse_args([]).operation_limits == {}
    for bad in (
        ["--security", "both"],
        ["--operation-limit", "MaxNodesPerWrite=3"],
        ["--operation-limit", "MaxNodesPerRead=0"],
        ["--operation-limit", "MaxNodesPerRead"],
    ):
        with pytest.raises(SystemExit):
            _parse_args(bad)
    errors = capsys.readouterr().err
    assert "--security both needs --pki-dir" in errors
    assert "unknown name 'MaxNodesPerWrite'" in errors
    assert errors.count("N must be an integer >= 1") == 2
