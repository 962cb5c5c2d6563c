"""Concurrent delivery of one payload to many connections, within a deadline.

A bounded pool of worker threads (created once per container) drains a shared queue of recipients.
Each recipient's outcome is counted, never raised: one failure never fails the publish. 429 is
retried with full-jitter exponential backoff while the deadline allows; 410 is reported as gone so
the caller can forget those connections in one batch. This module knows nothing of Redis.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from chalicelib.management_api import DeliveryError, Gone, Throttled

Post = Callable[[str, bytes], None]

DEADLINE_EXCEEDED = "deadline exceeded"


@dataclass
class DeliveryReport:
    recipients: int
    delivered: int = 0
    gone: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0


class Fanout:
    def __init__(
        self,
        workers: int,
        *,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.05,
        backoff_cap_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout")
        self._max_attempts = max_attempts
        self._backoff_base_seconds = backoff_base_seconds
        self._backoff_cap_seconds = backoff_cap_seconds
        self._clock = clock

    def deliver(
        self, post: Post, payload: bytes, recipients: Sequence[str], *, deadline: float
    ) -> DeliveryReport:
        """Post ``payload`` to every recipient; return by ``deadline`` (a ``clock()`` value) at the latest."""
        started = self._clock()
        delivery = _Delivery(recipients)
        worker_count = min(self.workers, len(recipients))
        futures = [
            self._pool.submit(self._drain, delivery, post, payload, deadline) for _ in range(worker_count)
        ]
        _, unfinished = wait(futures, timeout=max(0.0, deadline - self._clock()))
        if unfinished:
            delivery.over.set()
        report = delivery.report()
        report.elapsed_ms = (self._clock() - started) * 1000
        return report

    def _drain(self, delivery: _Delivery, post: Post, payload: bytes, deadline: float) -> None:
        while not delivery.over.is_set():
            connection_id = delivery.next()
            if connection_id is None:
                return
            delivery.finish(
                connection_id, self._post_with_retry(delivery, post, connection_id, payload, deadline)
            )

    def _post_with_retry(
        self, delivery: _Delivery, post: Post, connection_id: str, payload: bytes, deadline: float
    ) -> str | None:
        """Post once, retrying only 429; return None when delivered, else the outcome's reason."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                post(connection_id, payload)
                return None
            except Gone:
                return _GONE
            except Throttled as error:
                backoff = random.uniform(
                    0, min(self._backoff_cap_seconds, self._backoff_base_seconds * 2**attempt)
                )
                if attempt == self._max_attempts or self._clock() + backoff >= deadline:
                    return f"{error.status} {error.reason} after {attempt} attempts"
                # Wakes at once when the publish is over, so no worker outlives its deadline asleep.
                if delivery.over.wait(backoff):
                    return DEADLINE_EXCEEDED
            except DeliveryError as error:
                return f"{error.status or 'no answer'} {error.reason}"
        raise AssertionError("unreachable: the last attempt always returns")


_GONE = "gone"


class _Delivery:
    """The shared state of one publish: recipients not yet taken, those in flight, and outcomes."""

    def __init__(self, recipients: Sequence[str]) -> None:
        self.over = threading.Event()
        self._pending = deque(recipients)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._report = DeliveryReport(recipients=len(recipients))

    def next(self) -> str | None:
        with self._lock:
            if not self._pending:
                return None
            connection_id = self._pending.popleft()
            self._in_flight.add(connection_id)
            return connection_id

    def finish(self, connection_id: str, outcome: str | None) -> None:
        with self._lock:
            if connection_id not in self._in_flight:
                return  # the deadline already counted it
            self._in_flight.discard(connection_id)
            if outcome is None:
                self._report.delivered += 1
            elif outcome == _GONE:
                self._report.gone.append(connection_id)
            else:
                self._report.failed[connection_id] = outcome

    def report(self) -> DeliveryReport:
        """The outcomes so far; whatever is still pending or in flight counts as failed by the deadline."""
        with self._lock:
            for connection_id in [*self._in_flight, *self._pending]:
                self._report.failed[connection_id] = DEADLINE_EXCEEDED
            self._in_flight.clear()
            self._pending.clear()
            return DeliveryReport(
                recipients=self._report.recipients,
                delivered=self._report.delivered,
                gone=list(self._report.gone),
                failed=dict(self._report.failed),
            )
