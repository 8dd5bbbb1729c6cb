"""The test support's waits: tests.support.wait's three forms, and a Subscriber that, started
again after stop(), returns only once the broker acknowledged its subscription."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Mosquitto
from tests.support.ledger import ranges
from tests.support.subscriber import Subscriber
from tests.support.wait import stays, until, until_blocking, until_progress

pytestmark = pytest.mark.timeout(60)


# --- tests.support.wait ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def counting(every: float, limit: int | None = None) -> AsyncIterator[list[int]]:
    """A count that grows by one every `every` seconds (up to `limit`), in the background."""
    count = [0]

    async def grow() -> None:
        while limit is None or count[0] < limit:
            await asyncio.sleep(every)
            count[0] += 1

    task = asyncio.create_task(grow())
    try:
        yield count
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_progress_wait_goes_on_past_its_stall_while_the_count_grows() -> None:
    async with counting(0.02) as count:
        started = time.monotonic()
        reached = await until_progress(lambda: count[0], 100, stall=1.0, what="items")
    assert reached >= 100
    # Two seconds or so of growth: twice the stall, which is therefore no deadline.
    assert time.monotonic() - started > 1.0


async def test_a_stalled_progress_wait_names_what_is_missing() -> None:
    seqs = set(range(1, 1201))
    expected = set(range(1, 1251))
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        await until_progress(
            lambda: len(seqs),
            len(expected),
            stall=0.3,
            what="received count",
            missing=lambda: f"seqs {ranges(expected - seqs)} never arrived",
        )
    assert str(failure.value) == (
        "seqs 1201..1250 never arrived; received count stalled at 1200 of 1250 for 0.3 s"
    )
    assert time.monotonic() - started >= 0.3


async def test_a_progress_wait_that_never_gets_there_ends_at_its_cap() -> None:
    async with counting(0.01) as count:
        with pytest.raises(AssertionError, match=r"items still growing after 0\.5 s"):
            # A target it cannot reach in time although it grows all along.
            await until_progress(lambda: count[0], 10**9, stall=5.0, what="items", cap=0.5)


async def test_a_condition_wait_says_what_it_waited_for_and_what_was_there() -> None:
    with pytest.raises(AssertionError) as failure:
        await until(lambda: False, 0.1, "the green light", describe=lambda: "the light is red")
    assert str(failure.value) == (
        "timed out after 0.1 s waiting for the green light; the light is red"
    )
    until_blocking(lambda: True, 0.1, "at once")

    async def register_set() -> bool:  # a condition that has to await, e.g. a Modbus read
        await asyncio.sleep(0)
        return True

    await until(register_set, 1.0, "an awaited condition")


async def test_a_negative_check_holds_over_a_time_and_fails_when_something_happens() -> None:
    started = time.monotonic()
    await stays(lambda: True, 0.3, "quiet")
    assert time.monotonic() - started >= 0.3
    async with counting(0.1, limit=1) as count:
        with pytest.raises(AssertionError, match="nothing counted no longer held"):
            await stays(lambda: count[0] == 0, 5.0, "nothing counted")


def test_ranges_names_runs() -> None:
    assert ranges([1300, *range(1201, 1251), 7]) == "7, 1201..1250, 1300"
    assert ranges(range(0, 20, 2), limit=2) == "0, 2 and 8 more runs"
    assert ranges([]) == ""


# --- Subscriber: start() after stop() ------------------------------------------------------------


@contextlib.contextmanager
def publisher(mosquitto: Mosquitto) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()


def test_start_after_stop_waits_for_a_new_suback(mosquitto: Mosquitto) -> None:
    subscriber = Subscriber(mosquitto.port, "t/#").start()
    assert subscriber.subscribed
    subscriber.stop()
    assert not subscriber.subscribed
    # A hung broker accepts the TCP connection (the kernel does) but acknowledges nothing:
    # start() must not return. (It returned at once when the first SUBACK stayed recorded.)
    mosquitto.pause()
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match="no SUBACK"):
            subscriber.start(timeout=1.0)
        assert time.monotonic() - started >= 1.0
    finally:
        mosquitto.resume()
    subscriber.start()
    try:
        assert subscriber.subscribed
    finally:
        subscriber.stop()


def test_start_after_a_broker_restart_receives_what_is_published_at_once(
    mosquitto: Mosquitto,
) -> None:
    subscriber = Subscriber(mosquitto.port, "t/#").start()
    try:
        subscriber.stop()
        mosquitto.stop()  # no persistence: the broker forgets the subscription
        mosquitto.start()
        subscriber.start()
        # The subscription is in place when start() returns: a message published right
        # away reaches it (a broker drops a publish that matches no subscription).
        with publisher(mosquitto) as client:
            publish(client, "t/first", b"1")
        got = subscriber.wait_for_blocking(lambda m: len(m) == 1, 10, what="the message")
        assert got[0].topic == "t/first"
    finally:
        subscriber.stop()


def test_start_on_a_started_subscriber_is_refused(mosquitto: Mosquitto) -> None:
    with Subscriber(mosquitto.port, "t/#") as subscriber, pytest.raises(RuntimeError):
        subscriber.start()


def test_subscribed_follows_a_broker_restart_without_stop(mosquitto: Mosquitto) -> None:
    with Subscriber(mosquitto.port, "t/#") as subscriber:
        mosquitto.stop()
        until_blocking(lambda: not subscriber.subscribed, 10, "the subscriber to see the loss")
        mosquitto.start()
        # paho reconnects by itself (every second) and subscribes again on connect.
        until_blocking(lambda: subscriber.subscribed, 15, "the subscription back")


async def test_wait_count_waits_for_as_long_as_messages_arrive(mosquitto: Mosquitto) -> None:
    with Subscriber(mosquitto.port, "t/#") as subscriber, publisher(mosquitto) as client:
        for i in range(200):
            client.publish(f"t/{i}", b"x", qos=1)
        got = await subscriber.wait_count(200, stall=5.0)
        assert len(got) >= 200
        with pytest.raises(AssertionError, match="messages received stalled at 200 of 201"):
            await subscriber.wait_count(201, stall=0.3)
