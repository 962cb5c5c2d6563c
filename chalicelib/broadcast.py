"""The three use cases (connect, disconnect, publish), each returning the HTTP status for API Gateway.

Kept apart from ``app.py`` so they run without Chalice in unit tests, and so each handler stays one
line. Every outcome a user could notice is logged here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import boto3

from chalicelib import envelope
from chalicelib.fanout import Fanout
from chalicelib.gateway_event import GatewayEvent
from chalicelib.log import logger
from chalicelib.management_api import DeliveryError, ManagementApi, ManagementApis
from chalicelib.registry import ConnectionRegistry, InvalidConnectionId, RegistryUnavailable
from chalicelib.settings import Settings

OK, BAD_REQUEST, PAYLOAD_TOO_LARGE, UNAVAILABLE = 200, 400, 413, 503
# Time kept back from Lambda's remaining time, to log and return after the fan-out's deadline.
_RETURN_MARGIN_SECONDS = 1.0
# Failed recipients logged one per line; past this many, only the summary counts them.
_MAX_FAILURE_LINES = 20
_REGISTRY_DOWN_MESSAGE = "the service cannot reach its connection registry; send the message again shortly"


class Broadcaster:
    def __init__(
        self,
        registry: ConnectionRegistry,
        management_apis: ManagementApis,
        fanout: Fanout,
        *,
        publish_deadline_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._management_apis = management_apis
        self._fanout = fanout
        self._publish_deadline_seconds = publish_deadline_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, session: boto3.session.Session) -> Broadcaster:
        return cls(
            ConnectionRegistry.from_settings(settings, session),
            ManagementApis(settings, session),
            Fanout(settings.fanout_workers),
            publish_deadline_seconds=settings.publish_deadline_seconds,
        )

    def connect(self, event: GatewayEvent) -> int:
        """Register the connection. Nothing is posted to it: until $connect returns it does not exist."""
        return self._registry_call("connect", self._registry.add, event.connection_id, event.connected_at_ms)

    def disconnect(self, event: GatewayEvent) -> int:
        return self._registry_call("disconnect", self._registry.remove, event.connection_id)

    def publish(self, event: GatewayEvent, remaining_seconds: float) -> int:
        """Validate the sender's message and deliver it to every live connection (the sender if echo)."""
        started = self._clock()
        api = self._management_apis.for_event(event.api_id, event.stage)
        try:
            publication = envelope.parse(event.body)
            payload = envelope.encode_publication(publication, received=event.request_time_ms // 1000)
        except envelope.InvalidMessage as problem:
            logger.warning("message rejected", extra={"error_code": problem.code, "reason": problem.message})
            _reply_error(api, event.connection_id, problem.code, problem.message)
            return PAYLOAD_TOO_LARGE if problem.code == envelope.MESSAGE_TOO_LARGE else BAD_REQUEST
        try:
            snapshot = self._registry.snapshot()
        except RegistryUnavailable:
            logger.exception("publish failed: registry unavailable")
            _reply_error(api, event.connection_id, envelope.REGISTRY_UNAVAILABLE, _REGISTRY_DOWN_MESSAGE)
            return UNAVAILABLE
        recipients = [
            connection_id
            for connection_id in snapshot.live
            if publication.echo or connection_id != event.connection_id
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
        return OK

    def _registry_call(self, action: str, call: Callable[..., None], *args: object) -> int:
        try:
            call(*args)
        except InvalidConnectionId as problem:
            logger.warning(f"{action} refused", extra={"reason": str(problem)})
            return BAD_REQUEST
        except RegistryUnavailable:
            logger.exception(f"{action} failed: registry unavailable")
            return UNAVAILABLE
        logger.info(f"{action}ed")
        return OK


def _reply_error(api: ManagementApi, connection_id: str, code: str, message: str) -> None:
    """Tell the sender, once, why its message was not published; a failure here is only logged."""
    try:
        api.post(connection_id, envelope.encode_error(code, message))
    except DeliveryError as error:
        logger.warning("error reply not delivered", extra={"error_code": code, "reason": str(error)})
