"""Capped exponential backoff with full jitter, for every reconnect loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays of `initial * 2**n` capped at `maximum`, each drawn in [delay/2, delay].

    Half-jitter rather than full jitter: a device that comes back should be retried soon,
    yet many gateways restarted together must not reconnect in lockstep.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempts))
        self.attempts = min(self.attempts + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
