"""Concurrent delivery of one payload to many connections, within a deadline.

``posts_in_flight`` posts (``FANOUT_WORKERS``) are in flight at once. They are carried by a few
threads (created once per container), each taking a batch of up to ``POSTS_PER_THREAD`` recipients
from a shared queue and posting them together: one thread per post would spend its CPU handing the
interpreter lock around (bench/README.md). Each recipient's outcome is counted, never raised: one
failure never fails the publish. A retryable failure (429, 502, 503, a failed dial) is posted again
alone with full-jitter exponential backoff while the deadline allows; 410 is reported as gone so the
caller can forget those connections in one batch. The poster bounds every post by the deadline, so
when ``deliver`` returns no post is still running. This module knows nothing of Redis.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum

from chalicelib.management_api import DeliveryError, Gone

# Posts one payload to each connection id at once, none past the deadline (a ``time.monotonic()``
# value); returns each one's failure, or None where delivered.
PostMany = Callable[[Sequence[str], bytes, float], list[DeliveryError | None]]


class Outcome(StrEnum):
    """A recipient's outcome that is a state rather than an answer's status and reason; its value is
    the text its log line shows."""

    GONE = "gone"  # a 410: the connection leaves the registry
    DEADLINE_EXCEEDED = "deadline exceeded"  # in flight when the deadline came: perhaps posted
    BUDGET_DEADLINE = "deadline exceeded waiting for the post budget"
    NOT_STARTED = "deadline exceeded before it was posted"


def never_posted(outcome: str) -> bool:
    """Whether a failed recipient's outcome (``DeliveryReport.failed``) says it was certainly not posted
    to: sending to it again is no retry."""
    return outcome in (Outcome.BUDGET_DEADLINE, Outcome.NOT_STARTED)


# Chosen by measurement against 1 and 8 (bench/README.md).
POSTS_PER_THREAD = 4
# Time a handler keeps back from Lambda's remaining time, to log and return after a fan-out's deadline.
RETURN_MARGIN_SECONDS = 1.0
# How long ``deliver`` waits past the deadline for posts to notice it (each is bounded by it).
_DEADLINE_GRACE_SECONDS = 0.5


@dataclass
class DeliveryReport:
    recipients: int
    delivered: int = 0
    gone: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Fanout:
    def __init__(
        self,
        posts_in_flight: int,
        *,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.05,
        backoff_cap_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        threads = math.ceil(posts_in_flight / POSTS_PER_THREAD)
        # Batch sizes that add up to exactly ``posts_in_flight`` (64: 16 threads of 4).
        self._batch_sizes = [
            posts_in_flight // threads + (index < posts_in_flight % threads) for index in range(threads)
        ]
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fanout")
        self._max_attempts = max_attempts
        self._backoff_base_seconds = backoff_base_seconds
        self._backoff_cap_seconds = backoff_cap_seconds
        self._clock = clock

    def deliver(
        self, post_many: PostMany, payload: bytes, recipients: Sequence[str], *, deadline: float
    ) -> DeliveryReport:
        """Post ``payload`` to every recipient; return by ``deadline`` (a ``clock()`` value) at the latest."""
        delivery = _Delivery(recipients)
        batch_sizes = self._batch_sizes[: math.ceil(len(recipients) / POSTS_PER_THREAD)]
        futures = [
            self._pool.submit(self._drain, delivery, post_many, payload, deadline, batch_size)
            for batch_size in batch_sizes
        ]
        wait(futures, timeout=max(0.0, deadline - self._clock()) + _DEADLINE_GRACE_SECONDS)
        delivery.over.set()  # a poster that ignored the deadline takes no more recipients
        return delivery.report()

    def deliver_in_order(
        self, post_many: PostMany, payloads: Sequence[bytes], recipient: str, *, deadline: float
    ) -> tuple[int, str | None]:
        """Post ``payloads`` to one recipient one after another (their order is the point), in this
        thread, each with a fan-out's retries; stop at the first that fails: (how many were delivered,
        that one's outcome, or None). A thread hand-off per message would cost as much as its post."""
        never_over = threading.Event()
        for delivered, payload in enumerate(payloads):
            if self._clock() >= deadline:
                return delivered, Outcome.NOT_STARTED
            (failure,) = post_many([recipient], payload, deadline)
            outcome = _outcome(failure)
            if failure is not None and failure.retryable:
                outcome = self._retry(never_over, post_many, recipient, payload, deadline, failure)
            if outcome is not None:
                return delivered, outcome
        return len(payloads), None

    def _drain(
        self, delivery: _Delivery, post_many: PostMany, payload: bytes, deadline: float, batch_size: int
    ) -> None:
        while not delivery.over.is_set():
            batch = delivery.take(batch_size)
            if not batch:
                return
            for connection_id, failure in zip(batch, post_many(batch, payload, deadline), strict=True):
                if failure is not None and failure.retryable:
                    outcome = self._retry(delivery.over, post_many, connection_id, payload, deadline, failure)
                else:
                    outcome = _outcome(failure)
                delivery.finish(connection_id, outcome)

    def _retry(
        self,
        over: threading.Event,
        post_many: PostMany,
        connection_id: str,
        payload: bytes,
        deadline: float,
        failure: DeliveryError,
    ) -> str | None:
        """Post a recipient again, alone, with backoff, while its failure is retryable; its final outcome."""
        attempts = 1
        while attempts < self._max_attempts:
            cap = min(self._backoff_cap_seconds, self._backoff_base_seconds * 2**attempts)
            backoff = random.uniform(0, cap)
            if self._clock() + backoff >= deadline:
                break
            # Wakes at once when the publish is over, so no worker outlives its deadline asleep.
            if over.wait(backoff):
                return Outcome.DEADLINE_EXCEEDED
            (failure,) = post_many([connection_id], payload, deadline)
            attempts += 1
            if failure is None or not failure.retryable:
                return _outcome(failure)
        return f"{_outcome(failure)} after {attempts} attempts"


