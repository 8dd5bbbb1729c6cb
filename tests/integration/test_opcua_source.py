"""The OPC UA source against the filling-line simulator: types, timestamps, quality,
server restarts with shifted namespaces, cut links, and security."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from edgegw.sources.opcua.config import OpcUaSourceConfig
from edgegw.sources.opcua.driver import OpcUaSource
from edgegw.sources.opcua.pki import create_application_certificate, load_certificate, thumbprint
from simulators.opcua_plc import NAMESPACE_URI, TYPE_VALUES, OpcUaPlc
from tests.support.collector import Collector
from tests.support.proxy import CuttableProxy
from tests.support.wait import until

NSU = f"nsu={NAMESPACE_URI};s="
EXPECTED_JSON: dict[str, Any] = {
    **{k: v for k, v in TYPE_VALUES.items() if isinstance(v, bool | int | float | str | list)},
    "DateTime": "2026-01-02T03:04:05.123456Z",
    "ByteString": "AQI=",
    "Guid": "6f1c2a4e-9b3d-4e8a-a1f0-5c7d2e9b8a31",
    "LocalizedText": "Abfüllanlage",
}


def source_config(url: str, tags: list[dict[str, Any]], **extra: Any) -> OpcUaSourceConfig:
    data: dict[str, Any] = {
        "name": "filler",
        "protocol": "opcua",
        "url": url,
        "interval": "100ms",
        "timeout": "2s",
        "keepalive": "500ms",
        "retry": "1s",
        "tags": tags,
        **extra,
    }
    return OpcUaSourceConfig.model_validate(data)


@pytest.fixture
def plc(opcua_plc: OpcUaPlc) -> OpcUaPlc:
    return opcua_plc


@contextlib.asynccontextmanager
async def collecting(config: OpcUaSourceConfig) -> AsyncIterator[Collector[OpcUaSource]]:
    collector = Collector(OpcUaSource(config)).start()
    try:
        yield collector
    finally:
        await collector.stop()


TYPE_TAGS = [{"name": name, "node": f"{NSU}Types.{name}"} for name in EXPECTED_JSON]


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_every_type_keeps_its_json_kind(plc: OpcUaPlc, mode: str) -> None:
    async with collecting(source_config(plc.url, TYPE_TAGS, mode=mode)) as got:
        await until(lambda: all(got.latest(name) for name in EXPECTED_JSON), 10, "every type tag")
        for name, expected in EXPECTED_JSON.items():
            reading = got.latest(name)
            assert reading is not None
            assert (reading.quality, reading.reason) == ("good", None), name
            assert reading.value == expected, name
            assert type(reading.value) is type(expected), name


async def test_source_timestamp_is_used_when_the_server_gives_one(plc: OpcUaPlc) -> None:
    tags = [{"name": "temperature", "node": f"{NSU}Filler.Temperature"}]
    async with collecting(source_config(plc.url, tags)) as got:
        await until(lambda: got.latest("temperature") is not None, 10, "temperature")
        reading = got.latest("temperature")
        assert reading is not None
        # The simulator stamps Temperature 2 s before it writes it.
        assert 1.5 < reading.received_ts - reading.source_ts < 3.0


async def test_bad_status_is_never_good_and_recovers(plc: OpcUaPlc) -> None:
    tags = [
        {"name": "sensor", "node": f"{NSU}Filler.Sensor"},
        {"name": "speed", "node": f"{NSU}Filler.Speed"},
    ]
    async with collecting(source_config(plc.url, tags)) as got:
        await until(lambda: got.latest("sensor") is not None, 10, "first sensor value")
        plc.faults.sensor_bad = True
        await until(
            lambda: (r := got.latest("sensor")) is not None and r.quality == "bad", 10, "bad"
        )
        bad = got.latest("sensor")
        assert bad is not None
        assert (bad.value, bad.reason) == (None, "BadSensorFailure")
        plc.faults.sensor_bad = False
        await until(
            lambda: (r := got.latest("sensor")) is not None and r.quality == "good", 10, "good"
        )
        assert all(r.value is None for r in got.readings if r.quality == "bad")


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_missing_node_marks_only_its_tag_bad_names_it_and_is_retried(
    plc: OpcUaPlc, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw.sources")
    tags = [
        {"name": "frozen", "node": f"{NSU}Filler.Frozen"},
        {"name": "ghost", "node": f"{NSU}Filler.Ghost"},
        {"name": "elsewhere", "node": "nsu=urn:not:there;s=X"},
    ]
    async with collecting(source_config(plc.url, tags, mode=mode)) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "frozen")
        await until(lambda: len([r for r in got.readings if r.tag == "ghost"]) >= 2, 10, "retry")
        frozen, ghost, elsewhere = (got.latest(t) for t in ("frozen", "ghost", "elsewhere"))
        assert frozen is not None
        assert (frozen.value, frozen.quality) == (42.5, "good")
        assert ghost is not None
        assert ghost.quality == "bad"
        no_node = (
            f"the server has no node {NSU}Filler.Ghost (BadNodeIdUnknown); check the id with "
            "edgegw browse"
        )
        assert ghost.reason == no_node
        assert elsewhere is not None
        assert elsewhere.quality == "bad"
        assert elsewhere.reason is not None
        assert "urn:not:there" in elsewhere.reason
        # Named in the source's books (status, /healthz, /metrics read them) and the log.
        status = got.source.status
        assert status.connected
        assert status.bad_tags == {"ghost": no_node, "elsewhere": elsewhere.reason}
        # Still named, and not said again, after the unresolved one was retried twice (poll
        # mode once cleared and named the missing node again at every retry).
        source = got.source
        assert isinstance(source, OpcUaSource)
        retried = source.retries
        await until(lambda: source.retries >= retried + 2, 20, "two retries")
        await until(lambda: sum(r.tag == "ghost" for r in got.readings) >= 4, 10, "ghost again")
        assert status.bad_tags == {"ghost": no_node, "elsewhere": elsewhere.reason}
    named = [r.getMessage() for r in caplog.records if "tag cannot be read" in r.getMessage()]
    assert any(f"tag=ghost address={NSU}Filler.Ghost reason={no_node}" in line for line in named), (
        named
    )
    assert any("tag=elsewhere address=nsu=urn:not:there;s=X" in line for line in named), named
    assert len(named) == 2, "said once per tag, not at every retry"
    assert not [r for r in caplog.records if "tag reads again" in r.getMessage()]


async def test_a_refused_connection_names_the_address(unused_tcp_port: int) -> None:
    url = f"opc.tcp://127.0.0.1:{unused_tcp_port}/x"
    source = OpcUaSource(source_config(url, [{"name": "a", "node": f"{NSU}Filler.Frozen"}]))
    batches = source.batches()
    try:
        batch = await asyncio.wait_for(anext(batches), 30)
    finally:
        await batches.aclose()
    assert {r.reason for r in batch} == {
        f"cannot connect to 127.0.0.1:{unused_tcp_port}: connection refused"
    }
    assert source.status.last_error == batch[0].reason


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_server_restart_with_shifted_namespaces_resumes_by_itself(
    plc: OpcUaPlc, mode: str
) -> None:
    tags = [
        {"name": "state", "node": f"{NSU}Filler.State"},
        {"name": "frozen", "node": f"{NSU}Filler.Frozen"},
        {"name": "count", "node": f"{NSU}Filler.GoodCount"},
    ]
    async with collecting(source_config(plc.url, tags, mode=mode)) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "first value")
        before = plc.namespace_index
        await plc.restart(namespace_shift=3)
        assert plc.namespace_index == before + 3
        restarted = time.time()
        await until(lambda: got.good_since("frozen", restarted), 15, "data after the restart")
        recovered = got.good_since("frozen", restarted)[0].received_ts - restarted
        # Right values after the shift: the old index now names a dummy namespace.
        assert all(r.value == 42.5 for r in got.good_since("frozen", restarted))
        assert recovered < 15
        assert got.source.status.connected


async def test_cut_link_resumes_and_marks_tags_bad_meanwhile(plc: OpcUaPlc) -> None:
    proxy = await CuttableProxy(plc.port).start()
    url = plc.url.replace(f":{plc.port}/", f":{proxy.port}/")
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    try:
        async with collecting(source_config(url, tags)) as got:
            await until(lambda: got.latest("frozen") is not None, 10, "first value")
            proxy.cut()
            await until(
                lambda: (r := got.latest("frozen")) is not None and r.quality == "bad",
                10,
                "bad while cut",
            )
            proxy.heal()
            healed = time.time()
            await until(lambda: got.good_since("frozen", healed), 15, "data after the cut")
    finally:
        await proxy.stop()


# --- security -------------------------------------------------------------------------------


@pytest.fixture
async def secure_plc(tmp_path: Path) -> AsyncIterator[OpcUaPlc]:
    sim = OpcUaPlc(security="sign_encrypt", pki_dir=tmp_path / "server-pki", tick=0.05)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
def gateway_pki(tmp_path: Path) -> tuple[Path, Path]:
    paths = create_application_certificate(tmp_path / "gw-pki", gateway_id="test-gw")
    return paths.certificate, paths.private_key


def secured(cert: Path, key: Path, trust: list[str], policy: str) -> dict[str, Any]:
    return {
        "policy": policy,
        "mode": "SignAndEncrypt",
        "certificate": str(cert),
        "private_key": str(key),
        "trust": trust,
    }


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes256_Sha256_RsaPss"])
async def test_sign_and_encrypt_with_a_trusted_server(
    secure_plc: OpcUaPlc, gateway_pki: tuple[Path, Path], policy: str
) -> None:
    assert secure_plc.server_certificate_path is not None
    security = secured(*gateway_pki, [str(secure_plc.server_certificate_path)], policy)
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    async with collecting(source_config(secure_plc.url, tags, security=security)) as got:
        await until(
            lambda: (r := got.latest("frozen")) is not None and r.quality == "good",
            15,
            "a value over the secure channel",
        )


async def test_an_untrusted_server_is_refused_by_thumbprint(
    secure_plc: OpcUaPlc, gateway_pki: tuple[Path, Path], tmp_path: Path
) -> None:
    other = create_application_certificate(tmp_path / "other", gateway_id="someone-else")
    security = secured(*gateway_pki, [str(other.certificate)], "Basic256Sha256")
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    assert secure_plc.server_certificate_path is not None
    server_thumb = thumbprint(load_certificate(secure_plc.server_certificate_path))
    async with collecting(source_config(secure_plc.url, tags, security=security)) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "a reading")
        reading = got.latest("frozen")
        assert reading is not None
        assert reading.quality == "bad"
        assert reading.reason is not None
        assert "not trusted" in reading.reason
        assert server_thumb in reading.reason
        assert not any(r.quality == "good" for r in got.readings)


async def test_unsecured_config_against_a_secure_only_server_says_what_to_do(
    secure_plc: OpcUaPlc,
) -> None:
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    async with collecting(source_config(secure_plc.url, tags)) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "a reading")
        reading = got.latest("frozen")
        assert reading is not None
        assert reading.reason is not None
        assert "offers no unsecured endpoint" in reading.reason
        assert "Basic256Sha256/SignAndEncrypt" in reading.reason


async def test_a_password_is_never_sent_where_the_server_cannot_protect_it(
    plc: OpcUaPlc, tmp_path: Path
) -> None:
    secret = tmp_path / "opc-password"
    secret.write_text("s3cret\n")
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    config = source_config(plc.url, tags, username="operator", password_file=str(secret))
    async with collecting(config) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "a reading")
        reading = got.latest("frozen")
        assert reading is not None
        assert reading.quality == "bad"
        assert reading.reason is not None
        assert "user name" in reading.reason or "unencrypted" in reading.reason
        assert "s3cret" not in reading.reason


# --- a server offering both secure and unsecured endpoints -------------------------------------


@pytest.fixture
async def mixed_plc(tmp_path: Path) -> AsyncIterator[OpcUaPlc]:
    """The None endpoint and the three SignAndEncrypt ones, as many PLCs ship by default."""
    sim = OpcUaPlc(security="both", pki_dir=tmp_path / "server-pki", tick=0.05)
    await sim.start()
    yield sim
    await sim.stop()


SECURE_OFFERED = (
    "Aes128_Sha256_RsaOaep/SignAndEncrypt, Aes256_Sha256_RsaPss/SignAndEncrypt, "
    "Basic256Sha256/SignAndEncrypt"
)


async def test_a_server_that_also_offers_secure_endpoints_is_not_used_unsecured_by_default(
    mixed_plc: OpcUaPlc,
) -> None:
    endpoints = await Client(mixed_plc.url, timeout=5).connect_and_get_server_endpoints()
    assert {e.SecurityMode for e in endpoints} == {
        ua.MessageSecurityMode.None_,
        ua.MessageSecurityMode.SignAndEncrypt,
    }
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    async with collecting(source_config(mixed_plc.url, tags)) as got:
        await until(lambda: got.latest("frozen") is not None, 10, "a reading")
        status = got.source.status
        reading = got.latest("frozen")
        assert reading is not None
        assert (reading.value, reading.quality) == (None, "bad")
        assert reading.reason == (
            f"cannot connect to 127.0.0.1:{mixed_plc.port}: the server also offers secure "
            f"endpoints ({SECURE_OFFERED}); configure 'security:', or write 'security: none' "
            "to connect unsecured deliberately"
        )
        assert status.last_error == reading.reason
        assert not status.connected
    assert not any(r.quality == "good" for r in got.readings)


async def test_security_none_reads_such_a_server_unsecured_deliberately(
    mixed_plc: OpcUaPlc,
) -> None:
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    config = source_config(mixed_plc.url, tags, security="none")
    async with collecting(config) as got:
        await until(
            lambda: (r := got.latest("frozen")) is not None and r.quality == "good",
            15,
            "a value over the None endpoint",
        )
        assert got.source.status.connected


async def test_such_a_server_is_read_over_its_secure_endpoint_when_configured(
    mixed_plc: OpcUaPlc, gateway_pki: tuple[Path, Path]
) -> None:
    assert mixed_plc.server_certificate_path is not None
    security = secured(*gateway_pki, [str(mixed_plc.server_certificate_path)], "Basic256Sha256")
    tags = [{"name": "frozen", "node": f"{NSU}Filler.Frozen"}]
    async with collecting(source_config(mixed_plc.url, tags, security=security)) as got:
        await until(
            lambda: (r := got.latest("frozen")) is not None and r.quality == "good",
            15,
            "a value over the secure channel",
        )
