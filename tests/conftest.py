"""Shared fixtures. Integration fixtures start real processes on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import Mosquitto
from tests.support.subscriber import Subscriber


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free 127.0.0.1 port, stopped after the test."""
    broker = Mosquitto()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    """A subscriber to everything the test gateways publish under site s, area a, line l."""
    with Subscriber(mosquitto.port, "s/a/l/#") as sub:
        yield sub
