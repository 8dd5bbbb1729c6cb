"""MqttClient against a real Mosquitto: delivery, acknowledgements, status, will, outages."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import edgegw.sinks.mqtt.client as mqtt_module
from edgegw.errors import SinkError
from edgegw.sinks.mqtt.client import MqttClient
from edgegw.sinks.mqtt.properties import PackedProperties, encode_publish, pack_publish_properties
from edgegw.sinks.mqtt.reasons import reason_text
from edgegw.sinks.mqtt.settings import MqttSettings
from tests.support.broker import Mosquitto, running_mosquitto
from tests.support.subscriber import Received, Subscriber
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

STATUS = "acme/plant1/gw/ipc-line1/status"


class Acks:
    """Records on_ack calls; wakes a waiter on each one."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[int] = set()
        self.event = asyncio.Event()

    def __call__(self, token: int, rc: int) -> None:
        self.calls.append((token, rc))
        self.threads.add(threading.get_ident())
        self.event.set()

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.calls) < n:
                self.event.clear()
                await self.event.wait()


def settings(broker: Mosquitto | int, **overrides: object) -> MqttSettings:
    port = broker if isinstance(broker, int) else broker.port
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": f"edgegw-test-{uuid.uuid4().hex[:8]}",
        "status_topic": STATUS,
        "connect_timeout": 5.0,
    }
    values.update(overrides)
    return MqttSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def subscriber_factory(mosquitto: Mosquitto) -> Iterator[Callable[..., Subscriber]]:
    started: list[Subscriber] = []

    def make(topic_filter: str = "#", **kwargs: object) -> Subscriber:
        sub = Subscriber(mosquitto.port, topic_filter, **kwargs).start()  # type: ignore[arg-type]
        started.append(sub)
        return sub

    yield make
    for sub in started:
        sub.stop()


async def publish_windowed(
    client: MqttClient,
    acks: Acks,
    n: int,
    *,
    window: int = 100,
    qos: int = 1,
    topic: Callable[[int], str] = lambda i: f"acme/plant1/line1/press-01/tag{i % 10}",
) -> None:
    """Publish n messages, tokens 0..n-1, never more than `window` unacknowledged."""
    sent = 0
    base = len(acks.calls)
    async with asyncio.timeout(30):
        while len(acks.calls) - base < n:
            while sent < n and client.in_flight < window:
                client.publish(
                    topic(sent),
                    b'{"seq": %d}' % sent,
                    qos=qos,
                    token=sent,
                    user_properties=(
                        ("id", f"id-{sent}"),
                        ("schema", "edgegw.telemetry/1"),
                        ("trace", f"trace-{sent}"),
                    ),
                )
                sent += 1
            acks.event.clear()
            await acks.event.wait()


def status_payloads(messages: Sequence[Received]) -> list[bytes]:
    return [m.payload for m in messages if m.topic == STATUS]


# -- delivery ------------------------------------------------------------------------------------


