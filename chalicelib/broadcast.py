"""The use cases: connect, disconnect, publish (from a connection or a backend), and a queued job's
delivery; each returns what its handler answers.

Kept apart from ``app.py`` so they run without Chalice in unit tests, and so each handler stays one
line. Every outcome a user could notice is logged here, once.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from chalicelib import envelope, metrics
from chalicelib.auth import (
    AuthUnavailable,
    Forbidden,
    Gatekeeper,
    MissingToken,
    Refused,
    TokenVerifier,
    Unauthorized,
)
from chalicelib.fanout import NEVER_POSTED, DeliveryReport, Fanout, PostPacer
from chalicelib.gateway_event import GatewayEvent
from chalicelib.jobs import InvalidJob, Job, JobQueue
from chalicelib.log import logger, publish_key
from chalicelib.management_api import DeliveryError, Gone, ManagementApi, ManagementApis
from chalicelib.registry import (
    HANDSHAKE_WINDOW_SECONDS,
    ChannelForbidden,
    ConnectionClosed,
    ConnectionRegistry,
    InvalidConnectionId,
    OverCapacity,
    OverLimit,
    Queued,
    RateLimited,
    Recovery,
    Refusal,
    RegistryUnavailable,
    Snapshot,
    TooManyChannels,
)
from chalicelib.settings import Settings

OK, ACCEPTED, BAD_REQUEST, FORBIDDEN, GONE, PAYLOAD_TOO_LARGE, TOO_MANY_REQUESTS, UNAVAILABLE = (
    200,
    202,
    400,
    403,
    410,
    413,
    429,
    503,
)
# Time kept back from Lambda's remaining time, to log and return after the fan-out's deadline.
_RETURN_MARGIN_SECONDS = 1.0
# The first pause before a reply that got 410 from a connection in its handshake window is tried again.
_HANDSHAKE_RETRY_SECONDS = 0.05
# Failed recipients logged one per line; past this many, only the summary counts them.
_MAX_FAILURE_LINES = 20
_REGISTRY_DOWN_MESSAGE = "the service cannot reach its connection registry; send the message again shortly"
_QUEUE_DOWN_MESSAGE = "the service could not queue this broadcast; send it again shortly"
# A queued job's recipients are tried this many times (each a worker invocation), then given up.
MAX_JOB_ATTEMPTS = 3
_NO_WEBSOCKET_API = (
    "this stage does not know its WebSocket API: set WEBSOCKET_API_ID (the deployed template sets it)"
)
# What a sender is told when the registry refuses its message: code, status, message.
_REFUSAL_REPLIES = {
    RegistryUnavailable: (envelope.REGISTRY_UNAVAILABLE, UNAVAILABLE, _REGISTRY_DOWN_MESSAGE),
    RateLimited: (
        envelope.RATE_LIMITED,
        TOO_MANY_REQUESTS,
        "you are sending faster than this service allows; nothing was published",
    ),
    OverCapacity: (
        envelope.OVER_CAPACITY,
        UNAVAILABLE,
        "the service is at its delivery capacity; nothing was published",
    ),
    ChannelForbidden: (
        envelope.CHANNEL_FORBIDDEN,
        FORBIDDEN,
        'your token does not allow this channel (its "channels" claim)',
    ),
    TooManyChannels: (
        envelope.TOO_MANY_CHANNELS,
        BAD_REQUEST,
        "this connection is in as many channels as it may be; unsubscribe from one first",
    ),
}
# The metric a refusal by the registry counts (other refusals count none).
_REFUSAL_METRICS = {RateLimited: metrics.RATE_LIMITED, OverCapacity: metrics.OVER_CAPACITY}
# ConnectRefused's Reason for a refusal by the gatekeeper, by class (a subclass takes its base's).
_HANDSHAKE_REASONS = {
    MissingToken: metrics.NO_TOKEN,
    Unauthorized: metrics.BAD_TOKEN,
    Forbidden: metrics.ORIGIN,
    AuthUnavailable: metrics.KEYS_UNAVAILABLE,
}


class Broadcaster:
    def __init__(
        self,
        registry: ConnectionRegistry,
        management_apis: ManagementApis,
        fanout: Fanout,
        gatekeeper: Gatekeeper,
        *,
        publish_deadline_seconds: float,
        websocket_api: tuple[str, str] | None = None,
        job_queue: JobQueue | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``websocket_api``: the (api id, stage) a backend publish posts through; ``job_queue``: where
        audiences larger than the registry's inline max go (None: every audience is delivered inline)."""
        self._registry = registry
        self._management_apis = management_apis
        self._fanout = fanout
        self._gatekeeper = gatekeeper
        self._publish_deadline_seconds = publish_deadline_seconds
        self._websocket_api = websocket_api
        self._job_queue = job_queue
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, session: boto3.session.Session) -> Broadcaster:
        return cls(
            ConnectionRegistry.from_settings(settings, session),
            ManagementApis(settings, session),
            Fanout(settings.fanout_workers),
            Gatekeeper(_verifier(settings, session), settings.allowed_origins),
            publish_deadline_seconds=settings.publish_deadline_seconds,
            websocket_api=settings.websocket_api,
            job_queue=(
                JobQueue(
                    settings.fanout_queue_url, lambda: session.client("sqs", region_name=settings.aws_region)
                )
                if settings.fanout_queue_url
                else None
            ),
        )

    def connect(self, event: GatewayEvent) -> dict:
        """Decide the handshake, then register the connection and the channels it asked for.

        Nothing is posted to it during $connect: until $connect returns, it does not exist.
        """
        try:
            admission = self._gatekeeper.admit(event.headers, event.query)
            channels = envelope.parse_channels(event.query.get("channels"))
            self._registry.add(
                event.connection_id,
                event.connected_at_ms,
                admission.principal,
                admission.permissions,
                channels,
            )
        except Refused as refusal:
            return _refuse_handshake(refusal.status, refusal.reason, _handshake_reason(refusal))
        except envelope.InvalidMessage as problem:
            return _refuse_handshake(BAD_REQUEST, f"?channels=: {problem.message}", metrics.BAD_REQUEST)
        except ChannelForbidden as refusal:
            text = f"your token does not allow the channel {refusal.channel}"
            return _refuse_handshake(FORBIDDEN, text, metrics.CHANNEL_FORBIDDEN)
        except TooManyChannels:
            text = "?channels= names more channels than a connection may join"
            return _refuse_handshake(BAD_REQUEST, text, metrics.BAD_REQUEST)
        except InvalidConnectionId:
            return _refuse_handshake(BAD_REQUEST, "not an API Gateway connection id", metrics.BAD_REQUEST)
        except RegistryUnavailable:
            logger.exception("connect failed: registry unavailable")
            return _refuse_handshake(UNAVAILABLE, _REGISTRY_DOWN_MESSAGE, metrics.REDIS_DOWN, logged=True)
        logger.info("connected", extra={"principal": admission.principal, "channels": list(channels)})
        metrics.current().count(metrics.CONNECTED)
        if admission.subprotocol:
            return {"statusCode": OK, "headers": {"Sec-WebSocket-Protocol": admission.subprotocol}}
        return {"statusCode": OK}

    def disconnect(self, event: GatewayEvent) -> dict:
        try:
            self._registry.remove(event.connection_id)
        except InvalidConnectionId as problem:
            logger.warning("disconnect refused", extra={"reason": str(problem)})
            return {"statusCode": BAD_REQUEST}
        except RegistryUnavailable:
            logger.exception("disconnect failed: registry unavailable")
            return {"statusCode": UNAVAILABLE}
        logger.info("disconnected")
        metrics.current().count(metrics.DISCONNECTED)
        return {"statusCode": OK}

    def publish(self, event: GatewayEvent, remaining_seconds: float) -> dict:
        """Validate the sender's message and deliver it to its audience: every live connection, or a
        channel's members (the sender only with echo). Keepalives and channel requests are answered
        to their sender alone.
        """
        started = self._clock()
        api = self._management_apis.for_event(event.api_id, event.stage)
        replies = _Replies(api, event.connection_id, event.connected_at_ms, self._wall_clock, self._sleep)
        sender = event.connection_id
        try:
            message = envelope.parse(event.body)
            if not isinstance(message, envelope.Publication):
                return self._answer(replies, event, message, started, remaining_seconds)
            payload = envelope.encode_publication(message, received=event.request_time_ms // 1000)
            snapshot = self._registry.begin_publish(
                sender,
                event.connected_at_ms,
                include_sender=message.echo,
                channel=message.channel,
                payload=payload,
            )
        except envelope.InvalidMessage as problem:
            logger.warning("message rejected", extra={"error_code": problem.code, "reason": problem.message})
            return self._answer_invalid(replies, event, problem)
        except (RegistryUnavailable, Refusal, ConnectionClosed) as refusal:
            return _answer_refusal(replies, refusal)
        payload = envelope.positioned(payload, snapshot.suffix)
        if isinstance(snapshot, Queued):
            exclude = None if message.echo else sender
            if not self._enqueue(event.api_id, event.stage, payload, snapshot, message.channel, exclude):
                replies.error(envelope.QUEUE_UNAVAILABLE, _QUEUE_DOWN_MESSAGE)
                return {"statusCode": UNAVAILABLE}
            return {"statusCode": OK}
        recipients = [member for member in snapshot.live if message.echo or member != sender]
        self._deliver(api, payload, snapshot, recipients, message.channel, started, remaining_seconds)
        return {"statusCode": OK}

    def _answer(
        self,
        replies: _Replies,
        event: GatewayEvent,
        message: object,
        started: float,
        remaining_seconds: float,
    ) -> dict:
        """A keepalive, channel request, resume or presence question: answered to its sender alone,
        then, for a recovery, every message it missed, in order."""
        sender, connected_at_ms = event.connection_id, event.connected_at_ms
        replay: list[bytes] = []
        if message is envelope.PING:
            lost = self._registry.touch(sender, connected_at_ms)
            answer, what = envelope.encode_pong(event.request_time_ms // 1000, lost=lost), "pong"
        elif isinstance(message, envelope.Resume):
            joined = self._registry.resume(sender, connected_at_ms, _since(message.since))
            recovery = joined.recovery
            answer, what = envelope.encode_resumed(lost=joined.lost, **_recovery_fields(recovery)), "resume"
            replay = recovery.replay if recovery else []
        elif message.action == "presence":
            presence = self._registry.presence(sender, connected_at_ms, message.channel)
            answer = envelope.encode_presence(
                message.channel, presence.count, presence.members, lost=presence.lost
            )
            what = "presence"
        elif message.action == "subscribe":
            joined = self._registry.subscribe(sender, connected_at_ms, message.channel, _since(message.since))
            recovery = joined.recovery
            answer = envelope.encode_ack(message, lost=joined.lost, **_recovery_fields(recovery))
            what, replay = "acknowledgement", recovery.replay if recovery else []
            logger.info("subscribed", extra={"channel": message.channel})
        else:
            lost = self._registry.unsubscribe(sender, connected_at_ms, message.channel)
            answer, what = envelope.encode_ack(message, lost=lost), "acknowledgement"
            logger.info("unsubscribed", extra={"channel": message.channel})
        if replies.post(answer, what=what) and replay:
            self._replay(replies, replay, started, remaining_seconds)
        return {"statusCode": OK}

    def _replay(
        self, replies: _Replies, messages: list[bytes], started: float, remaining_seconds: float
    ) -> None:
        """Post the missed messages one after another (their order is the point), through the same
        fan-out as any publish (retries, deadline); stop at the first that fails: the client sees the
        gap by its offsets and recovers again."""
        deadline = started + max(
            0.0, min(self._publish_deadline_seconds, remaining_seconds - _RETURN_MARGIN_SECONDS)
        )
        replayed = 0
        for message in messages:
            report = self._fanout.deliver(
                replies.api.post_many, message, [replies.connection_id], deadline=deadline
            )
            if not report.delivered:
                logger.warning(
                    "replay cut short", extra={"reason": next(iter(report.failed.values()), "gone")}
                )
                break
            replayed += 1
        logger.info("replayed", extra={"messages": replayed, "missed": len(messages)})
        metrics.current().count(metrics.REPLAYED, replayed)

    def _answer_invalid(
        self, replies: _Replies, event: GatewayEvent, problem: envelope.InvalidMessage
    ) -> dict:
        """A message that did not parse takes the sender's token like any other, so a flood of them is
        held to the sender's rate (then answered once, with rate_limited). While Redis is down it cannot
        be metered, and is answered."""
        sender = event.connection_id
        try:
            self._registry.refuse(sender, event.connected_at_ms)
        except RegistryUnavailable:
            logger.warning("the refused message is not metered: registry unavailable")
        except (OverLimit, ConnectionClosed) as refusal:
            return _answer_refusal(replies, refusal)
        replies.error(problem.code, problem.message)
        return {"statusCode": _status_of(problem)}

    def publish_from_backend(self, body: str | bytes | None, remaining_seconds: float) -> tuple[int, dict]:
        """``POST /publish``: the same envelope, limits and fan-out, with no sender; the status and
        either the delivery report or ``{"error": ...}``.
        """
        started = self._clock()
        try:
            message = envelope.parse(body)
            if not isinstance(message, envelope.Publication):
                raise envelope.InvalidMessage(
                    envelope.UNKNOWN_ACTION, 'POST /publish takes a message to publish, not an "action"'
                )
            payload = envelope.encode_publication(message, received=int(self._wall_clock()))
            if self._websocket_api is None:
                logger.error("backend publish: WEBSOCKET_API_ID is not set")
                return UNAVAILABLE, envelope.error_document(envelope.REGISTRY_UNAVAILABLE, _NO_WEBSOCKET_API)
            snapshot = self._registry.begin_backend_publish(message.channel, payload)
        except envelope.InvalidMessage as problem:
            logger.warning(
                "backend publish rejected", extra={"error_code": problem.code, "reason": problem.message}
            )
            return _status_of(problem), envelope.error_document(problem.code, problem.message)
        except (RegistryUnavailable, OverLimit) as refusal:
            code, status, text, retry_after_ms = _refusal_reply(refusal)
            return status, envelope.error_document(code, text, retry_after_ms=retry_after_ms)
        payload = envelope.positioned(payload, snapshot.suffix)
        if isinstance(snapshot, Queued):
            publish_id = self._enqueue(*self._websocket_api, payload, snapshot, message.channel, None)
            if not publish_id:
                return UNAVAILABLE, envelope.error_document(envelope.QUEUE_UNAVAILABLE, _QUEUE_DOWN_MESSAGE)
            return ACCEPTED, {"recipients": snapshot.recipients, "queued": publish_id}
        api = self._management_apis.for_event(*self._websocket_api)
        report = self._deliver(
            api, payload, snapshot, snapshot.live, message.channel, started, remaining_seconds
        )
        return OK, {
            "recipients": report.recipients,
            "delivered": report.delivered,
            "gone": len(report.gone),
            "failed": len(report.failed),
        }

    def deliver_jobs(self, records: Sequence[tuple[str, str]], remaining_seconds: float) -> list[str]:
        """The queue's worker: deliver each job (``(message id, body)``) before Lambda's deadline;
        return the message ids SQS must deliver again (none of their recipients was posted to,
        unless the log says a retry may repeat some)."""
        if self._job_queue is None:
            logger.error("the worker needs FANOUT_QUEUE_URL (it hands on and re-queues through it); set it")
            return [message_id for message_id, _ in records]
        deadline = self._clock() + max(0.0, remaining_seconds - _RETURN_MARGIN_SECONDS)
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

    def _enqueue(
        self,
        api_id: str,
        stage: str,
        payload: bytes,
        queued: Queued,
        channel: str | None,
        exclude: str | None,
    ) -> str | None:
        """One job per shard with members; the publish's id, or None when SQS took none of them."""
        publish_id = uuid.uuid4().hex
        jobs = [
            Job(
                publish_id=publish_id,
                api_id=api_id,
                stage=stage,
                payload=payload,
                channel=channel,
                exclude=exclude,
                shard=shard,
                queued_at=int(self._wall_clock()),
            )
            for shard in sorted(queued.sizes)
        ]
        with publish_key(publish_id):
            failed = len(self._send_jobs(jobs, "publish"))
            logger.info(
                "queued",
                extra={
                    "channel": channel,
                    "recipients": queued.recipients,
                    "jobs": len(jobs),
                    "failed_jobs": failed,
                },
            )
        if failed == len(jobs):
            return None
        metrics.current().count(metrics.PUBLISHED)
        return publish_id

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
        not_handed_on = self._send_jobs(handed_on, "handed on") if rest else []
        if not_handed_on and len(not_handed_on) == len(handed_on):
            return False
        api = self._management_apis.for_event(job.api_id, job.stage)
        pacer = PostPacer(
            self._lease, chunk=self._registry.post_lease_chunk, clock=self._clock, sleep=self._sleep
        )
        report = self._fanout.deliver(pacer.paced(api.post_many), job.payload, mine, deadline=deadline)
        # Recipients never posted to (the deadline came first, or the budget's turn did not) go again
        # as the same attempt; those tried and failed go again as the next, up to MAX_JOB_ATTEMPTS.
        untried = [member for member, reason in report.failed.items() if reason in NEVER_POSTED]
        tried = [member for member, reason in report.failed.items() if reason not in NEVER_POSTED]
        retried = [] if job.attempt >= MAX_JOB_ATTEMPTS else tried
        again = [
            *not_handed_on,
            *job.for_recipients(untried, attempt=job.attempt, most=most),
            *job.for_recipients(retried, attempt=job.attempt + 1, most=most),
        ]
        sent_again = not again or not self._send_jobs(again, "retry")
        try:
            self._registry.forget([*report.gone, *snapshot.stale], job.channel)
        except RegistryUnavailable:
            logger.exception("could not forget gone connections; the next publish retries")
        elapsed_ms = round((self._clock() - started) * 1000, 1)
        _count_delivery(report, elapsed_ms)
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
                "given_up": len(tried) - len(retried),
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

    def _send_jobs(self, jobs: list[Job], what: str) -> list[Job]:
        """Queue jobs; log each SQS refused and return those (empty: all queued)."""
        failed = self._job_queue.send(jobs)
        metrics.current().count(metrics.QUEUED_JOBS, len(jobs) - len(failed))
        for _, reason in failed:
            logger.error(f"job not queued ({what})", extra={"reason": reason})
        return [job for job, _ in failed]

    def _lease(self, count: int) -> tuple[int, float]:
        try:
            return self._registry.lease_posts(count)
        except RegistryUnavailable:
            logger.exception("post budget unavailable; waiting")
            return 0, 1.0

    def _deliver(
        self,
        api: ManagementApi,
        payload: bytes,
        snapshot: Snapshot,
        recipients: list[str],
        channel: str | None,
        started: float,
        remaining_seconds: float,
    ) -> DeliveryReport:
        """Post to every recipient within the deadline, forget the gone and stale, log the outcome once."""
        budget = min(self._publish_deadline_seconds, remaining_seconds - _RETURN_MARGIN_SECONDS)
        report = self._fanout.deliver(api.post_many, payload, recipients, deadline=started + max(0.0, budget))
        for connection_id, reason in list(report.failed.items())[:_MAX_FAILURE_LINES]:
            logger.warning("delivery failed", extra={"recipient": connection_id, "reason": reason})
        try:
            # a 410 from a connection in its handshake window is not a closed connection (yet)
            gone = [member for member in report.gone if member not in snapshot.young]
            self._registry.forget([*gone, *snapshot.stale], channel)
        except RegistryUnavailable:
            logger.exception("could not forget gone connections; the next publish retries")
        elapsed_ms = round((self._clock() - started) * 1000, 1)
        metrics.current().count(metrics.PUBLISHED)
        _count_delivery(report, elapsed_ms)
        logger.info(
            "published",
            extra={
                "channel": channel,
                "recipients": report.recipients,
                "delivered": report.delivered,
                "gone": len(report.gone),
                "failed": len(report.failed),
                "stale": len(snapshot.stale),
                "elapsed_ms": elapsed_ms,
            },
        )
        return report


def _verifier(settings: Settings, session: boto3.session.Session) -> TokenVerifier | None:
    """The JWT verifier of a stage that checks tokens, built on the first token it sees: only
    ``$connect`` verifies tokens, so only its cold start imports PyJWT and cryptography (tens of ms)."""
    if settings.auth.mode == "none":
        return None
    return _FirstUseVerifier(settings, session)


class _FirstUseVerifier:
    def __init__(self, settings: Settings, session: boto3.session.Session) -> None:
        self._settings = settings
        self._session = session

    @functools.cached_property
    def _verifier(self) -> TokenVerifier:
        from chalicelib.tokens import verifier_from_settings

        return verifier_from_settings(self._settings.auth, self._session)

    def verify(self, token: str) -> Mapping[str, Any]:
        return self._verifier.verify(token)


def _status_of(problem: envelope.InvalidMessage) -> int:
    return PAYLOAD_TOO_LARGE if problem.code == envelope.MESSAGE_TOO_LARGE else BAD_REQUEST


def _refusal_reply(refusal: Exception) -> tuple[str, int, str, int | None]:
    """Code, status, message and (for limits) milliseconds to wait, for a refusal by the registry; logged."""
    code, status, text = _REFUSAL_REPLIES[type(refusal)]
    if type(refusal) in _REFUSAL_METRICS:
        metrics.current().count(_REFUSAL_METRICS[type(refusal)])
    retry_after_ms = None
    if isinstance(refusal, RegistryUnavailable):
        logger.exception("message failed: registry unavailable")
    else:
        if isinstance(refusal, OverLimit):
            retry_after_ms = max(1, round(refusal.retry_after * 1000))
            text = f"{text}; send again in {retry_after_ms} ms"
        logger.warning("message refused", extra={"error_code": code, "retry_after_ms": retry_after_ms})
    return code, status, text, retry_after_ms


def _answer_refusal(replies: _Replies, refusal: Exception) -> dict:
    """The sender's status; the error reply when the registry says to answer (an outage's, always)."""
    if isinstance(refusal, ConnectionClosed):
        logger.info("message dropped: its connection has closed")
        return {"statusCode": GONE}
    code, status, text, retry_after_ms = _refusal_reply(refusal)
    if not isinstance(refusal, Refusal) or refusal.first:
        replies.error(code, text, retry_after_ms=retry_after_ms)
    return {"statusCode": status}


def _since(since: envelope.Since | None) -> tuple[int, str] | None:
    return None if since is None else (since.offset, since.epoch)


def _recovery_fields(recovery: Recovery | None) -> dict:
    """What an acknowledgement says of its stream: its position, and whether what was missed is replayed."""
    if recovery is None:
        return {}
    return {"position": (recovery.offset, recovery.epoch), "recovered": recovery.recovered}


def _count_delivery(report: DeliveryReport, elapsed_ms: float) -> None:
    """A fan-out's outcome as metrics, the same figures its log line has."""
    metrics.current().delivery(
        report.recipients, report.delivered, len(report.gone), len(report.failed), elapsed_ms
    )


def _handshake_reason(refusal: Refused) -> str:
    return next(_HANDSHAKE_REASONS[kind] for kind in type(refusal).__mro__ if kind in _HANDSHAKE_REASONS)


def _refuse_handshake(status: int, reason: str, metric_reason: str, *, logged: bool = False) -> dict:
    """A refused $connect: API Gateway answers the handshake with this status. Logged once, never the
    token; counted as ConnectRefused with ``metric_reason`` (one of chalicelib.metrics.REASONS)."""
    metrics.current().refused(metric_reason)
    if not logged:
        logger.warning("connect refused", extra={"status": status, "reason": reason})
    return {"statusCode": status, "body": json.dumps({"message": reason})}


@dataclass(frozen=True)
class _Replies:
    """Posts to the one connection whose message is being answered.

    A 410 while the connection is younger than ``HANDSHAKE_WINDOW_SECONDS`` is API Gateway still
    finishing its handshake (a client may send as soon as it is open): the post is tried again, with
    backoff, until the window ends. Any other failure is only logged.
    """

    api: ManagementApi
    connection_id: str
    connected_at_ms: int
    wall_clock: Callable[[], float]
    sleep: Callable[[float], None]

    def post(self, data: bytes, *, what: str) -> bool:
        window_ends = self.connected_at_ms / 1000 + HANDSHAKE_WINDOW_SECONDS
        pause = _HANDSHAKE_RETRY_SECONDS
        while True:
            try:
                self.api.post(self.connection_id, data)
                return True
            except Gone as error:
                if self.wall_clock() + pause >= window_ends:
                    logger.warning(f"{what} not delivered", extra={"reason": str(error)})
                    return False
                self.sleep(pause)
                pause = min(2 * pause, 0.5)
            except DeliveryError as error:
                logger.warning(f"{what} not delivered", extra={"reason": str(error)})
                return False

    def error(self, code: str, message: str, **details: int | None) -> None:
        """Tell the sender why its message was not published."""
        self.post(envelope.encode_error(code, message, **details), what="error reply")
