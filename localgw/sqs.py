"""Lambda's SQS event source mapping, locally: pollers that read a queue and invoke its function.

As Lambda does for a standard queue: each poller long-polls the queue (``ReceiveMessage``), gathers up to
the mapping's batch size (waiting up to its batching window for more), invokes the function once with
the batch as an SQS event, and then deletes what succeeded:

- the function returned: every record, except those it names in ``{"batchItemFailures":
  [{"itemIdentifier": <messageId>}]}`` (a list naming an id that is not in the batch fails the whole
  batch, as Lambda treats it);
- the function raised or timed out: none.

What is not deleted becomes visible again after the queue's visibility timeout and is received again;
SQS itself moves a message to the dead-letter queue at the first receive after ``maxReceiveCount``, and
a watcher logs each one that arrives there. Pollers run as threads of the gateway's process; the
function runs in the runtime process like every other.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

from localgw.lambdaenv import HandlerError, LambdaFunction
from localgw.project import SqsSource
from testing.sqs import MAX_BATCH_ENTRIES, Queue, depth, record_from_message, sqs_event

# Each long poll returns after at most this long, so that a stop is noticed soon (Lambda waits 20 s).
LONG_POLL_SECONDS = 1
# How often the dead-letter queue's depth is read.
DLQ_WATCH_SECONDS = 1.0


def deletable(records: list[dict], response: object) -> tuple[list[dict], str]:
    """The records to delete after the function returned ``response``, and what to log about it."""
    failures = response.get("batchItemFailures") if isinstance(response, dict) else None
    if not failures:
        return records, f"{len(records)} records, 0 failed"
    ids = {record["messageId"] for record in records}
    named = [item.get("itemIdentifier") if isinstance(item, dict) else None for item in failures]
    if not all(identifier in ids for identifier in named):
        return [], f"{len(records)} records, all failed: batchItemFailures names an id not in the batch"
    failed = set(named)
    kept = [record for record in records if record["messageId"] not in failed]
    return kept, f"{len(records)} records, {len(failed)} failed"


class EventSourceMapping:
    """The pollers of one queue and its function; ``start`` once, ``stop`` once."""

    def __init__(
        self,
        function: LambdaFunction,
        source: SqsSource,
        queue: Queue,
        *,
        client,
        invoke: Callable[..., Future],
        timeout_seconds: float,
        pollers: int,
        max_receive_count: int,
        log_line: Callable[[str, str, str], None],
    ) -> None:
        self.function = function
        self.source = source
        self.queue = queue
        self.pollers = pollers
        self._client = client
        self._invoke = invoke
        self._timeout_seconds = timeout_seconds
        self._max_receive_count = max_receive_count
        self._line = log_line
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._in_flight: set[Future] = set()

    def start(self) -> None:
        targets = [self._poll] * self.pollers + [self._watch_dead_letters]
        for number, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"sqs-{self.source.queue}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; invocations in flight are abandoned (their messages would return to the queue)."""
        self._stop.set()
        with self._lock:
            for future in self._in_flight:
                future.cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---- a poller ---------------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._receive_batch()
            except Exception as error:  # the endpoint went away (a stop), or refused: say so, go on
                if self._stop.is_set():
                    return
                self._line("sqs", self.source.queue, f"ReceiveMessage failed: {error}")
                self._stop.wait(LONG_POLL_SECONDS)
                continue
            if messages:
                self._deliver(messages)

    def _receive_batch(self) -> list[dict]:
        """Up to the batch size: one long poll, then more until the batching window closes."""
        wanted = self.source.batch_size
        window_ends = time.monotonic() + self.source.maximum_batching_window_seconds
        messages = self._receive(min(wanted, MAX_BATCH_ENTRIES), LONG_POLL_SECONDS)
        while messages and len(messages) < wanted and not self._stop.is_set():
            left = window_ends - time.monotonic()
            if left <= 0:
                break
            messages += self._receive(min(wanted - len(messages), MAX_BATCH_ENTRIES), math.ceil(left))
        return messages

    def _receive(self, count: int, wait_seconds: int) -> list[dict]:
        answer = self._client.receive_message(
            QueueUrl=self.queue.url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=min(wait_seconds, 20),
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return answer.get("Messages", [])

    def _deliver(self, messages: list[dict]) -> None:
        records = [record_from_message(message, queue_arn=self.queue.arn) for message in messages]
        started = time.perf_counter()
        future = self._invoke(self.function, sqs_event(records), timeout_seconds=self._timeout_seconds)
        with self._lock:
            self._in_flight.add(future)
        try:
            response = future.result(self._timeout_seconds)
        except FutureTimeout:
            future.cancel()
            to_delete, outcome = [], f"ERR Task timed out after {self._timeout_seconds:.2f} seconds"
        except CancelledError:
            return  # stopping
        except HandlerError as error:
            to_delete, outcome = [], f"ERR {error}"
        else:
            to_delete, outcome = deletable(records, response)
        finally:
            with self._lock:
                self._in_flight.discard(future)
        if len(to_delete) < len(records):
            outcome += f"; {len(records) - len(to_delete)} return after the visibility timeout"
        elapsed_ms = (time.perf_counter() - started) * 1000
        if to_delete:
            self._delete(to_delete)
        self._line("sqs", self.function.name, f"{outcome} {elapsed_ms:.1f} ms")  # after: the queue shows it

    def _delete(self, records: list[dict]) -> None:
        for start in range(0, len(records), MAX_BATCH_ENTRIES):
            chunk = records[start : start + MAX_BATCH_ENTRIES]
            entries = [{"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(chunk)]
            with contextlib.suppress(Exception):  # a stale receipt handle: the message returns, as on AWS
                answer = self._client.delete_message_batch(QueueUrl=self.queue.url, Entries=entries)
                for failed in answer.get("Failed", []):
                    self._line("sqs", self.source.queue, f"DeleteMessageBatch refused: {failed}")

    # ---- the dead-letter queue --------------------------------------------------------------------

    def _watch_dead_letters(self) -> None:
        """Log each message SQS moved to the dead-letter queue (its depth grew)."""
        known = 0
        dlq = self.queue.dlq_url.rsplit("/", 1)[-1]
        while not self._stop.wait(DLQ_WATCH_SECONDS):
            try:
                visible, in_flight = depth(self._client, self.queue.dlq_url)
            except Exception:  # the endpoint is stopping
                continue
            now = visible + in_flight
            if now > known:
                self._line(
                    "dead-letter",
                    self.source.queue,
                    f"{now - known} message(s) moved to {dlq} after {self._max_receive_count} receives "
                    f"({now} there)",
                )
            known = now
