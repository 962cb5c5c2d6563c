"""The queue's worker: each job of a queued broadcast delivered before Lambda's deadline, and what goes
again, as which attempt, when a job's delivery falls short.

A job's recipients are tried ``MAX_JOB_ATTEMPTS`` times (each a worker invocation), then given up;
recipients never posted to (the deadline came first, or the budget's turn did not) go again as the
same attempt, since sending to them is no retry. What one invocation should not carry is handed on
first, so a failure to queue all of it leaves nothing posted and the whole job can be retried
without a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from chalicelib import metrics
from chalicelib.fanout import RETURN_MARGIN_SECONDS, Fanout, PostPacer, never_posted
from chalicelib.jobs import InvalidJob, Job, JobQueue
from chalicelib.log import logger, publish_key
from chalicelib.management_api import ManagementApis
from chalicelib.registry import ConnectionRegistry, RegistryUnavailable, Snapshot

MAX_JOB_ATTEMPTS = 3


def jobs_again(job: Job, failed: Mapping[str, str], *, most: int) -> tuple[list[Job], int]:
    """The jobs that carry a delivery's failed recipients (``DeliveryReport.failed``) again, and how
    many recipients are given up (tried and failed in the last attempt)."""
    untried = [member for member, reason in failed.items() if never_posted(reason)]
    tried = [member for member, reason in failed.items() if not never_posted(reason)]
    retried = [] if job.attempt >= MAX_JOB_ATTEMPTS else tried
    jobs = [
        *job.for_recipients(untried, attempt=job.attempt, most=most),
        *job.for_recipients(retried, attempt=job.attempt + 1, most=most),
    ]
    return jobs, len(tried) - len(retried)


class Worker:
    """The ``fanout_worker`` function's use case."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        management_apis: ManagementApis,
        fanout: Fanout,
        job_queue: JobQueue | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``job_queue``: where the worker hands on and re-queues (None: it refuses every job)."""
        self._registry = registry
        self._management_apis = management_apis
        self._fanout = fanout
        self._job_queue = job_queue
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep

    def deliver_jobs(self, records: Sequence[tuple[str, str]], remaining_seconds: float) -> list[str]:
        """The queue's worker: deliver each job (``(message id, body)``) before Lambda's deadline;
        return the message ids SQS must deliver again (none of their recipients was posted to,
        unless the log says a retry may repeat some)."""
        if self._job_queue is None:
            logger.error("the worker needs FANOUT_QUEUE_URL (it hands on and re-queues through it); set it")
            return [message_id for message_id, _ in records]
        deadline = self._clock() + max(0.0, remaining_seconds - RETURN_MARGIN_SECONDS)
        retry = []
        for message_id, body in records:
            try:
                job = Job.from_body(body)
            except InvalidJob as problem:
                logger.error(
                    "job unreadable: after its retries it goes to the dead-letter queue",
                    extra={"message_id": message_id, "reason": str(problem)},
                )
                retry.append(message_id)
                continue
            with publish_key(job.publish_id):
                if self._clock() >= deadline or not self._deliver_job(job, deadline):
                    retry.append(message_id)
        return retry

    def _deliver_job(self, job: Job, deadline: float) -> bool:
        """Deliver one job; False when SQS must deliver it again."""
        started = self._clock()
        if job.queued_at and self._wall_clock() - job.queued_at >= self._registry.max_age_seconds:
            logger.warning(
                "job expired: nobody connected when it was published is connected still; dropped",
                extra={"channel": job.channel, "recipients": len(job.recipients), "queued_at": job.queued_at},
            )
            return True
        try:
            snapshot = (
                self._registry.read_shard(job.shard, job.channel)
                if job.shard is not None
                else Snapshot(live=list(job.recipients), stale=[])
            )
        except RegistryUnavailable:
            logger.exception("job not delivered: registry unavailable; SQS delivers it again")
            return False
        recipients = [member for member in snapshot.live if member != job.exclude]
        # What one invocation delivers well; the rest is handed on first, so a failure to queue all of it
        # leaves nothing posted and the whole job can be retried without a duplicate. What SQS took of a
        # partly failed hand-on is not sent again: the rest goes with this job's retries, below.
        most = self._registry.inline_max
        mine, rest = recipients[:most], recipients[most:]
        handed_on = job.for_recipients(rest, attempt=1, most=most)
        not_handed_on = self._job_queue.queue(handed_on, "handed on") if rest else []
        if not_handed_on and len(not_handed_on) == len(handed_on):
            return False
        api = self._management_apis.for_event(job.api_id, job.stage)
        pacer = PostPacer(
            self._lease, chunk=self._registry.post_lease_chunk, clock=self._clock, sleep=self._sleep
        )
        report = self._fanout.deliver(pacer.paced(api.post_many), job.payload, mine, deadline=deadline)
        retries, given_up = jobs_again(job, report.failed, most=most)
        again = [*not_handed_on, *retries]
        sent_again = not again or not self._job_queue.queue(again, "retry")
        try:
            self._registry.forget([*report.gone, *snapshot.stale], job.channel)
        except RegistryUnavailable:
            logger.exception("could not forget gone connections; the next publish retries")
        elapsed_ms = round((self._clock() - started) * 1000, 1)
        metrics.current().delivery(report, elapsed_ms)
        logger.info(
            "delivered",
            extra={
                "channel": job.channel,
                "shard": job.shard,
                "attempt": job.attempt,
                "recipients": report.recipients,
                "delivered": report.delivered,
                "gone": len(report.gone),
                "failed": len(report.failed),
                "stale": len(snapshot.stale),
                "handed_on": len(rest) - sum(len(left.recipients) for left in not_handed_on),
                "queued_again": sum(len(retry.recipients) for retry in again) if sent_again else 0,
                "given_up": given_up,
                "elapsed_ms": elapsed_ms,
            },
        )
        if not sent_again:
            logger.warning(
                "the job is retried whole: its delivered recipients may receive it twice",
                extra={"delivered": report.delivered},
            )
            return False
        return True

    def _lease(self, count: int) -> tuple[int, float]:
        try:
            return self._registry.lease_posts(count)
        except RegistryUnavailable:
            logger.exception("post budget unavailable; waiting")
            return 0, 1.0
