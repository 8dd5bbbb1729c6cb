"""MQTT sink: paho-mqtt 2.x driven from the asyncio event loop, with no thread of its own.

How paho is driven
------------------
paho's socket callbacks (`on_socket_register_write`, `on_socket_unregister_write`,
`on_socket_close`) are wired to `loop.add_reader` / `loop.add_writer`, whose handlers call
`loop_read()` / `loop_write()`; a small task calls `loop_misc()` once a second for keep-alive.
Only the TCP connect (DNS, `connect()`, later the TLS handshake) runs in a worker thread, on a
paho client that has none of our callbacks installed yet, so nothing of ours ever runs off the
event loop.

Why it looks the way it does (paho-mqtt 2.2, measured on the target machine)
------------------------------------------------------------------------------
* paho calls `on_publish` while holding its internal locks: our callback only records
  ``(token, reason)`` in a deque; `on_ack` runs after `loop_read()`/`loop_write()` returned.
* paho builds a `Properties` object per message (27-entry tables in `__init__`, a linear scan per
  attribute, another in `pack()`): about 29 µs per message, more than the whole budget at
  25,000 msg/s. We encode the PUBLISH properties ourselves (a few string concatenations) and hand
  paho a `Properties` subclass whose `pack()` returns those bytes.
* paho's own in-flight cap (20 by default) queues the rest and rescans every queued message on
  each PUBACK; we set it to 0 (no cap): the caller's window is the only cap.
* Message ids are 16-bit: we refuse a publish when more than 60,000 are outstanding.
* QoS 1 PUBLISH packets of the outbox are encoded here and written behind paho's back, and
  their PUBACKs are parsed here before paho sees them: per message paho built an MQTTMessage,
  a message info with a threading.Condition, took four locks and, for MQTT 5, parsed a
  Properties object per PUBACK (a third of the gateway's CPU per message). paho keeps the
  connection, CONNACK, keep-alive, the will, the retained status messages and DISCONNECT;
  its message ids (`_mid_generate`) number ours too, skipping an id still in use. (paho's own
  next publish could still take an id of ours only if one stayed unacknowledged through
  65,535 later ones; the broker acknowledges in order.)
* A fresh paho client per `connect()`: paho would otherwise re-send its in-flight messages on
  reconnect by itself, and the outbox must stay the only queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgegw.errors import SinkError
from edgegw.sinks.mqtt.properties import (
    PackedProperties,
    encode_publish,
    pack_publish_properties,
)
from edgegw.sinks.mqtt.reasons import KEEPALIVE_TIMEOUT, SESSION_TAKEN_OVER, reason_text
from edgegw.sinks.mqtt.settings import MqttSettings
from edgegw.sinks.mqtt.tls import TlsSettings, ssl_words, tls_context

__all__ = [
    "MAX_OUTSTANDING",
    "MqttClient",
    "MqttSettings",
    "TlsSettings",
    "pack_publish_properties",
    "reason_text",
]

log = logging.getLogger(__name__)

MAX_OUTSTANDING = 60_000
"""Refuse a publish beyond this many unacknowledged messages (paho's message ids are 16-bit)."""

_MISC_INTERVAL = 1.0  # seconds between loop_misc() calls (keep-alive bookkeeping)

ONLINE = b"online"
OFFLINE = b"offline"

# -- one connection ---------------------------------------------------------------------------

OnAck = Callable[[int, int], None]


_READ_AHEAD = 65536
_PUBACK = 0x40  # the first byte of a PUBACK packet
_EMPTY, _PART, _FOR_PAHO = 0, 1, 2  # what heads the read-ahead buffer (_take_pubacks)


class _ReadAheadClient(paho.Client):
    """paho with system calls per socket event instead of per packet.

    Reading: paho reads a packet with one recv() for its type, one per length byte and one
    for the rest: three system calls, and the Python around them, for a 4-byte PUBACK (a
    quarter of the forwarder's time per message in the catch-up profile). This one takes what
    the socket holds in one call and serves paho's small reads from it; `_Link` keeps calling
    `loop_read()` while bytes are left over, since the socket will not wake it for them.

    Writing: inside `coalesced_write()` (the event loop's writable callback) every packet
    paho sends is appended to one buffer, handed to the socket in one send() at the end; what
    the socket does not take stays first in line, and paho writes nothing more until it left.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edgegw_read_ahead = bytearray()
        self._edgegw_write_behind = bytearray()
        self._edgegw_coalescing = False
        # mid, reason code -> True when the PUBACK was for a message of ours (send_publish)
        self.edgegw_on_puback: Callable[[int, int], bool] | None = None
        self.consumed = 0  # bytes of the read-ahead buffer read so far (by paho or by us)

    def send_publish(self, packet: bytes) -> None:
        """Queue an encoded packet of ours (`encode_publish`) behind whatever waits; the
        event loop's writable callback sends it with the rest (`coalesced_write`)."""
        if self._out_packet:
            # paho's queued packets first (the retained schema announcements published right
            # after a connect must reach the broker before the data): into our buffer now.
            self._edgegw_coalescing = True
            try:
                self.loop_write()
            finally:
                self._edgegw_coalescing = False
        self._edgegw_write_behind += packet
        self._call_socket_register_write()

    def _packet_read(self) -> MQTTErrorCode:
        # Between packets only (paho has not started one): PUBACKs for our messages are taken
        # straight from the read-ahead buffer, all of them at once. Anything else, a PUBACK
        # for paho's own publish included, goes to paho; a PUBACK cut short waits for its
        # remaining bytes here, since paho would drop it (its mid is not one of paho's).
        if self._in_packet["command"] != 0 or self.edgegw_on_puback is None:
            return self._paho_packet_read()
        took = False
        for _ in range(16):  # a broker that keeps sending must not hold the event loop
            head, taken = self._take_pubacks()
            took = took or taken
            if head == _FOR_PAHO:
                return MQTTErrorCode.MQTT_ERR_SUCCESS if took else self._paho_packet_read()
            try:
                data: bytes = super()._sock_recv(_READ_AHEAD)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_SUCCESS if took else MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return self._paho_packet_read()  # paho meets the error again and says it
            if not data:
                return self._paho_packet_read()  # closed: paho reads b"" again and says so
            self._edgegw_read_ahead += data
        self._take_pubacks()  # what the last read brought: never left unread (the caller
        # stops calling once a call consumed nothing)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _paho_packet_read(self) -> MQTTErrorCode:
        rc: MQTTErrorCode = super()._packet_read()
        return rc

    def _take_pubacks(self) -> tuple[int, bool]:
        """Handle the complete PUBACKs of our messages at the head of the read-ahead buffer.
        Returns what is at the head then (_EMPTY, _PART: a PUBACK not whole yet, or
        _FOR_PAHO) and whether any was taken."""
        buffered = self._edgegw_read_ahead
        on_puback = self.edgegw_on_puback
        assert on_puback is not None
        size = len(buffered)
        at = 0
        head = _EMPTY
        while at < size:
            if buffered[at] != _PUBACK:
                head = _FOR_PAHO
                break
            length, index, shift = 0, at + 1, 0
            while True:  # the remaining length: 1 to 4 bytes
                if index >= size:
                    length = -1
                    break
                byte = buffered[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    length = -2  # not a valid length: paho says so
                    break
            end = index + length
            if length == -1 or (length >= 0 and end > size):
                head = _PART
                break
            if length < 2:
                head = _FOR_PAHO
                break
            mid = (buffered[index] << 8) | buffered[index + 1]
            # MQTT 5: a reason code may follow (absent = success), then properties, ignored.
            if not on_puback(mid, buffered[index + 2] if length > 2 else 0):
                head = _FOR_PAHO
                break
            at = end
        if at:
            del buffered[:at]
            self.consumed += at
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        return head, at > 0

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if not self._edgegw_coalescing:  # CONNECT, sent by paho.connect() in a worker thread
            sent: int = super()._sock_send(buf)
            return sent
        self._edgegw_write_behind += buf
        return len(buf)

    def coalesced_write(self) -> None:
        """Send what is left from before, then paho's queued packets in one send()."""
        if self._edgegw_write_behind and not self._flush_write_behind():
            return  # the socket is full; it wakes us again
        self._edgegw_coalescing = True
        try:
            self.loop_write()
        finally:
            self._edgegw_coalescing = False
        if self._edgegw_write_behind:
            self._flush_write_behind()

    def _sock_close(self) -> None:
        # paho closes the socket as soon as it has "sent" DISCONNECT, which then still waits
        # in our buffer: without this flush the broker saw a dropped connection and published
        # the last will ("offline" twice on every clean stop).
        if self._edgegw_write_behind and self._sock is not None:
            self._flush_write_behind()
        super()._sock_close()

    def write_behind(self) -> int:
        """Bytes paho considers sent that the socket has not taken yet."""
        return len(self._edgegw_write_behind)

    def _flush_write_behind(self) -> bool:
        """True when everything left; False when the socket is full (try again later)."""
        pending = self._edgegw_write_behind
        try:
            sent: int = super()._sock_send(pending)
        except BlockingIOError:
            return False
        except OSError:
            # The connection is gone: paho notices it on its next read or write.
            pending.clear()
            return True
        del pending[:sent]
        return not pending

    def _sock_recv(self, bufsize: int) -> bytes:
        buffered = self._edgegw_read_ahead
        if not buffered:
            data: bytes = super()._sock_recv(max(bufsize, _READ_AHEAD))
            if len(data) <= bufsize:  # also b"": the broker closed the connection
                return data
            buffered += data
        chunk = bytes(buffered[:bufsize])
        del buffered[:bufsize]  # cheap: a bytearray drops its head without moving the rest
        self.consumed += len(chunk)
        return chunk

    def read_ahead(self) -> int:
        """Bytes received but not yet read by paho."""
        return len(self._edgegw_read_ahead)


class _Link:
    """One paho client, one TCP connection, one MQTT session (clean start); never reused."""

    def __init__(self, settings: MqttSettings, on_ack: OnAck) -> None:
        self.settings = settings
        self.on_ack = on_ack
        self.loop = asyncio.get_running_loop()
        self.v5 = settings.protocol == "5"
        if self.v5:
            client = _ReadAheadClient(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                reconnect_on_failure=False,
            )
        else:
            client = _ReadAheadClient(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                clean_session=True,
                protocol=MQTTProtocolVersion.MQTTv311,
                # Also stops paho from silently downgrading to MQTT 3.1 on a protocol refusal.
                reconnect_on_failure=False,
            )
        # No cap inside paho: with a cap it queues the excess and rescans all queued messages
        # on every PUBACK. The caller bounds its window; MAX_OUTSTANDING guards the mids.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect_timeout = settings.connect_timeout
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.status_topic:
            client.will_set(settings.status_topic, OFFLINE, qos=1, retain=True)
        if settings.tls is not None:
            client.tls_set_context(tls_context(settings.tls))
        self.paho = client

        self.fd = -1
        self.tokens: dict[int, int] = {}  # paho mid -> caller's token, published and not acked
        self.acks: collections.deque[tuple[int, int]] = collections.deque()  # (token, rc) to report
        self.connack: asyncio.Future[str | None] = self.loop.create_future()  # None = accepted
        self.connected = False
        self.closing = False
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.receive_maximum = 65535
        self.status_mid = -1
        self.status_rc: int | None = None
        self.status_done: asyncio.Future[int] | None = None
        self.misc_task: asyncio.Task[None] | None = None

    # -- connecting ----------------------------------------------------------------------------
    def _open_blocking(self) -> MQTTErrorCode:
        """Runs in a worker thread: DNS, TCP connect, CONNECT packet. No callbacks of ours are
        installed yet, so paho calls nothing of ours from this thread."""
        s = self.settings
        if self.v5:
            return self.paho.connect(s.host, s.port, s.keepalive, clean_start=True)
        return self.paho.connect(s.host, s.port, s.keepalive)

    async def open(self) -> None:
        """Connect, wait for a successful CONNACK, publish the retained birth message and wait
        for its PUBACK (so that "online" is on the broker when this returns); SinkError
        otherwise. The whole sequence is bounded by `connect_timeout`."""
        s = self.settings
        phase = "tcp"
        try:
            async with asyncio.timeout(s.connect_timeout):
                await self._open_socket()
                phase = "connack"
                refusal = await self.connack
                if refusal is not None:
                    raise SinkError(refusal)
                if self.lost.is_set():  # CONNACK and a DISCONNECT read in one go
                    raise SinkError(f"right after CONNACK: {self.lost_reason}")
                self.connected = True
                self.misc_task = asyncio.create_task(
                    self._misc_loop(), name=f"mqtt-keepalive {s.client_id}"
                )
                if s.status_topic:
                    phase = "birth"
                    rc = await self.publish_status(ONLINE)
                    if self.lost.is_set():
                        raise SinkError(f"right after CONNACK: {self.lost_reason}")
                    if rc >= 0x80:
                        log.warning(
                            "broker %s refused the status message on %r: %s",
                            s.address,
                            s.status_topic,
                            reason_text(rc),
                        )
        except TimeoutError:
            self.abort("connect timed out")
            if phase == "tcp":
                raise SinkError(
                    f"no TCP connection to {s.address} within {s.connect_timeout:g} s"
                ) from None
            if phase == "birth":
                raise SinkError(
                    f"no PUBACK within {s.connect_timeout:g} s from {s.address} for the status "
                    f"message on {s.status_topic!r}"
                ) from None
            raise SinkError(
                f"no CONNACK within {s.connect_timeout:g} s from {s.address}: "
                "is it an MQTT broker, and does it speak this protocol version "
                f"(MQTT {s.protocol})?"
            ) from None
        except SinkError as exc:
            self.abort(str(exc))
            raise
        except BaseException:
            self.abort("connect cancelled")
            raise

    async def _open_socket(self) -> None:
        s = self.settings
        fut = self.loop.run_in_executor(None, self._open_blocking)
        try:
            # shield: if we are cancelled (timeout), the worker still finishes; the callback
            # below then closes the socket it opened instead of leaking it.
            await asyncio.shield(fut)
        except ConnectionRefusedError:
            raise SinkError(f"connection refused: {s.address}") from None
        except ssl.SSLCertVerificationError as exc:
            raise SinkError(self._untrusted(exc)) from None
        except ssl.SSLError as exc:
            raise SinkError(
                f"TLS handshake with {s.address} failed: {ssl_words(exc)} (is it a TLS port? "
                "mqtts:// is usually 8883, mqtt:// 1883)"
            ) from None
        except socket.gaierror as exc:
            raise SinkError(f"cannot resolve broker host {s.host!r}: {exc.strerror}") from None
        except TimeoutError:
            raise SinkError(
                f"no TCP connection to {s.address} within {s.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            hint = ""
            if s.tls is not None and isinstance(exc, ConnectionResetError | BrokenPipeError):
                # A plain MQTT listener reads the TLS ClientHello as a bad packet and drops
                # the connection (Mosquitto resets it): no TLS error is ever seen.
                hint = (
                    " during the TLS handshake: is this a TLS listener? (mqtts:// is "
                    "usually port 8883, mqtt:// 1883)"
                )
            raise SinkError(f"cannot connect to {s.address}: {exc.strerror or exc}{hint}") from None
        except ValueError as exc:  # paho: invalid host or port
            raise SinkError(f"cannot connect to {s.address}: {exc}") from None
        except asyncio.CancelledError:
            fut.add_done_callback(self._close_abandoned_socket)
            raise

        sock = self.paho.socket()
        if sock is None:  # paho could not even send CONNECT
            raise SinkError(
                f"connection to {s.address} closed while sending CONNECT{self._tls_hint()}"
            )
        self.fd = sock.fileno()
        client = self.paho
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.edgegw_on_puback = self._on_puback
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.loop.add_reader(self.fd, self._on_readable)
        if client.want_write():  # CONNECT only partly sent by the worker
            self.loop.add_writer(self.fd, self._on_writable)

    def _close_abandoned_socket(self, fut: asyncio.Future[MQTTErrorCode]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        sock = self.paho.socket()
        if sock is not None and self.fd < 0:
            sock.close()

    # -- paho callbacks (event loop thread, often inside paho's locks: record only) ------------
    def _on_connect(self, _c: Any, _ud: Any, _flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            result: str | None = f"broker {self.settings.address} refused: {self._why(reason)}"
        else:
            result = None
            if props is not None:
                self.receive_maximum = int(getattr(props, "ReceiveMaximum", 65535))
        if not self.connack.done():
            self.connack.set_result(result)

    def _on_disconnect(self, _c: Any, _ud: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        from_broker: bool = flags.is_disconnect_packet_from_server
        self.mark_lost(self._describe_disconnect(from_broker, reason, props))

    def _on_publish(self, _c: Any, _ud: Any, mid: int, reason: ReasonCode, _props: Any) -> None:
        # Hot path, inside paho's locks: record only.
        token = self.tokens.pop(mid, None)
        rc: int = reason.value
        if token is None:
            if mid == self.status_mid:
                self.status_rc = rc
            return
        self.acks.append((token, 0 if rc < 0x80 else rc))  # 0x10 "no subscribers" is delivery

    def _on_puback(self, mid: int, rc: int) -> bool:
        """A PUBACK read by `_ReadAheadClient`: True if it was for a message of ours (paho's
        own publishes, the status messages, are left to paho)."""
        if mid in self.paho._out_messages:
            return False
        token = self.tokens.pop(mid, None)
        if token is not None:
            self.acks.append((token, 0 if rc < 0x80 else rc))  # 0x10 "no subscribers" too
        return True  # an unknown mid: a message of an earlier window; nothing waits for it

    def _on_socket_open(self, _c: Any, _ud: Any, sock: Any) -> None:
        # Only if paho opened a second socket on its own (it should not: reconnect_on_failure
        # is off); keep it driven rather than silently stalled.
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self._on_readable)

    def _on_socket_close(self, _c: Any, _ud: Any, _sock: Any) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.fd = -1

    def _on_socket_register_write(self, _c: Any, _ud: Any, _sock: Any) -> None:
        if self.fd >= 0:
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_socket_unregister_write(self, _c: Any, _ud: Any, _sock: Any) -> None:
        # paho's queue is empty, but bytes it handed over may still wait for the socket.
        if self.fd >= 0 and not self.paho.write_behind():
            self.loop.remove_writer(self.fd)

    # -- readiness handlers (event loop) -------------------------------------------------------
    def _on_readable(self) -> None:
        client = self.paho
        client.loop_read()
        # paho reads a bounded number of packets per call, and a call may read more from the
        # socket than it parses: go on while calls make progress. A call that consumed
        # nothing means a partial packet waits for more bytes (the socket wakes us).
        while client.read_ahead() and client.socket() is not None:
            before = client.consumed
            client.loop_read()
            if client.consumed == before:
                break
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            # Decrypted bytes held inside the TLS layer do not make the socket readable.
            self.loop.call_soon(self._on_readable)
        if self.acks or self.status_rc is not None:
            self._deliver()

    def _on_writable(self) -> None:
        client = self.paho
        client.coalesced_write()
        if self.fd >= 0:
            if client.write_behind():
                self.loop.add_writer(self.fd, self._on_writable)
            elif not client.want_write():
                self.loop.remove_writer(self.fd)
        if self.acks or self.status_rc is not None:
            self._deliver()

    def _deliver(self) -> None:
        """Report recorded acknowledgements, outside paho's locks."""
        acks, on_ack = self.acks, self.on_ack
        while acks:  # popleft first: if on_ack raises, the rest is delivered next time
            token, rc = acks.popleft()
            on_ack(token, rc)
        if self.status_rc is not None:
            rc, self.status_rc = self.status_rc, None
            if self.status_done is not None and not self.status_done.done():
                self.status_done.set_result(rc)

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL)
            if self.paho.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # -- publishing ------------------------------------------------------------------------------
    def publish_status(self, payload: bytes) -> asyncio.Future[int]:
        """Publish a retained QoS 1 status message; the future gets its PUBACK reason code."""
        topic = self.settings.status_topic
        assert topic is not None
        self.status_done = self.loop.create_future()
        info = self.paho.publish(topic, payload, 1, True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.status_done.set_result(0x80)
        else:
            self.status_mid = info.mid
        return self.status_done

    # -- ending ----------------------------------------------------------------------------------
    def mark_lost(self, reason: str) -> None:
        """The connection is gone: forget every unacknowledged token and wake the waiters."""
        if self.lost.is_set():
            return
        self.connected = False
        self.lost_reason = reason
        self.tokens.clear()
        if not self.connack.done():
            self.connack.set_result(reason)
        if self.status_done is not None and not self.status_done.done():
            self.status_done.set_result(0x80)
        if self.misc_task is not None:
            self.misc_task.cancel()
        self.lost.set()

    def abort(self, reason: str) -> None:
        """Drop the connection now: no DISCONNECT, so the broker publishes the will."""
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.fd = -1
        client = self.paho
        # Detach first: paho's __del__ closes its socket again and would call us back.
        client.on_socket_open = None
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        client.on_connect = None
        client.on_disconnect = None
        client.on_publish = None
        client.edgegw_on_puback = None
        sock = client.socket()
        if sock is not None:
            sock.close()
        self.mark_lost(reason)

    # -- words -----------------------------------------------------------------------------------
    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        s = self.settings
        words = ssl_words(exc)
        if "mismatch" in words.lower():
            return (
                f"TLS: the broker's certificate is not valid for {s.host!r} ({words}); connect "
                "by a name the certificate lists, or set mqtt.tls.verify_hostname: false"
            )
        where = f"the CA in mqtt.tls.ca ({s.tls.ca})" if s.tls and s.tls.ca else "the system CAs"
        return f"TLS: the broker {s.address} presented a certificate not signed by {where}: {words}"

    def _tls_hint(self) -> str:
        tls = self.settings.tls
        if tls is not None and tls.cert is None:
            # With TLS 1.3 a broker refuses a missing client certificate after the handshake.
            return ": does the broker require a client certificate (mqtt.tls.cert and key)?"
        return ""

    def _why(self, reason: ReasonCode) -> str:
        code: int = reason.value
        if code == SESSION_TAKEN_OVER:
            return (
                f"session taken over (0x8E): another client connected with the same client id "
                f"{self.settings.client_id!r}; client ids must be unique per gateway"
            )
        if code in (0x86, 0x87, 0x04, 0x05) and self.settings.username is not None:
            return (
                f"{reason_text(code)}: check mqtt.username ({self.settings.username!r}) and the "
                "password in mqtt.password_file"
            )
        return reason_text(code)

    def _describe_disconnect(self, from_broker: bool, reason: ReasonCode, props: Any) -> str:
        s = self.settings
        if self.closing:
            return "closed by the gateway"
        if from_broker:
            text = f"broker {s.address} disconnected us: {self._why(reason)}"
            reason_string = getattr(props, "ReasonString", None)
            return f"{text} (broker says: {reason_string})" if reason_string else text
        if not self.connack.done():
            if self._tls_hint():
                return f"{s.address} closed the TLS connection before CONNACK{self._tls_hint()}"
            return (
                f"{s.address} closed the connection before CONNACK: is it an MQTT broker, and "
                f"does it accept MQTT {s.protocol}?"
            )
        if reason.value == KEEPALIVE_TIMEOUT:
            return f"no answer from the broker {s.address} within the keep-alive ({s.keepalive} s)"
        # The socket was closed (or reset) without an MQTT DISCONNECT. Mosquitto 2.0 does that
        # when it stops AND when another client takes the session over (it sends no 0x8E), and
        # MQTT 3.1.1 has no reason codes at all: say what it may be.
        return (
            f"connection to the broker {s.address} lost without a reason from the broker: it "
            "may have stopped or restarted, the network may have failed, or another client "
            f"connected with the same client id {s.client_id!r} and took the session over "
            "(client ids must be unique per gateway)"
        )


class MqttClient:
    """An MQTT client on the event loop for the outbox forwarder.

    Contract:

    * `publish()` never blocks and never queues beyond the socket buffer: the caller's outbox is
      the only queue, and the caller bounds its in-flight window (about 100).
    * `on_ack(token, reason_code)` runs on the event loop, once per acknowledged publish:
      0 means delivered (PUBACK success or 0x10 "no matching subscribers"; for QoS 0, written to
      the socket); a code >= 0x80 means the broker refused the message (see `reason_text`): the
      caller keeps the row. `on_ack` is never called from inside paho's locks.
    * When the connection is lost, every token not yet acknowledged is forgotten: no `on_ack`
      ever comes for it, `in_flight` drops to 0, and the caller sends those rows again from the
      outbox after `connect()` (same idempotency key; consumers dedupe). Acknowledgements read
      from the socket before the loss are still delivered, before `wait_disconnected()` returns.
    * Each `connect()` uses a fresh paho client and a clean session, so nothing is re-sent by
      paho itself.
    * Errors are `SinkError` with the reason in words.
    """

    def __init__(self, settings: MqttSettings, *, on_ack: Callable[[int, int], None]) -> None:
        self._settings = settings
        self._on_ack = on_ack
        self._link: _Link | None = None

    @property
    def settings(self) -> MqttSettings:
        return self._settings

    async def connect(self) -> None:
        """Connect with a clean start and wait for CONNACK, then publish the retained birth
        message and wait for its PUBACK; all within `connect_timeout`. SinkError with the
        reason in words otherwise. Meant for after a loss or before the first use: a connection
        still alive is dropped without DISCONNECT (so the broker publishes the will first)."""
        old = self._link
        if old is not None:
            old.abort("replaced by a new connection")
        link = _Link(self._settings, self._on_ack)
        self._link = link
        started = time.monotonic()
        await link.open()
        log.info(
            "connected to the MQTT broker %s as %r (MQTT %s) in %.0f ms",
            self._settings.address,
            self._settings.client_id,
            self._settings.protocol,
            (time.monotonic() - started) * 1000,
        )

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.connected

    @property
    def receive_maximum(self) -> int:
        """The broker's Receive Maximum from CONNACK (MQTT 5; 65535 if absent or MQTT 3.1.1):
        the number of unacknowledged QoS 1 publishes it says it accepts."""
        link = self._link
        return 65535 if link is None else link.receive_maximum

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        token: int,
        user_properties: Sequence[tuple[str, str]] = (),
        content_type: str | None = "application/json",
        retain: bool = False,
    ) -> None:
        """Hand one message to the socket; `on_ack(token, rc)` follows. SinkError if not
        connected or too many outstanding. A topic with wildcards raises ValueError (a bug:
        topics must be validated with the configuration)."""
        link = self._link
        if link is None or not link.connected:
            raise SinkError(self._not_connected())
        tokens = link.tokens
        if len(tokens) >= MAX_OUTSTANDING:
            raise SinkError(
                f"{len(tokens)} publishes unacknowledged by {self._settings.address}: "
                f"refusing more (message ids are 16-bit; keep the in-flight window small)"
            )
        if qos == 1 and not retain:
            if "+" in topic or "#" in topic or not topic:
                raise ValueError(f"not a topic to publish to: {topic!r}")
            client = link.paho
            mid = client._mid_generate()
            while mid in tokens or mid in client._out_messages:  # ids wrapped past one in use
                mid = client._mid_generate()  # MAX_OUTSTANDING < 65,535: one is free
            packed = pack_publish_properties(user_properties, content_type) if link.v5 else None
            client.send_publish(encode_publish(topic, mid, packed, payload))
            tokens[mid] = token
            return
        props: Properties | None = None
        if link.v5 and (user_properties or content_type is not None):
            props = PackedProperties(pack_publish_properties(user_properties, content_type))
        info = link.paho.publish(topic, payload, qos, retain, props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                raise SinkError(
                    f"message id {info.mid} is still in flight: too many unacknowledged publishes"
                )
            raise SinkError(f"publish failed: {paho.error_string(info.rc)}")
        tokens[info.mid] = token

    @property
    def in_flight(self) -> int:
        """Published, not yet acknowledged (0 after a connection loss)."""
        link = self._link
        return 0 if link is None else len(link.tokens)

    async def wait_disconnected(self) -> str:
        """Return once the current connection is lost or closed, with the reason in words."""
        link = self._link
        if link is None:
            return "not connected"
        await link.lost.wait()
        return link.lost_reason

    # The timeout is part of the method, not the caller's: on expiry we still abort cleanly.
    async def close(self, *, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Publish the retained "offline" (waiting up to `timeout` for its PUBACK), send
        DISCONNECT, release the socket. Safe when not connected, and twice."""
        link = self._link
        if link is None:
            return
        if link.connected:
            link.connected = False  # publish() refuses from now on
            link.closing = True
            try:
                async with asyncio.timeout(timeout):
                    if self._settings.status_topic:
                        rc = await link.publish_status(OFFLINE)
                        if rc >= 0x80 and not link.lost.is_set():
                            log.warning(
                                "broker %s refused the status %r: %s",
                                self._settings.address,
                                self._settings.status_topic,
                                reason_text(rc),
                            )
                    if not link.lost.is_set():
                        link.paho.disconnect()
                        await link.lost.wait()
            except TimeoutError:
                log.warning(
                    "MQTT close: no answer from %s within %g s; dropping the connection",
                    self._settings.address,
                    timeout,
                )
        link.abort("closed by the gateway")

    def _not_connected(self) -> str:
        link = self._link
        if link is None:
            return f"not connected to the MQTT broker {self._settings.address}"
        if link.closing:
            return f"MQTT connection to {self._settings.address} is closed"
        return f"not connected to the MQTT broker: {link.lost_reason or 'connecting'}"