class NotPosted(DeliveryError):
    """A post the pacer held back past the deadline: it never left."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(connection_id, None, Outcome.BUDGET_DEADLINE)


def _outcome(failure: DeliveryError | None) -> str | None:
    """None when delivered, an ``Outcome`` for a state, else the answer's status and reason, to log."""
    if failure is None:
        return None
    if isinstance(failure, Gone):
        return Outcome.GONE
    if isinstance(failure, NotPosted):
        return Outcome.BUDGET_DEADLINE
    return f"{failure.status or 'no answer'} {failure.reason}"


class _Delivery:
    """The shared state of one publish: recipients not yet taken, those in flight, and outcomes."""

    def __init__(self, recipients: Sequence[str]) -> None:
        self.over = threading.Event()
        self._pending = deque(recipients)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._report = DeliveryReport(recipients=len(recipients))

    def take(self, count: int) -> list[str]:
        """Up to ``count`` recipients not yet taken, now in flight."""
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
            self._in_flight.update(batch)
            return batch

    def finish(self, connection_id: str, outcome: str | None) -> None:
        with self._lock:
            if connection_id not in self._in_flight:
                return  # the deadline already counted it
            self._in_flight.discard(connection_id)
            if outcome is None:
                self._report.delivered += 1
            elif outcome == Outcome.GONE:
                self._report.gone.append(connection_id)
            else:
                self._report.failed[connection_id] = outcome

    def report(self) -> DeliveryReport:
        """The outcomes so far; whatever is still pending or in flight counts as failed by the deadline."""
        with self._lock:
            for connection_id in self._in_flight:
                self._report.failed[connection_id] = Outcome.DEADLINE_EXCEEDED
            for connection_id in self._pending:
                self._report.failed[connection_id] = Outcome.NOT_STARTED
            self._in_flight.clear()
            self._pending.clear()
            return DeliveryReport(
                recipients=self._report.recipients,
                delivered=self._report.delivered,
                gone=list(self._report.gone),
                failed=dict(self._report.failed),
            )


# Takes n posts from the whole API's budget: (n, 0), or (0, seconds until they are there).
Lease = Callable[[int], tuple[int, float]]
# What a paced post waits for at most before asking the budget again.
_LEASE_RETRY_CAP_SECONDS = 1.0


class PostPacer:
    """Holds posts back to the whole API's post budget (``MAX_POSTS_PER_SECOND``), shared by every
    worker: posts are leased from it in chunks (one Redis round trip per ``chunk`` posts) and handed out
    to this invocation's posting threads. A post that cannot be leased before the deadline is not made.
    """

    def __init__(
        self,
        lease: Lease,
        *,
        chunk: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lease = lease
        self._chunk = chunk
        self._clock = clock
        self._sleep = sleep
        self._held = 0
        self._lock = threading.Lock()

    def paced(self, post_many: PostMany) -> PostMany:
        def post_when_allowed(
            batch: Sequence[str], payload: bytes, deadline: float
        ) -> list[DeliveryError | None]:
            allowed = self._acquire(len(batch), deadline)
            posted = post_many(batch[:allowed], payload, deadline) if allowed else []
            return [*posted, *(NotPosted(connection_id) for connection_id in batch[allowed:])]

        return post_when_allowed

    def _acquire(self, count: int, deadline: float) -> int:
        """How many of ``count`` posts may go: all, or what the budget gave before the deadline."""
        with self._lock:  # one thread asks the budget; the others wait for what it brings
            while self._held < count:
                granted, wait = self._lease(max(self._chunk, count - self._held))
                self._held += granted
                if granted:
                    continue
                pause = min(max(wait, 0.001), _LEASE_RETRY_CAP_SECONDS)
                if self._clock() + pause >= deadline:
                    break
                self._sleep(pause)
            allowed = min(count, self._held)
            self._held -= allowed
            return allowed
