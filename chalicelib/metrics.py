"""What one invocation did, as CloudWatch metrics: one Embedded Metric Format (EMF) log line.

CloudWatch Logs turns a log line shaped as EMF into metrics by itself, so recording costs the handler
no API call, no permission and no latency: one JSON line on stdout at the end of the invocation,
and nothing when nothing was recorded. Written here rather than with Powertools for AWS Lambda's
``Metrics``, whose import would cost every cold start more than this whole module (see
bench/README.md, "metrics").

The names below are the single source of the metric and dimension names: the template's dashboard
and alarms (infra/) are checked against them by tests/deploy, so nothing alarms on a metric that is
never written. Dimensions are few because every combination of dimension values is a custom metric
CloudWatch bills by the month: every metric has ``FunctionName`` alone (the Lambda function, as
Lambda's own metrics name it), and ``ConnectRefused`` has ``FunctionName`` and ``Reason``, whose
values are the fixed set ``REASONS`` (never a user's input, so never unbounded).

Use: the handler opens ``recording(namespace, function_name)`` around the invocation (it flushes
on the way out, even after an exception); the use cases record their outcomes into ``current()``::

    with metrics.recording(settings.metrics_namespace, context.function_name):
        ...
        metrics.current().delivery(report, elapsed_ms)

Outside ``recording`` (unit tests, scripts), ``current()`` is a recorder nobody writes out.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from chalicelib.settings import METRICS_NAMESPACE_DEFAULT as NAMESPACE_DEFAULT

if TYPE_CHECKING:
    from chalicelib.fanout import DeliveryReport

# Metric names. Counts unless said otherwise.
DELIVERED = "Delivered"  # posts API Gateway accepted
GONE = "Gone"  # recipients that had left (410), removed from the registry
FAILED = "Failed"  # recipients not delivered after retries or the deadline
RECIPIENTS = "Recipients"  # the audience of a publish or a job
FANOUT_DURATION = "FanoutDuration"  # milliseconds from the publish's start to its last post's answer
PUBLISHED = "Published"  # messages accepted for delivery (inline or queued)
RATE_LIMITED = "RateLimited"  # messages refused by the sender's rate (429)
OVER_CAPACITY = "OverCapacity"  # publishes refused by the API's post budget (503)
CONNECT_REFUSED = "ConnectRefused"  # handshakes refused, by Reason
CONNECTED = "Connected"  # handshakes accepted and registered
DISCONNECTED = "Disconnected"  # connections removed at $disconnect
QUEUED_JOBS = "QueuedJobs"  # fan-out jobs sent to the queue (first sends, hand-ons and retries)
REPLAYED = "Replayed"  # publications replayed to a recovering subscriber

COUNT, MILLISECONDS = "Count", "Milliseconds"
UNITS: dict[str, str] = {
    DELIVERED: COUNT,
    GONE: COUNT,
    FAILED: COUNT,
    RECIPIENTS: COUNT,
    FANOUT_DURATION: MILLISECONDS,
    PUBLISHED: COUNT,
    RATE_LIMITED: COUNT,
    OVER_CAPACITY: COUNT,
    CONNECT_REFUSED: COUNT,
    CONNECTED: COUNT,
    DISCONNECTED: COUNT,
    QUEUED_JOBS: COUNT,
    REPLAYED: COUNT,
}

# Dimension names.
FUNCTION_NAME = "FunctionName"
REASON = "Reason"
# Why a handshake was refused (ConnectRefused's Reason): each value is a metric of its own.
NO_TOKEN = "NoToken"  # 401, no token anywhere
BAD_TOKEN = "BadToken"  # 401, a token that does not verify (signature, expiry, issuer, claims...)
ORIGIN = "Origin"  # 403, an Origin not in ALLOWED_ORIGINS
CHANNEL_FORBIDDEN = "ChannelForbidden"  # 403, ?channels= names one the token does not allow
BAD_REQUEST = "BadRequest"  # 400, a malformed ?channels= or connection id
KEYS_UNAVAILABLE = "KeysUnavailable"  # 503, the JWKS or the SSM secret could not be read
REDIS_DOWN = "RedisDown"  # 503, the registry is unreachable
REASONS = (NO_TOKEN, BAD_TOKEN, ORIGIN, CHANNEL_FORBIDDEN, BAD_REQUEST, KEYS_UNAVAILABLE, REDIS_DOWN)

# EMF keeps at most 100 values of one metric in one document.
MAX_VALUES = 100


class Metrics:
    """One invocation's counts and durations, and the one EMF document they make."""

    def __init__(
        self,
        namespace: str = NAMESPACE_DEFAULT,
        function_name: str = "local",
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._namespace = namespace
        self._function_name = function_name
        self._wall_clock = wall_clock
        self._counts: dict[str, float] = {}
        self._durations: dict[str, list[float]] = {}
        self._reason: str | None = None

    def count(self, name: str, n: float = 1) -> None:
        """Add ``n`` (0 too: a zero is a data point, so a graph shows 0 rather than a gap)."""
        _check(name, COUNT)
        if name == CONNECT_REFUSED:
            raise ValueError("a refused handshake is recorded with refused(reason), which says why")
        if n < 0:
            raise ValueError(f"{name} counts up: got {n}")
        self._counts[name] = self._counts.get(name, 0) + n

    def duration_ms(self, name: str, ms: float) -> None:
        """One duration; each is kept (up to 100 a document), so percentiles see every one."""
        _check(name, MILLISECONDS)
        values = self._durations.setdefault(name, [])
        if len(values) < MAX_VALUES:
            values.append(round(max(0.0, ms), 3))

    def refused(self, reason: str) -> None:
        """A refused handshake. One invocation refuses one handshake, so it has one reason."""
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}: one of {', '.join(REASONS)}")
        if self._reason not in (None, reason):
            raise ValueError(f"this invocation already refused a handshake for {self._reason}")
        self._reason = reason
        self._counts[CONNECT_REFUSED] = self._counts.get(CONNECT_REFUSED, 0) + 1

    def delivery(self, report: DeliveryReport, elapsed_ms: float) -> None:
        """A fan-out's outcome (an inline publish or a queued job), the figures its log line has."""
        self.count(RECIPIENTS, report.recipients)
        self.count(DELIVERED, report.delivered)
        self.count(GONE, len(report.gone))
        self.count(FAILED, len(report.failed))
        self.duration_ms(FANOUT_DURATION, elapsed_ms)

    def document(self) -> dict | None:
        """The EMF document of what was recorded; None when nothing was."""
        values: dict[str, float | list[float]] = {
            name: n for name, n in self._counts.items() if name != CONNECT_REFUSED
        }
        values.update(
            (name, durations[0] if len(durations) == 1 else durations)
            for name, durations in self._durations.items()
        )
        directives = []
        if values:
            directives.append(self._directive([FUNCTION_NAME], values))
        if self._reason is not None:
            directives.append(self._directive([FUNCTION_NAME, REASON], [CONNECT_REFUSED]))
        if not directives:
            return None
        document: dict = {
            "_aws": {"Timestamp": int(self._wall_clock() * 1000), "CloudWatchMetrics": directives},
            FUNCTION_NAME: self._function_name,
            **values,
        }
        if self._reason is not None:
            document[REASON] = self._reason
            document[CONNECT_REFUSED] = self._counts[CONNECT_REFUSED]
        return document

    def flush(self, write: Callable[[str], object]) -> None:
        """Write the document as one line (nothing when nothing was recorded), then start afresh."""
        document = self.document()
        self._counts, self._durations, self._reason = {}, {}, None
        if document is not None:
            write(json.dumps(document, separators=(",", ":")) + "\n")

    def _directive(self, dimensions: list[str], names) -> dict:
        return {
            "Namespace": self._namespace,
            "Dimensions": [dimensions],
            "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in names],
        }


def _check(name: str, unit: str) -> None:
    if UNITS.get(name) != unit:
        raise ValueError(f"{name!r} is not a metric in {unit}: see chalicelib/metrics.py's names")


_invocation = threading.local()


@contextmanager
def recording(
    namespace: str, function_name: str, write: Callable[[str], object] | None = None
) -> Iterator[Metrics]:
    """The invocation's recorder, ``current()`` on this thread until the block ends, then written
    out (to stdout, which Lambda sends to the function's log group). Per thread, because the local
    gateway runs several invocations at once in one process."""
    recorder = Metrics(namespace, function_name)
    _invocation.recorder = recorder
    try:
        yield recorder
    finally:
        _invocation.recorder = None
        recorder.flush(write or sys.stdout.write)


def current() -> Metrics:
    """This thread's invocation's recorder; outside ``recording``, one that is never written out."""
    return getattr(_invocation, "recorder", None) or Metrics()
