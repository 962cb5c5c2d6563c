"""Queued fan-out's jobs: their shape, their encoding as SQS message bodies, and sending them.

A publish whose audience is larger than ``FANOUT_INLINE_MAX`` is not delivered by the invocation that
received it: it becomes one job per registry shard that has members, and the ``fanout_worker``
function delivers each. A job names either a shard to read (a first job) or its recipients (what a
worker hands on: the part of a large shard beyond what one invocation delivers, or the recipients a
worker could not deliver before its deadline). Every job carries the publish's id, so the publish
can be followed through every invocation's logs.

The body is JSON with the payload in base64: the payload is at most 128 KB, and SQS accepts neither
every character JSON text may hold raw (U+FFFE) nor, escaped, a body past 256 KiB.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import metrics
from chalicelib.log import logger

# SQS: a message, and a SendMessageBatch request, are at most 256 KiB; a batch is at most 10 entries.
MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10
# A job's body without its recipients, with room to spare (ids, api, channel, counters).
_HEADER_BYTES = 1024
# What a connection id adds to a job's list besides itself: its quotes and a comma.
_ID_OVERHEAD_BYTES = 3
_VERSION = 1


class InvalidJob(ValueError):
    """A body that is not a job this version reads: it goes to the dead-letter queue, never posted."""


@dataclass(frozen=True, kw_only=True)
class Job:
    """What one worker invocation delivers: a shard's audience, or the recipients listed."""

    publish_id: str
    api_id: str
    stage: str
    payload: bytes
    channel: str | None = None
    exclude: str | None = None  # the sender, when it published without echo
    shard: int | None = None
    recipients: tuple[str, ...] = ()
    attempt: int = 1  # how many times these recipients have been tried (recipient jobs)
    # When the publish was queued (unix seconds), carried by every job handed on or queued again: a job
    # older than API Gateway's longest connection reaches nobody who was connected then.
    queued_at: int = 0

    def to_body(self) -> str:
        document: dict[str, Any] = {
            "v": _VERSION,
            "publish": self.publish_id,
            "api": [self.api_id, self.stage],
            "payload": base64.b64encode(self.payload).decode(),
            "at": self.queued_at,
        }
        if self.channel is not None:
            document["channel"] = self.channel
        if self.exclude is not None:
            document["exclude"] = self.exclude
        if self.shard is not None:
            document["shard"] = self.shard
        else:
            document["recipients"] = list(self.recipients)
            document["attempt"] = self.attempt
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def from_body(cls, body: str) -> Job:
        try:
            document = json.loads(body)
            if document.get("v") != _VERSION:
                raise InvalidJob(f"not a version {_VERSION} job")
            api_id, stage = document["api"]
            shard = document.get("shard")
            recipients = tuple(document.get("recipients", ()))
            if (shard is None) == (not recipients) or not all(isinstance(r, str) for r in recipients):
                raise InvalidJob("a job names either a shard or its recipients")
            return cls(
                publish_id=str(document["publish"]),
                api_id=str(api_id),
                stage=str(stage),
                payload=base64.b64decode(document["payload"], validate=True),
                channel=document.get("channel"),
                exclude=document.get("exclude"),
                shard=None if shard is None else int(shard),
                recipients=recipients,
                attempt=int(document.get("attempt", 1)),
                queued_at=int(document.get("at", 0)),
            )
        except InvalidJob:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as problem:
            raise InvalidJob(f"unreadable job: {type(problem).__name__}: {problem}") from None

    def for_recipients(self, recipients: Sequence[str], *, attempt: int, most: int) -> list[Job]:
        """Jobs for these recipients, at most ``most`` each (what one invocation should deliver, so they
        run side by side), each body within SQS's limit."""
        room = MAX_BODY_BYTES - _HEADER_BYTES - 4 * (len(self.payload) + 2) // 3
        longest = max((len(connection_id.encode()) for connection_id in recipients), default=0)
        per_job = max(1, min(most, room // (longest + _ID_OVERHEAD_BYTES)))
        return [
            replace(self, shard=None, recipients=tuple(recipients[start : start + per_job]), attempt=attempt)
            for start in range(0, len(recipients), per_job)
        ]


class JobQueue:
    """Sends jobs to the fan-out queue with ``SendMessageBatch``: as few requests as the limits allow.

    The SQS client is made on the first send, so only invocations that queue pay for it.
    """

    def __init__(self, queue_url: str, client_factory: Callable[[], Any]) -> None:
        self._queue_url = queue_url
        self._client_factory = client_factory
        self._client: Any = None

    def queue(self, jobs: Sequence[Job], what: str) -> list[Job]:
        """Queue jobs (``what`` they are, for the log); log each SQS refused and return those (empty:
        all queued)."""
        failed = self.send(jobs)
        metrics.current().count(metrics.QUEUED_JOBS, len(jobs) - len(failed))
        for _, reason in failed:
            logger.error(f"job not queued ({what})", extra={"reason": reason})
        return [job for job, _ in failed]

    def send(self, jobs: Sequence[Job]) -> list[tuple[Job, str]]:
        """Queue every job; return those SQS did not take, each with the reason (empty: all queued)."""
        if self._client is None:
            self._client = self._client_factory()
        failed: list[tuple[Job, str]] = []
        for batch in _batches(jobs):
            entries = [{"Id": str(index), "MessageBody": body} for index, (_, body) in enumerate(batch)]
            try:
                answer = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as error:  # after botocore's own retries: the whole batch
                failed.extend((job, f"{type(error).__name__}: {error}") for job, _ in batch)
                continue
            for entry in answer.get("Failed", []):
                job, _ = batch[int(entry["Id"])]
                failed.append((job, f"{entry.get('Code')}: {entry.get('Message', '')}"))
        return failed


def _batches(jobs: Sequence[Job]) -> Iterator[list[tuple[Job, str]]]:
    """Jobs with their bodies, at most 10 a batch and at most 256 KiB of bodies a batch."""
    batch: list[tuple[Job, str]] = []
    size = 0
    for job in jobs:
        body = job.to_body()
        length = len(body.encode())
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + length > MAX_BODY_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((job, body))
        size += length
    if batch:
        yield batch
