"""Self-check of the TLS broker fixture with plain paho: mutual TLS plus a password file, as on a
plant broker. If these fail, the gateway's TLS tests cannot mean anything."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import Mosquitto
from tests.support.tls import TestPki, write_password_file
from tests.support.wait import until_blocking

pytestmark = pytest.mark.timeout(20)

USER = "edgegw"
PASSWORD = "s3cret-plant-pw"
_WAIT = 5.0  # seconds for any one broker answer


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_password_file(tmp_path_factory.mktemp("auth") / "passwd", USER, PASSWORD)


@pytest.fixture(scope="module")
def tls_broker(pki: TestPki, password_file: Path) -> Iterator[Mosquitto]:
    """Mosquitto with mutual TLS (client certificates from the test CA) and a password file."""
    broker = Mosquitto(tls=pki.broker_tls(), password_file=password_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


class Probe:
    """A paho MQTT 5 client over TLS that records its CONNACK and the messages it receives."""

    def __init__(
        self,
        broker: Mosquitto,
        *,
        ca: Path,
        cert: Path | None,
        key: Path | None,
        username: str | None = USER,
        password: str | None = PASSWORD,
    ) -> None:
        self._broker = broker
        self.connack: Any = None  # the first CONNACK's ReasonCode
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published = threading.Event()
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._messages: list[paho.MQTTMessage] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=5, max_delay=5)  # no retry storm in a test
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_publish = lambda *_: self.published.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_: self.disconnected.set()

    def _on_connect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connack is None:
            self.connack = reason
        self.connected.set()

    def _on_message(self, _c: Any, _ud: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self._messages)

    def connect(self) -> Probe:
        """TCP + TLS handshake (blocking, may raise ssl errors), then paho's network thread."""
        self.client.connect("127.0.0.1", self._broker.port, keepalive=10)
        self.client.loop_start()
        return self

    def wait_connack(self) -> Any:
        assert self.connected.wait(_WAIT), f"no CONNACK within {_WAIT} s:\n{self._broker.log()}"
        return self.connack

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_client_cert_and_password_connect_and_round_trip_qos1(
    pki: TestPki, tls_broker: Mosquitto
) -> None:
    assert tls_broker.url == f"mqtts://127.0.0.1:{tls_broker.port}"
    sub = Probe(tls_broker, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key).connect()
    pub = Probe(tls_broker, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
    try:
        assert not sub.wait_connack().is_failure
        sub.client.subscribe("tls/check/#", qos=1)
        assert sub.subscribed.wait(_WAIT), "no SUBACK"

        pub.connect()
        assert not pub.wait_connack().is_failure
        info = pub.client.publish("tls/check/a", b"over-tls", qos=1)
        info.wait_for_publish(timeout=_WAIT)  # PUBACK from the broker
        assert info.is_published()

        until_blocking(lambda: sub.messages, _WAIT, "the QoS 1 message at the subscriber")
        (msg,) = sub.messages
        assert (msg.topic, msg.payload, msg.qos) == ("tls/check/a", b"over-tls", 1)
    finally:
        pub.close()
        sub.close()


def test_wrong_password_is_refused_at_connack(pki: TestPki, tls_broker: Mosquitto) -> None:
    probe = Probe(
        tls_broker, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key, password="wrong"
    ).connect()
    try:
        reason = probe.wait_connack()
    finally:
        probe.close()
    assert reason.is_failure
    # Mosquitto 2.0.11 answers 0x87 "Not authorized" (not 0x86) to an MQTT 5 client.
    assert str(reason) in {"Bad user name or password", "Not authorized"}, str(reason)


def test_no_credentials_are_refused_at_connack(pki: TestPki, tls_broker: Mosquitto) -> None:
    probe = Probe(
        tls_broker, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key, username=None
    ).connect()
    try:
        reason = probe.wait_connack()
    finally:
        probe.close()
    assert reason.is_failure, str(reason)


def test_client_without_certificate_gets_no_connack(pki: TestPki, tls_broker: Mosquitto) -> None:
    # TLS 1.3: the client's handshake completes before the broker checks for a certificate, so
    # connect() returns and the broker then drops the connection instead of answering CONNECT.
    probe = Probe(tls_broker, ca=pki.ca.cert, cert=None, key=None).connect()
    try:
        assert probe.disconnected.wait(_WAIT), f"still connected:\n{tls_broker.log()}"
        assert probe.connack is None
    finally:
        probe.close()


def test_broker_certificate_from_an_untrusted_ca_fails_verification(
    pki: TestPki, password_file: Path
) -> None:
    rogue = Mosquitto(tls=pki.broker_tls(pki.untrusted_server), password_file=password_file)
    rogue.start()
    try:
        probe = Probe(rogue, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            probe.connect()
        assert probe.connack is None
    finally:
        rogue.cleanup()


def test_broker_certificate_for_another_host_fails_verification(
    pki: TestPki, password_file: Path
) -> None:
    wrong = Mosquitto(tls=pki.broker_tls(pki.wrong_host_server), password_file=password_file)
    wrong.start()
    try:
        probe = Probe(wrong, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            probe.connect()
    finally:
        wrong.cleanup()


def test_client_trusting_the_untrusted_ca_rejects_our_broker(
    pki: TestPki, tls_broker: Mosquitto
) -> None:
    probe = Probe(tls_broker, ca=pki.untrusted_ca.cert, cert=pki.client.cert, key=pki.client.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        probe.connect()
