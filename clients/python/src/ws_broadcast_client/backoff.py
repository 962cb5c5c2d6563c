"""How long to wait before the next reconnect: full-jitter exponential backoff.

Full jitter (a uniform draw between 0 and the exponential bound) spreads a crowd of clients that lost
the service at the same instant, so that they do not all come back at the same instant either.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``first``: the bound of the first wait (the first retry comes within it); doubled at each
    failure up to ``cap``; forgotten once a connection stayed up ``reset_after`` seconds."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0
    draw: Callable[[], float] = field(default=random.random, repr=False)
    failures: int = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        bound = min(self.cap, self.first * 2 ** min(self.failures, 62))
        self.failures += 1
        return bound * self.draw()

    def connection_ended(self, lasted: float) -> None:
        """A connection closed after ``lasted`` seconds: a healthy one starts the count again."""
        if lasted >= self.reset_after:
            self.failures = 0
