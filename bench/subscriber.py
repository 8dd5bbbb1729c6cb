"""Counting MQTT subscribers for the benchmarks.

Two implementations with one interface (`start()`, `snapshot()`, `stop()`):

* `RawSubscriber` (default): a minimal MQTT 3.1.1 client on a plain socket in one thread. It
  subscribes to ``#`` at QoS 0, reads the socket in large chunks and parses PUBLISH packets
  straight out of the buffer. Cheap enough (a few µs per message, mostly `orjson.loads`) that it
  is never the bottleneck of these benchmarks.
* `PahoSubscriber`: paho-mqtt 2.x with its network thread (`loop_start`). paho reads one packet
  per `select()` for a QoS 0 subscription and several `recv()` calls per packet, so it tops out
  well below what the broker can deliver; kept to measure that (``--subscriber paho``).

Both classify a message by topic prefix (`kinds`: prefix -> name), parse its JSON payload with
orjson and keep, per kind: messages, payload bytes, distinct `id`s, and for payloads carrying an
integer `seq` the distinct seq values (to check for gaps end to end).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class KindCounts:
    messages: int = 0
    payload_bytes: int = 0
    bad_payloads: int = 0
    ids: set[str] = field(default_factory=set)
    seqs: set[int] = field(default_factory=set)
    last_arrival: float = 0.0  # time.monotonic()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": self.messages,
            "distinct_ids": len(self.ids),
            "duplicates": self.messages - len(self.ids),
            "payload_bytes": self.payload_bytes,
            "mean_payload_bytes": round(self.payload_bytes / self.messages, 1)
            if self.messages
            else None,
            "bad_payloads": self.bad_payloads,
        }
        if self.seqs:
            low, high = min(self.seqs), max(self.seqs)
            out.update(
                seq_min=low,
                seq_max=high,
                distinct_seqs=len(self.seqs),
                seq_missing_in_range=(high - low + 1) - len(self.seqs),
            )
        return out


class _Counting:
    """Shared bookkeeping: called from the network thread only."""

    def __init__(self, kinds: dict[str, str]) -> None:
        # Longest prefix first so that nested prefixes classify correctly.
        self._kinds = sorted(((p.encode(), k) for p, k in kinds.items()), key=lambda x: -len(x[0]))
        self.counts: dict[str, KindCounts] = {k: KindCounts() for k in kinds.values()}
        self.other = 0

    def _count(self, topic: bytes, payload: bytes) -> None:
        c = None
        for prefix, name in self._kinds:
            if topic.startswith(prefix):
                c = self.counts[name]
                break
        if c is None:
            self.other += 1
            return
        c.payload_bytes += len(payload)
        c.last_arrival = time.monotonic()
        try:
            doc = orjson.loads(payload)
            # An edgegw.batch/1 message carries many values: count each as the message it
            # would be without batching, so values/s compare across modes.
            items = doc["items"] if doc.get("schema") == "edgegw.batch/1" else (doc,)
            for item in items:
                c.messages += 1
                c.ids.add(item["id"])
                seq = item.get("seq")
                if type(seq) is int:
                    c.seqs.add(seq)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            c.bad_payloads += 1

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(messages, distinct ids) per kind; plain int reads, safe across threads."""
        return {k: (c.messages, len(c.ids)) for k, c in self.counts.items()}

    def last_arrival(self) -> float:
        return max((c.last_arrival for c in self.counts.values()), default=0.0)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class RawSubscriber(_Counting):
    """MQTT 3.1.1, clean session, keep-alive off, one subscription at QoS 0."""

    def __init__(self, host: str, port: int, kinds: dict[str, str], topic: str = "#") -> None:
        super().__init__(kinds)
        self.host, self.port, self.topic = host, port, topic
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: str | None = None

    def start(self, timeout: float = 10.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        client_id = f"bench-sub-{time.monotonic_ns()}"
        body = _utf8("MQTT") + bytes((4, 0x02)) + (0).to_bytes(2, "big") + _utf8(client_id)
        sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        connack = self._read_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the subscriber: CONNACK {connack.hex()}")
        body = (1).to_bytes(2, "big") + _utf8(self.topic) + b"\x00"
        sock.sendall(b"\x82" + _remaining_length(len(body)) + body)
        suback = self._read_exact(sock, 5)
        if suback[0] != 0x90 or suback[4] >= 0x80:
            raise RuntimeError(f"broker refused the subscription: SUBACK {suback.hex()}")
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="bench-subscriber", daemon=True)
        self._thread.start()

    @staticmethod
    def _read_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("broker closed the connection")
            data += chunk
        return data

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        buf = b""
        count = self._count
        try:
            while not self._stop:
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    self.error = "broker closed the connection"
                    return
                buf = buf + chunk if buf else chunk
                pos, end = 0, len(buf)
                while True:
                    # Fixed header: type byte, then 1..4 bytes of remaining length.
                    if end - pos < 2:
                        break
                    first = buf[pos]
                    i = pos + 1
                    length = 0
                    shift = 0
                    while i < end:
                        b = buf[i]
                        length |= (b & 0x7F) << shift
                        i += 1
                        if not b & 0x80:
                            break
                        shift += 7
                    else:
                        break  # length bytes incomplete
                    if i + length > end:
                        break  # body incomplete
                    if first & 0xF0 == 0x30:  # PUBLISH (QoS 0: no packet id)
                        tlen = (buf[i] << 8) | buf[i + 1]
                        t_end = i + 2 + tlen
                        if first & 0x06:  # QoS > 0 (not requested): skip the packet id
                            count(buf[i + 2 : t_end], buf[t_end + 2 : i + length])
                        else:
                            count(buf[i + 2 : t_end], buf[t_end : i + length])
                    pos = i + length
                buf = buf[pos:] if pos < end else b""
        except OSError as exc:
            if not self._stop:
                self.error = f"subscriber socket error: {exc}"

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            self._sock.close()
            self._sock = None


class PahoSubscriber(_Counting):
    """paho-mqtt 2.x (MQTT 5) with paho's network thread; subscribes `topic` at QoS 0."""

    def __init__(self, host: str, port: int, kinds: dict[str, str], topic: str = "#") -> None:
        super().__init__(kinds)
        self.host, self.port, self.topic = host, port, topic
        self.error: str | None = None
        self._client: Any = None

    def start(self, timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-sub-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        subscribed = threading.Event()
        count = self._count

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                self.error = f"CONNACK {reason}"
                subscribed.set()
                return
            c.subscribe(self.topic, qos=0)

        def on_subscribe(_c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
            subscribed.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            count(msg._topic, msg.payload)  # raw topic bytes: skips a decode per message

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect(self.host, self.port, keepalive=60)
        client.loop_start()
        if not subscribed.wait(timeout) or self.error:
            client.loop_stop()
            raise RuntimeError(f"paho subscriber could not subscribe: {self.error or 'timeout'}")
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
