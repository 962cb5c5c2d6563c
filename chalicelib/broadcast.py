"""The three use cases (connect, disconnect, publish), each returning the HTTP status for API Gateway.

Kept apart from ``app.py`` so they run without Chalice in unit tests, and so each handler stays one
line. Every outcome a user could notice is logged here, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import boto3

from chalicelib import envelope
from chalicelib.auth import Gatekeeper, Refused, TokenVerifier
from chalicelib.fanout import Fanout
from chalicelib.gateway_event import GatewayEvent
from chalicelib.log import logger
from chalicelib.management_api import DeliveryError, ManagementApi, ManagementApis
from chalicelib.registry import (
    ConnectionRegistry,
    InvalidConnectionId,
    OverCapacity,
    OverLimit,
    RateLimited,
    RegistryUnavailable,
)
from chalicelib.settings import Settings

OK, BAD_REQUEST, PAYLOAD_TOO_LARGE, TOO_MANY_REQUESTS, UNAVAILABLE = 200, 400, 413, 429, 503
# Time kept back from Lambda's remaining time, to log and return after the fan-out's deadline.
_RETURN_MARGIN_SECONDS = 1.0
# Failed recipients logged one per line; past this many, only the summary counts them.
_MAX_FAILURE_LINES = 20
_REGISTRY_DOWN_MESSAGE = "the service cannot reach its connection registry; send the message again shortly"
_LIMIT_REPLIES = {
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._management_apis = management_apis
        self._fanout = fanout
        self._gatekeeper = gatekeeper
        self._publish_deadline_seconds = publish_deadline_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, session: boto3.session.Session) -> Broadcaster:
        return cls(
            ConnectionRegistry.from_settings(settings, session),
            ManagementApis(settings, session),
            Fanout(settings.fanout_workers),
            Gatekeeper(_verifier(settings, session), settings.allowed_origins),
            publish_deadline_seconds=settings.publish_deadline_seconds,
        )

    def connect(self, event: GatewayEvent) -> dict:
        """Decide the handshake, then register the connection; nothing is posted to it during $connect."""
        try:
            admission = self._gatekeeper.admit(event.headers, event.query)
        except Refused as refusal:
            logger.warning("connect refused", extra={"status": refusal.status, "reason": refusal.reason})
            return _response(refusal.status, refusal.reason)
        try:
            self._registry.add(event.connection_id, event.connected_at_ms, admission.principal)
        except InvalidConnectionId as problem:
            logger.warning("connect refused", extra={"status": BAD_REQUEST, "reason": str(problem)})
            return _response(BAD_REQUEST, "not an API Gateway connection id")
        except RegistryUnavailable:
            logger.exception("connect failed: registry unavailable")
            return _response(UNAVAILABLE, _REGISTRY_DOWN_MESSAGE)
        logger.info("connected", extra={"principal": admission.principal})
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
        return {"statusCode": OK}

    def publish(self, event: GatewayEvent, remaining_seconds: float) -> dict:
        """Validate the sender's message and deliver it to every live connection (the sender if echo).

        A keepalive (``{"action": "ping"}``) re-registers the sender and is answered to it alone.
        """
        started = self._clock()
        api = self._management_apis.for_event(event.api_id, event.stage)
        received = event.request_time_ms // 1000
        try:
            message = envelope.parse(event.body)
            if message is envelope.PING:
                return self._pong(api, event, received)
            payload = envelope.encode_publication(message, received=received)
        except envelope.InvalidMessage as problem:
            logger.warning("message rejected", extra={"error_code": problem.code, "reason": problem.message})
            _reply_error(api, event.connection_id, problem.code, problem.message)
            return {
                "statusCode": PAYLOAD_TOO_LARGE if problem.code == envelope.MESSAGE_TOO_LARGE else BAD_REQUEST
            }
        try:
            snapshot = self._registry.begin_publish(
                event.connection_id, event.connected_at_ms, include_sender=message.echo
            )
        except (RegistryUnavailable, OverLimit) as refusal:
            return self._refused(api, event, refusal)
        recipients = [
            connection_id
            for connection_id in snapshot.live
            if message.echo or connection_id != event.connection_id
        ]
        budget = min(self._publish_deadline_seconds, remaining_seconds - _RETURN_MARGIN_SECONDS)
        report = self._fanout.deliver(api.post_many, payload, recipients, deadline=started + max(0.0, budget))
        for connection_id, reason in list(report.failed.items())[:_MAX_FAILURE_LINES]:
            logger.warning("delivery failed", extra={"recipient": connection_id, "reason": reason})
        try:
            self._registry.forget([*report.gone, *snapshot.stale])
        except RegistryUnavailable:
            logger.exception("could not forget gone connections; the next publish retries")
        logger.info(
            "published",
            extra={
                "recipients": report.recipients,
                "delivered": report.delivered,
                "gone": len(report.gone),
                "failed": len(report.failed),
                "stale": len(snapshot.stale),
                "elapsed_ms": round((self._clock() - started) * 1000, 1),
            },
        )
        return {"statusCode": OK}

    def _pong(self, api: ManagementApi, event: GatewayEvent, received: int) -> dict:
        try:
            self._registry.touch(event.connection_id, event.connected_at_ms)
        except (RegistryUnavailable, OverLimit) as refusal:
            return self._refused(api, event, refusal)
        _post(api, event.connection_id, envelope.encode_pong(received), what="pong")
        return {"statusCode": OK}

    def _refused(self, api: ManagementApi, event: GatewayEvent, refusal: Exception) -> dict:
        """The one reply and status for a publish or ping that a limit or Redis refused."""
        if isinstance(refusal, RegistryUnavailable):
            logger.exception("publish failed: registry unavailable")
            _reply_error(api, event.connection_id, envelope.REGISTRY_UNAVAILABLE, _REGISTRY_DOWN_MESSAGE)
            return {"statusCode": UNAVAILABLE}
        code, status, message = _LIMIT_REPLIES[type(refusal)]
        retry_after_ms = max(1, round(refusal.retry_after * 1000))
        logger.warning("message refused", extra={"error_code": code, "retry_after_ms": retry_after_ms})
        if refusal.first:
            _reply_error(
                api,
                event.connection_id,
                code,
                f"{message}; send again in {retry_after_ms} ms",
                retry_after_ms=retry_after_ms,
            )
        return {"statusCode": status}


def _verifier(settings: Settings, session: boto3.session.Session) -> TokenVerifier | None:
    """The JWT verifier, importing PyJWT and cryptography only for a stage that checks tokens."""
    if settings.auth.mode == "none":
        return None
    from chalicelib.tokens import verifier_from_settings

    return verifier_from_settings(settings.auth, session)


def _response(status: int, message: str) -> dict:
    """A refused $connect: API Gateway answers the handshake with this status."""
    return {"statusCode": status, "body": json.dumps({"message": message})}


def _reply_error(api: ManagementApi, connection_id: str, code: str, message: str, **details: int) -> None:
    """Tell the sender, once, why its message was not published; a failure here is only logged."""
    _post(api, connection_id, envelope.encode_error(code, message, **details), what="error reply")


def _post(api: ManagementApi, connection_id: str, data: bytes, *, what: str) -> None:
    try:
        api.post(connection_id, data)
    except DeliveryError as error:
        logger.warning(f"{what} not delivered", extra={"reason": str(error)})
