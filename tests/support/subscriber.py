"""A plain paho subscriber for tests: records what the broker delivers, and waits by polling.

It runs paho's own network thread (fine in tests). Its callbacks only append under a short lock
and never call back into paho while holding it, so paho's internal locks cannot deadlock with
ours. It re-subscribes on every (re)connect, so it survives a broker restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

_POLL = 0.01  # seconds


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    properties: Any = field(default=None, compare=False, repr=False)

    @property
    def user_property_dict(self) -> dict[str, str]:
        return dict(self.user_properties)


Predicate = Callable[[Sequence[Received]], bool]


class Subscriber:
    """Subscribes to `topic_filter` on a broker and records every message it receives."""

    def __init__(
        self,
        port: int,
        topic_filter: str = "#",
        *,
        host: str = "127.0.0.1",
        protocol: str = "5",
        qos: int = 1,
        client_id: str = "",
        setup: Callable[[paho.Client], None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._filter = topic_filter
        self._qos = qos
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        if setup is not None:  # TLS, credentials
            setup(self._client)

    # -- paho callbacks (paho's thread) --------------------------------------------------------
    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self._filter, qos=self._qos)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        user = tuple(getattr(props, "UserProperty", ()) or ()) if props is not None else ()
        content_type = getattr(props, "ContentType", None) if props is not None else None
        received = Received(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            user_properties=tuple((str(k), str(v)) for k, v in user),
            content_type=content_type,
            properties=props,
        )
        with self._lock:
            self._messages.append(received)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect, subscribe and return once the broker has acknowledged the subscription."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise AssertionError(
                f"subscriber got no SUBACK for {self._filter!r} from "
                f"{self._host}:{self._port} within {timeout} s"
            )
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what was received ---------------------------------------------------------------------
    @property
    def messages(self) -> list[Received]:
        """A snapshot of everything received so far, in arrival order."""
        with self._lock:
            return list(self._messages)

    def on_topic(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def _describe(self, what: str, timeout: float) -> str:
        got = self.messages
        tail = "\n  ".join(f"{m.topic} {m.payload[:80]!r} retain={m.retain}" for m in got[-5:])
        return f"timed out after {timeout} s waiting for {what}; got {len(got)} message(s)" + (
            f", the last ones:\n  {tail}" if got else ""
        )

    # -- waiting (polls a condition; never a fixed sleep) --------------------------------------
    async def wait_for(
        self,
        predicate: Predicate,
        timeout: float = 10.0,  # noqa: ASYNC109 (the failure message needs the got-so-far)
        *,
        what: str = "the condition",
    ) -> list[Received]:
        """Poll until `predicate(messages)` holds; AssertionError with what arrived otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages
            if predicate(got):
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(self._describe(what, timeout))
            await asyncio.sleep(_POLL)

    async def wait_count(self, n: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109
        """Poll until at least `n` messages arrived."""
        return await self.wait_for(lambda got: len(got) >= n, timeout, what=f"{n} message(s)")

    def wait_for_blocking(
        self, predicate: Predicate, timeout: float = 10.0, *, what: str = "the condition"
    ) -> list[Received]:
        """`wait_for` for synchronous tests (blocks the calling thread)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages
            if predicate(got):
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(self._describe(what, timeout))
            time.sleep(_POLL)

    def wait_count_blocking(self, n: int, timeout: float = 10.0) -> list[Received]:
        return self.wait_for_blocking(lambda got: len(got) >= n, timeout, what=f"{n} message(s)")
