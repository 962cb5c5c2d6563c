"""The use cases: connect, disconnect, publish (from a connection or a backend), and a queued job's
delivery; each returns what its handler answers.

Kept apart from ``app.py`` so they run without Chalice in unit tests, and so each handler stays one
line. Every outcome a user could notice is logged here, once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import NamedTuple

from chalicelib import envelope, metrics
from chalicelib.auth import (
    AuthUnavailable,
    Forbidden,
    Gatekeeper,
    MissingToken,
    Unauthorized,
)
from chalicelib.errors import ServiceError
from chalicelib.fanout import RETURN_MARGIN_SECONDS, DeliveryReport, Fanout
from chalicelib.gateway_event import GatewayEvent
from chalicelib.jobs import Job, JobQueue
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
)

# The first pause before a reply that got 410 from a connection in its handshake window is tried again.
_HANDSHAKE_RETRY_SECONDS = 0.05
# Failed recipients logged one per line; past this many, only the summary counts them.
_MAX_FAILURE_LINES = 20
_QUEUE_DOWN_MESSAGE = "the service could not queue this broadcast; send it again shortly"
_NO_WEBSOCKET_API = (
    "this stage does not know its WebSocket API: set WEBSOCKET_API_ID (the deployed template sets it)"
)
# The metric a refusal by the registry counts (other refusals count none).
_REFUSAL_METRICS = {RateLimited: metrics.RATE_LIMITED, OverCapacity: metrics.OVER_CAPACITY}
# ConnectRefused's Reason for a refused handshake, by class (a subclass takes its base's).
_HANDSHAKE_REASONS = {
    MissingToken: metrics.NO_TOKEN,
    Unauthorized: metrics.BAD_TOKEN,
    Forbidden: metrics.ORIGIN,
    AuthUnavailable: metrics.KEYS_UNAVAILABLE,
    ChannelForbidden: metrics.CHANNEL_FORBIDDEN,
    RegistryUnavailable: metrics.REDIS_DOWN,
    ServiceError: metrics.BAD_REQUEST,  # a malformed ?channels=, too many of them, a bad connection id
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
        except ServiceError as refusal:
            outage = isinstance(refusal, RegistryUnavailable)
            if outage:
                logger.exception("connect failed: registry unavailable")
            return _refuse_handshake(refusal, logged=outage)
        logger.info("connected", extra={"principal": admission.principal, "channels": list(channels)})
        metrics.current().count(metrics.CONNECTED)
        if admission.subprotocol:
            return {"statusCode": HTTPStatus.OK, "headers": {"Sec-WebSocket-Protocol": admission.subprotocol}}
        return {"statusCode": HTTPStatus.OK}

    def disconnect(self, event: GatewayEvent) -> dict:
        try:
            self._registry.remove(event.connection_id)
        except InvalidConnectionId as problem:
            logger.warning("disconnect refused", extra={"reason": str(problem)})
            return {"statusCode": HTTPStatus.BAD_REQUEST}
        except RegistryUnavailable:
            logger.exception("disconnect failed: registry unavailable")
            return {"statusCode": HTTPStatus.SERVICE_UNAVAILABLE}
        logger.info("disconnected")
        metrics.current().count(metrics.DISCONNECTED)
        return {"statusCode": HTTPStatus.OK}

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
                return {"statusCode": HTTPStatus.SERVICE_UNAVAILABLE}
            return {"statusCode": HTTPStatus.OK}
        recipients = [member for member in snapshot.live if message.echo or member != sender]
        self._deliver(api, payload, snapshot, recipients, message.channel, started, remaining_seconds)
        return {"statusCode": HTTPStatus.OK}

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
        elif message.action == envelope.ChannelAction.PRESENCE:
            presence = self._registry.presence(sender, connected_at_ms, message.channel)
            answer = envelope.encode_presence(
                message.channel, presence.count, presence.members, lost=presence.lost
            )
            what = "presence"
        elif message.action == envelope.ChannelAction.SUBSCRIBE:
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
        return {"statusCode": HTTPStatus.OK}

    def _replay(
        self, replies: _Replies, messages: list[bytes], started: float, remaining_seconds: float
    ) -> None:
        """Post the missed messages one after another (their order is the point), with the retries and
        the deadline of any publish; stop at the first that fails: the client sees the gap by its
        offsets and recovers again."""
        replayed, failure = self._fanout.deliver_in_order(
            replies.api.post_many,
            messages,
            replies.connection_id,
            deadline=self._deadline(started, remaining_seconds),
        )
        if failure is not None:
            logger.warning("replay cut short", extra={"reason": failure})
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
        return {"statusCode": problem.status}

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
                return HTTPStatus.SERVICE_UNAVAILABLE, envelope.error_document(
                    envelope.REGISTRY_UNAVAILABLE, _NO_WEBSOCKET_API
                )
            snapshot = self._registry.begin_backend_publish(message.channel, payload)
        except envelope.InvalidMessage as problem:
            logger.warning(
                "backend publish rejected", extra={"error_code": problem.code, "reason": problem.message}
            )
            return problem.status, envelope.error_document(problem.code, problem.message)
        except (RegistryUnavailable, OverLimit) as refusal:
            retry_after_ms = _refusal_reply(refusal)
            return refusal.status, envelope.error_document(
                refusal.code, refusal.text, retry_after_ms=retry_after_ms
            )
        payload = envelope.positioned(payload, snapshot.suffix)
        if isinstance(snapshot, Queued):
            publish_id = self._enqueue(*self._websocket_api, payload, snapshot, message.channel, None)
            if not publish_id:
                return HTTPStatus.SERVICE_UNAVAILABLE, envelope.error_document(
                    envelope.QUEUE_UNAVAILABLE, _QUEUE_DOWN_MESSAGE
                )
            return HTTPStatus.ACCEPTED, {"recipients": snapshot.recipients, "queued": publish_id}
        api = self._management_apis.for_event(*self._websocket_api)
        report = self._deliver(
            api, payload, snapshot, snapshot.live, message.channel, started, remaining_seconds
        )
        return HTTPStatus.OK, {
            "recipients": report.recipients,
            "delivered": report.delivered,
            "gone": len(report.gone),
            "failed": len(report.failed),
        }

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
            failed = len(self._job_queue.queue(jobs, "publish"))
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

    def _deadline(self, started: float, remaining_seconds: float) -> float:
        """When a publish's posts must be done (a ``clock()`` value): ``PUBLISH_DEADLINE_SECONDS`` after
        it started, or earlier when Lambda leaves less, with time kept back to log and return."""
        return started + max(
            0.0, min(self._publish_deadline_seconds, remaining_seconds - RETURN_MARGIN_SECONDS)
        )

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
        deadline = self._deadline(started, remaining_seconds)
        report = self._fanout.deliver(api.post_many, payload, recipients, deadline=deadline)
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
        metrics.current().delivery(report, elapsed_ms)
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


def _refusal_reply(refusal: RegistryUnavailable | Refusal) -> int | None:
    """Log and count a refusal by the registry; for a limit, the milliseconds to wait."""
    if type(refusal) in _REFUSAL_METRICS:
        metrics.current().count(_REFUSAL_METRICS[type(refusal)])
    if isinstance(refusal, RegistryUnavailable):
        logger.exception("message failed: registry unavailable")
        return None
    retry_after_ms = refusal.retry_after_ms if isinstance(refusal, OverLimit) else None
    logger.warning("message refused", extra={"error_code": refusal.code, "retry_after_ms": retry_after_ms})
    return retry_after_ms


def _answer_refusal(replies: _Replies, refusal: Exception) -> dict:
    """The sender's status; the error reply when the registry says to answer (an outage's, always)."""
    if isinstance(refusal, ConnectionClosed):
        logger.info("message dropped: its connection has closed")
        return {"statusCode": HTTPStatus.GONE}
    retry_after_ms = _refusal_reply(refusal)
    if not isinstance(refusal, Refusal) or refusal.first:
        replies.error(refusal.code, refusal.text, retry_after_ms=retry_after_ms)
    return {"statusCode": refusal.status}


def _since(since: envelope.Since | None) -> tuple[int, str] | None:
    return None if since is None else (since.offset, since.epoch)


def _recovery_fields(recovery: Recovery | None) -> dict:
    """What an acknowledgement says of its stream: its position, and whether what was missed is replayed."""
    if recovery is None:
        return {}
    return {"position": (recovery.offset, recovery.epoch), "recovered": recovery.recovered}


def _refuse_handshake(refusal: ServiceError, *, logged: bool = False) -> dict:
    """A refused $connect: API Gateway answers the handshake with the refusal's status and text. Logged
    once, never the token; counted as ConnectRefused with the refusal's reason (chalicelib.metrics)."""
    reason = next(_HANDSHAKE_REASONS[kind] for kind in type(refusal).__mro__ if kind in _HANDSHAKE_REASONS)
    metrics.current().refused(reason)
    if not logged:
        logger.warning("connect refused", extra={"status": refusal.status, "reason": refusal.text})
    return {"statusCode": refusal.status, "body": json.dumps({"message": refusal.text})}


class _Replies(NamedTuple):
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