async def test_2000_qos1_messages_are_acked_and_delivered_with_properties(
    mosquitto: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> None:
    sub = subscriber_factory("acme/plant1/line1/#")
    acks = Acks()
    client = MqttClient(settings(mosquitto), on_ack=acks)
    await client.connect()
    assert client.connected

    await publish_windowed(client, acks, 2000, window=100)

    assert sorted(token for token, _ in acks.calls) == list(range(2000))  # each exactly once
    assert {rc for _, rc in acks.calls} == {0}
    assert acks.threads == {threading.get_ident()}  # on the event loop's thread
    assert client.in_flight == 0
    got = await sub.wait_count(2000)
    assert len(got) == 2000
    by_seq = {int(m.payload.split(b":")[1].strip(b" }")): m for m in got}
    assert sorted(by_seq) == list(range(2000))
    m = by_seq[1234]
    assert m.user_properties == (
        ("id", "id-1234"),
        ("schema", "edgegw.telemetry/1"),
        ("trace", "trace-1234"),
    )
    assert m.content_type == "application/json"
    assert m.qos == 1
    await client.close()


async def test_qos0_acks_once_written(
    mosquitto: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> None:
    sub = subscriber_factory("acme/plant1/line1/#", qos=0)
    acks = Acks()
    client = MqttClient(settings(mosquitto), on_ack=acks)
    await client.connect()
    await publish_windowed(client, acks, 200, qos=0)
    assert sorted(acks.calls) == [(i, 0) for i in range(200)]
    await sub.wait_count(200)
    await client.close()


async def test_no_matching_subscriber_counts_as_delivered(mosquitto: Mosquitto) -> None:
    acks = Acks()
    client = MqttClient(settings(mosquitto), on_ack=acks)
    await client.connect()
    client.publish("nobody/listens", b"{}", qos=1, token=7)
    await acks.wait_count(1)
    assert acks.calls == [(7, 0)]  # MQTT 5 PUBACK 0x10 "no matching subscribers" is success
    await client.close()


async def test_mqtt_311_publishes_without_properties(
    mosquitto: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> None:
    sub = subscriber_factory("#", protocol="3.1.1")
    acks = Acks()
    client = MqttClient(settings(mosquitto, protocol="3.1.1"), on_ack=acks)
    await client.connect()
    await publish_windowed(client, acks, 300)
    assert sorted(acks.calls) == [(i, 0) for i in range(300)]
    got = await sub.wait_for(
        lambda ms: len([m for m in ms if m.topic != STATUS]) >= 300, what="300 data messages"
    )
    assert status_payloads(got)[0] == b"online"
    data = [m for m in got if m.topic != STATUS]
    assert all(m.user_properties == () and m.content_type is None for m in data)
    await client.close()
    await sub.wait_for(lambda ms: status_payloads(ms)[-1:] == [b"offline"], what="offline")


# -- status: birth, graceful offline, last will --------------------------------------------------


async def test_retained_online_after_connect_and_offline_after_close(
    mosquitto: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> None:
    client = MqttClient(settings(mosquitto), on_ack=Acks())
    await client.connect()
    # A subscriber arriving later sees the retained birth message.
    late = subscriber_factory(STATUS)
    got = await late.wait_count(1)
    assert (got[0].payload, got[0].retain) == (b"online", True)

    await client.close()
    assert not client.connected
    got = await late.wait_count(2)
    assert got[1].payload == b"offline"
    after = subscriber_factory(STATUS)
    got = await after.wait_count(1)
    assert (got[0].payload, got[0].retain) == (b"offline", True)
    assert await client.wait_disconnected() == "closed by the gateway"

    await client.close()  # twice: harmless
    with pytest.raises(SinkError, match="closed"):
        client.publish("t", b"{}", qos=1, token=1)


async def test_close_and_publish_before_connect() -> None:
    client = MqttClient(settings(1883), on_ack=Acks())
    await client.close()
    assert not client.connected
    assert client.in_flight == 0
    assert await client.wait_disconnected() == "not connected"
    with pytest.raises(SinkError, match="not connected"):
        client.publish("t", b"{}", qos=1, token=1)


async def test_last_will_offline_when_the_client_vanishes(
    mosquitto: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> None:
    sub = subscriber_factory(STATUS)
    client = MqttClient(settings(mosquitto), on_ack=Acks())
    await client.connect()
    await sub.wait_for(lambda ms: status_payloads(ms) == [b"online"], what="online")

    # Kill the TCP connection under the client, without an MQTT DISCONNECT.
    sock = client._link.paho.socket()  # type: ignore[union-attr]
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)

    got = await sub.wait_for(lambda ms: status_payloads(ms)[-1:] == [b"offline"], what="will")
    assert status_payloads(got) == [b"online", b"offline"]
    reason = await asyncio.wait_for(client.wait_disconnected(), 5)
    assert "lost" in reason
    assert not client.connected
    await client.close()


# -- outages and refusals ------------------------------------------------------------------------


async def test_broker_stop_is_noticed_then_reconnect_works(mosquitto: Mosquitto) -> None:
    acks = Acks()
    client = MqttClient(settings(mosquitto), on_ack=acks)
    await client.connect()
    for token in range(50):
        client.publish("acme/t", b"{}", qos=1, token=token)
    assert client.in_flight == 50

    mosquitto.stop()
    reason = await asyncio.wait_for(client.wait_disconnected(), 5)
    assert str(mosquitto.port) in reason
    assert not client.connected
    assert client.in_flight == 0  # un-acked tokens are forgotten: the outbox re-sends them
    acked_before_loss = len(acks.calls)
    with pytest.raises(SinkError, match="not connected"):
        client.publish("acme/t", b"{}", qos=1, token=99)
    with pytest.raises(SinkError, match=f"connection refused: 127.0.0.1:{mosquitto.port}"):
        await client.connect()

    mosquitto.start()  # same port
    await client.connect()
    client.publish("acme/t", b"{}", qos=1, token=100)
    await acks.wait_count(acked_before_loss + 1)
    assert acks.calls[-1] == (100, 0)
    await client.close()


async def test_connect_to_a_closed_port_names_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    client = MqttClient(settings(port), on_ack=Acks())
    with pytest.raises(SinkError, match=f"connection refused: 127.0.0.1:{port}"):
        await client.connect()
    assert not client.connected


async def test_unresolvable_host() -> None:
    client = MqttClient(settings(1883, host="no-such-host.invalid"), on_ack=Acks())
    with pytest.raises(SinkError, match=r"cannot resolve broker host 'no-such-host\.invalid'"):
        await client.connect()


async def test_no_connack_within_the_timeout() -> None:
    async with ScriptedBroker({}, silent=True) as broker:
        client = MqttClient(settings(broker.port, connect_timeout=0.5), on_ack=Acks())
        with pytest.raises(SinkError, match=r"no CONNACK within 0\.5 s"):
            await client.connect()
        assert not client.connected


async def test_hang_up_before_connack() -> None:
    async with ScriptedBroker({}, hang_up=True) as broker:
        client = MqttClient(settings(broker.port), on_ack=Acks())
        with pytest.raises(SinkError, match="closed the connection before CONNACK"):
            await client.connect()
        assert not client.connected


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_broker_refusal_is_put_in_words(protocol: str) -> None:
    broker = Mosquitto(allow_anonymous=False)
    broker.start()
    try:
        client = MqttClient(settings(broker, protocol=protocol), on_ack=Acks())
        with pytest.raises(SinkError, match=r"refused: not authorized \(0x87\)"):
            await client.connect()
        assert not client.connected
    finally:
        broker.cleanup()


async def test_second_client_with_the_same_id_takes_the_session_over(
    mosquitto: Mosquitto,
) -> None:
    same = settings(mosquitto, client_id="ipc-line1")
    first = MqttClient(same, on_ack=Acks())
    second = MqttClient(same, on_ack=Acks())
    await first.connect()
    await second.connect()
    reason = await asyncio.wait_for(first.wait_disconnected(), 5)
    # Mosquitto 2.0 closes the old connection without DISCONNECT 0x8E: the reason says what
    # it may be (a broker that sends 0x8E: see test_session_takeover_reason_code_0x8E).
    assert "same client id 'ipc-line1'" in reason
    assert "took the session over" in reason
    assert "unique per gateway" in reason
    assert second.connected
    await second.close()
    await first.close()


@pytest.mark.timeout(20)
async def test_hung_broker_is_detected_by_keepalive(mosquitto: Mosquitto) -> None:
    client = MqttClient(settings(mosquitto, keepalive=1), on_ack=Acks())
    await client.connect()
    mosquitto.pause()
    try:
        reason = await asyncio.wait_for(client.wait_disconnected(), 8)
    finally:
        mosquitto.resume()
    assert "keep-alive (1 s)" in reason
    await client.close()


# -- refusals by a real broker: Mosquitto with an acl_file ---------------------------------------

DENIED = "acme/plant1/line1/press-01/secret"
ACL = "topic readwrite acme/#\ntopic deny acme/plant1/line1/press-01/secret\n"


@pytest.fixture
def acl_broker() -> Iterator[Mosquitto]:
    """Anonymous clients may use acme/#, except DENIED (neither publish nor receive)."""
    with running_mosquitto(acl=ACL) as broker:
        yield broker


async def test_a_denied_publish_gets_puback_0x87_from_mosquitto(acl_broker: Mosquitto) -> None:
    with Subscriber(acl_broker.port, "acme/#") as sub:
        acks = Acks()
        client = MqttClient(settings(acl_broker), on_ack=acks)
        await client.connect()
        topics = ["acme/ok", DENIED, "acme/ok", DENIED, "elsewhere/not/in/the/acl"]
        for token, topic in enumerate(topics):
            client.publish(topic, b'{"n": %d}' % token, qos=1, token=token)
        await acks.wait_count(len(topics))
        # A refusal in the PUBACK, not a delivery; the connection stays up for the rest.
        assert sorted(acks.calls) == [(0, 0), (1, 0x87), (2, 0), (3, 0x87), (4, 0x87)]
        assert client.connected
        assert client.in_flight == 0
        client.publish("acme/ok", b'{"n": 5}', qos=1, token=5)
        await acks.wait_count(6)
        assert acks.calls[-1] == (5, 0)
        await until(
            lambda: len([m for m in sub.messages if m.topic == "acme/ok"]) == 3, 10, "3 on acme/ok"
        )
        assert [m.payload for m in sub.messages if m.topic != STATUS] == [
            b'{"n": 0}',
            b'{"n": 2}',
            b'{"n": 5}',
        ]
        await client.close()


async def test_mqtt_311_cannot_see_a_denied_publish(acl_broker: Mosquitto) -> None:
    """Why the gateway speaks MQTT 5 by default: Mosquitto 2.0 answers a denied QoS 1 publish
    of an MQTT 3.1.1 client with an ordinary PUBACK (3.1.1 has no reason codes), so the
    message is dropped while the client counts it as delivered."""
    with Subscriber(acl_broker.port, "acme/#") as sub:
        acks = Acks()
        client = MqttClient(settings(acl_broker, protocol="3.1.1"), on_ack=acks)
        await client.connect()
        client.publish(DENIED, b'{"n": 0}', qos=1, token=0)
        client.publish("acme/ok", b'{"n": 1}', qos=1, token=1)
        await acks.wait_count(2)
        assert sorted(acks.calls) == [(0, 0), (1, 0)]
        await until(lambda: any(m.topic == "acme/ok" for m in sub.messages), 10, "acme/ok")
        assert not [m for m in sub.messages if m.topic == DENIED]
        await client.close()


# -- scripted broker: reason codes Mosquitto does not produce -----------------------------------
# Measured on Mosquitto 2.0.11: 0x87 comes from an acl_file (tested above, for real); an invalid
# UTF-8 payload flagged PayloadFormatIndicator=1 is accepted (0x10, never 0x99); no publish of a
# QoS 1 client is answered with 0x97; an oversized one (message_size_limit) gets 0x95, which is
# not a PUBACK reason code in MQTT 5 (paho drops the connection as a malformed packet). So
# 0x80, 0x97 and 0x99 come from this script.


class ScriptedBroker:
    """Just enough MQTT 5 on a loopback port to script a broker's answers: CONNACK success,
    PUBACK with the reason code `puback_rc[topic]` (default 0x10, no subscribers), and on a
    publish to "kick" a DISCONNECT with reason 0x8E and a reason string. `silent`: accept the
    TCP connection and never answer; `hang_up`: close it on CONNECT."""

    def __init__(
        self,
        puback_rc: dict[str, int],
        *,
        silent: bool = False,
        hang_up: bool = False,
        split_pubacks: bool = False,
    ) -> None:
        self.puback_rc = puback_rc
        self.silent = silent
        self.hang_up = hang_up
        self.split_pubacks = split_pubacks  # each PUBACK in two TCP writes, a pause between
        self.server: asyncio.Server | None = None
        self.sessions: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> ScriptedBroker:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.sessions:
            task.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            while self.silent:
                if not await reader.read(1024):
                    return
            while True:
                first = (await reader.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first & 0xF0
                if kind == 0x10 and self.hang_up:
                    break
                if kind == 0x10:  # CONNECT -> CONNACK success, no properties
                    writer.write(b"\x20\x03\x00\x00\x00")
                elif kind == 0x30:  # PUBLISH
                    topic_len = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + topic_len].decode()
                    if topic == "kick":
                        why = b"another client took over"
                        props = b"\x1f" + len(why).to_bytes(2, "big") + why
                        rest = b"\x8e" + bytes((len(props),)) + props
                        writer.write(b"\xe0" + bytes((len(rest),)) + rest)
                        await writer.drain()
                        break
                    if (first >> 1) & 3:
                        mid = body[2 + topic_len : 4 + topic_len]
                        rc = self.puback_rc.get(topic, 0x10)
                        if topic == "why":  # a reason string property, as a broker may add
                            why = b"not on this topic"
                            props = b"\x1f" + len(why).to_bytes(2, "big") + why
                            rest = mid + bytes((rc, len(props))) + props
                            puback = b"\x40" + bytes((len(rest),)) + rest
                        else:
                            puback = b"\x40\x03" + mid + bytes((rc,))
                        if self.split_pubacks:
                            writer.write(puback[:3])
                            await writer.drain()
                            await asyncio.sleep(0.01)
                            puback = puback[3:]
                        writer.write(puback)
                elif kind == 0xE0:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_puback_reason_codes_reach_on_ack() -> None:
    async with ScriptedBroker({"error": 0x80, "full": 0x97, "bad": 0x99}) as broker:
        acks = Acks()
        client = MqttClient(settings(broker.port, status_topic=None), on_ack=acks)
        await client.connect()
        for token, topic in enumerate(["ok", "error", "full", "bad", "ok"]):
            client.publish(topic, b"{}", qos=1, token=token)
        await acks.wait_count(5)
        assert sorted(acks.calls) == [(0, 0), (1, 0x80), (2, 0x97), (3, 0x99), (4, 0)]
        assert reason_text(0x97) == "quota exceeded (0x97)"
        await client.close()


async def test_pubacks_cut_across_reads_and_with_properties_are_all_counted() -> None:
    # The client reads PUBACKs itself (not through paho): a PUBACK that arrives in two pieces
    # must wait for its rest, and one with properties (a reason string) still counts.
    async with ScriptedBroker({"why": 0x87, "ok": 0x00}, split_pubacks=True) as broker:
        acks = Acks()
        client = MqttClient(settings(broker.port, status_topic=None), on_ack=acks)
        await client.connect()
        topics = ["ok", "why", "ok"] * 10
        for token, topic in enumerate(topics):
            client.publish(topic, b"{}", qos=1, token=token)
        await acks.wait_count(len(topics))
        expected = [(token, 0x87 if topic == "why" else 0) for token, topic in enumerate(topics)]
        assert sorted(acks.calls) == expected
        assert client.in_flight == 0
        await client.close()


async def test_session_takeover_reason_code_0x8E() -> None:
    async with ScriptedBroker({}) as broker:
        client = MqttClient(
            settings(broker.port, client_id="ipc-line1", status_topic=None), on_ack=Acks()
        )
        await client.connect()
        client.publish("kick", b"{}", qos=1, token=1)
        reason = await asyncio.wait_for(client.wait_disconnected(), 5)
        assert reason == (
            f"broker 127.0.0.1:{broker.port} disconnected us: session taken over (0x8E): "
            "another client connected with the same client id 'ipc-line1'; client ids must be "
            "unique per gateway (broker says: another client took over)"
        )
        assert client.in_flight == 0
        await client.close()


# -- guards and encoding -------------------------------------------------------------------------


async def test_refuses_beyond_the_outstanding_limit(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_module, "MAX_OUTSTANDING", 5)
    acks = Acks()
    client = MqttClient(settings(mosquitto), on_ack=acks)
    await client.connect()
    for token in range(5):  # no await in between: no PUBACK can be processed yet
        client.publish("acme/t", b"{}", qos=1, token=token)
    with pytest.raises(SinkError, match="5 publishes unacknowledged"):
        client.publish("acme/t", b"{}", qos=1, token=5)
    await acks.wait_count(5)
    client.publish("acme/t", b"{}", qos=1, token=5)  # room again
    await acks.wait_count(6)
    await client.close()


@pytest.mark.parametrize(
    ("user_properties", "content_type"),
    [
        ((("id", "ä-1"), ("schema", "edgegw.event/1"), ("trace", "t")), "application/json"),
        ((), "text/plain"),
        ((("k", "v" * 300),), None),
        ((), None),
    ],
)
def test_property_encoding_matches_paho(
    user_properties: tuple[tuple[str, str], ...], content_type: str | None
) -> None:
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if user_properties:
        reference.UserProperty = list(user_properties)
    if content_type is not None:
        reference.ContentType = content_type
    assert pack_publish_properties(user_properties, content_type) == reference.pack()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("protocol", "properties"),
    [
        (
            MQTTProtocolVersion.MQTTv5,
            pack_publish_properties([("id", "ä" * 90)], "application/json"),
        ),
        (MQTTProtocolVersion.MQTTv5, pack_publish_properties([], None)),
        (MQTTProtocolVersion.MQTTv311, None),
    ],
)
def test_publish_packets_are_the_bytes_paho_would_send(
    protocol: MQTTProtocolVersion, properties: bytes | None
) -> None:
    sent: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    ours, theirs = socket.socketpair()
    try:
        client._sock = ours  # paho builds a PUBLISH only for a connected client
        client._packet_queue = lambda _cmd, packet, *_rest: sent.append(bytes(packet))  # type: ignore[method-assign]
        packed = None if properties is None else PackedProperties(properties)
        payload = b"x" * 20_000  # a remaining length of three bytes
        client._send_publish(300, "a/b/ä".encode(), payload, 1, False, False, None, packed)
        assert sent == [encode_publish("a/b/ä", 300, properties, payload)]
    finally:
        client._sock = None
        ours.close()
        theirs.close()


def test_pubacks_of_our_messages_are_taken_whole_from_the_read_buffer() -> None:
    client = mqtt_module._ReadAheadClient(CallbackAPIVersion.VERSION2)
    taken: list[tuple[int, int]] = []

    def on_puback(mid: int, rc: int) -> bool:
        if mid == 9:  # a message paho published (the status): paho reads it
            return False
        taken.append((mid, rc))
        return True

    client.edgegw_on_puback = on_puback
    buffer = client._edgegw_read_ahead
    buffer += b"\x40\x02\x00\x01"  # MQTT 3.1.1, or MQTT 5 success without a reason code
    buffer += b"\x40\x03\x00\x02\x10"  # MQTT 5: no matching subscribers
    buffer += b"\x40\x06\x00\x03\x87\x02\x01\x01"  # MQTT 5 with a property block
    buffer += b"\x40\x02\x00"  # a PUBACK whose last byte has not arrived
    assert client._take_pubacks() == (mqtt_module._PART, True)
    assert taken == [(1, 0), (2, 0x10), (3, 0x87)]
    assert bytes(buffer) == b"\x40\x02\x00"
    buffer += b"\x04\x40\x02\x00\x09\xd0\x00"  # its last byte, paho's PUBACK, a PINGRESP
    assert client._take_pubacks() == (mqtt_module._FOR_PAHO, True)
    assert taken[-1] == (4, 0)
    assert bytes(buffer) == b"\x40\x02\x00\x09\xd0\x00"  # left to paho, in order
    buffer.clear()
    buffer += b"\xd0\x00"
    assert client._take_pubacks() == (mqtt_module._FOR_PAHO, False)


class _OnePacketPerRead:
    """A socket that returns one packet per recv(), as TLS does with a broker that writes
    each packet in a record of its own."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = packets

    def recv(self, _size: int) -> bytes:
        if not self.packets:
            raise BlockingIOError
        return self.packets.pop(0)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("count", [1, 16, 17, 32, 64, 128, 130])
async def test_every_puback_is_read_when_each_arrives_in_a_read_of_its_own(count: int) -> None:
    acks = Acks()
    link = mqtt_module._Link(settings(1883, status_topic=None), acks)
    client = link.paho
    client.edgegw_on_puback = link._on_puback
    link.tokens = {mid: mid * 10 for mid in range(1, count + 1)}
    pubacks = [b"\x40\x02" + mid.to_bytes(2, "big") for mid in range(1, count + 1)]
    socket_ = _OnePacketPerRead(pubacks)
    client._sock = socket_  # type: ignore[assignment]
    try:
        while socket_.packets:  # the event loop calls back while the socket holds bytes
            link._on_readable()
        # ...and not after: nothing may be left unread in the client's buffer then
        assert sorted(acks.calls) == [(mid * 10, 0) for mid in range(1, count + 1)]
        assert not link.tokens
        assert client.read_ahead() == 0
    finally:
        client._sock = None


def test_reason_text() -> None:
    assert reason_text(0x87) == "not authorized (0x87)"
    assert reason_text(0x97) == "quota exceeded (0x97)"
    assert "unique per gateway" in reason_text(0x8E)
    assert reason_text(0xFE).endswith("(0xFE)")
