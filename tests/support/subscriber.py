"""A plain paho subscriber for tests: records what the broker delivers, and waits by polling.

It runs paho's own network thread (fine in tests). Its callbacks only append under a short lock
and never call back into paho while holding it, so paho's internal locks cannot deadlock with
ours. It re-subscribes on every (re)connect, so it survives a broker restart; a test that must
know the subscription is back before anything is published calls `stop()` and `start()`, which
returns only once the broker has acknowledged the subscription again.

It receives QoS 1 well below a gateway's rate (a 27,000-message backlog took 47 s here): wait
for counts of messages with `wait_count` or `tests.support.wait.until_progress`, never with a
deadline sized on one machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.wait import STALL, until, until_blocking, until_progress


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
        # Set by the SUBACK of the current connection; cleared by stop() and by every
        # disconnect, so start() after stop() waits for a new SUBACK.
        self._subscribed = threading.Event()
        self._started = False
        v5 = protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
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

    def _on_disconnect(self, *_args: Any) -> None:
        self._subscribed.clear()

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
        """Connect, subscribe and return once the broker has acknowledged the subscription.

        After `stop()` this connects again and waits for a new SUBACK (a broker without
        persistence forgot the subscription when it restarted). On a started subscriber it
        raises: paho's `loop_start()` refuses a second network thread, and a second `connect()`
        beside the running one would return before anything was subscribed.
        """
        if self._started:
            raise RuntimeError("Subscriber.start() on a started subscriber: call stop() first")
        self._subscribed.clear()
        self._started = True
        try:
            self._client.connect(self._host, self._port, keepalive=30)
            self._client.loop_start()
            if not self._subscribed.wait(timeout):
                raise AssertionError(
                    f"subscriber got no SUBACK for {self._filter!r} from "
                    f"{self._host}:{self._port} within {timeout} s"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Disconnect and end paho's network thread; `start()` may follow."""
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()
        self._started = False

    @property
    def subscribed(self) -> bool:
        """The broker acknowledged the subscription on the current connection."""
        return self._subscribed.is_set()

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

    @property
    def count(self) -> int:
        """How many messages arrived so far (cheaper than `len(messages)`)."""
        with self._lock:
            return len(self._messages)

    def since(self, index: int) -> list[Received]:
        """The messages from position `index` on: for readers that parse each message once."""
        with self._lock:
            return self._messages[index:]

    def on_topic(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        """Forget what arrived (a reader that keeps a position, ledger.Tally, starts anew)."""
        with self._lock:
            self._messages.clear()

    def _describe(self) -> str:
        got = self.messages
        tail = "\n  ".join(f"{m.topic} {m.payload[:80]!r} retain={m.retain}" for m in got[-5:])
        return f"got {len(got)} message(s)" + (f", the last ones:\n  {tail}" if got else "")

    # -- waiting (tests.support.wait; never a fixed sleep) -------------------------------------
    async def wait_for(
        self,
        predicate: Predicate,
        timeout: float = 10.0,  # noqa: ASYNC109 (the failure message needs the got-so-far)
        *,
        what: str = "the condition",
    ) -> list[Received]:
        """Poll until `predicate(messages)` holds; AssertionError with what arrived otherwise.

        For a state (a retained message, a given payload). For a number of messages, whose
        time depends on this machine's speed, use `wait_count` (progress-based)."""
        seen: list[list[Received]] = [[]]

        def holds() -> bool:
            seen[0] = self.messages
            return predicate(seen[0])

        await until(holds, timeout, what, describe=self._describe)
        return seen[0]

    async def wait_count(
        self, n: int, *, stall: float = STALL, what: str = "messages received"
    ) -> list[Received]:
        """Until at least `n` messages arrived, for as long as they keep arriving; fails once
        none arrived for `stall` s."""
        await until_progress(lambda: self.count, n, stall=stall, what=what)
        return self.messages

    def wait_for_blocking(
        self, predicate: Predicate, timeout: float = 10.0, *, what: str = "the condition"
    ) -> list[Received]:
        """`wait_for` for synchronous tests (blocks the calling thread)."""
        seen: list[list[Received]] = [[]]

        def holds() -> bool:
            seen[0] = self.messages
            return predicate(seen[0])

        until_blocking(holds, timeout, what, describe=self._describe)
        return seen[0]
