"""Every exception the client raises, under one root, ``ClientError``:

    ClientError
     +-- ServiceError            the service refused a request: ``code``, ``message`` (its words)
     |    +-- RateLimited        rate_limited: ``retry_after`` (seconds) says when to send again
     |    +-- OverCapacity       over_capacity: the whole API's budget; ``retry_after`` too
     |    +-- ChannelForbidden   channel_forbidden: the token does not allow that channel
     |    +-- TooManyChannels    too_many_channels
     |    +-- InvalidRequest     what was sent cannot be accepted (invalid_json, invalid_channel,
     |    |                      invalid_since, message_too_large, ...): sending it again will not help
     |    +-- ServiceUnavailable registry_unavailable, queue_unavailable: try again later
     +-- AuthenticationFailed    the handshake was refused with 401/403, also with a token asked again
     +-- ConnectionLost          the connection closed before the service answered a request
     +-- PublishError            a backend's POST /publish was refused: ``status`` and the ``error``

Codes the client does not know yet become a plain ``ServiceError``, so a newer service never breaks it.
"""

from __future__ import annotations


class ClientError(Exception):
    """The root of every exception this package raises."""


class ServiceError(ClientError):
    """The service answered ``{"error": {"code", "message", "retryAfterMs"?}}``."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RateLimited(ServiceError):
    """This connection sends faster than the service allows; send again after ``retry_after`` s."""


class OverCapacity(ServiceError):
    """The whole API is at its budget of posts; send again after ``retry_after`` s."""


class ChannelForbidden(ServiceError):
    """The token's ``channels`` claim does not allow this subscribe or publish."""


class TooManyChannels(ServiceError):
    """The connection is already in as many channels as the service allows."""


class InvalidRequest(ServiceError):
    """The request itself is wrong (its JSON, its channel name, its size...): fix it, do not resend."""


class ServiceUnavailable(ServiceError):
    """The service could not do it now (its registry or queue is down): try again later."""


class AuthenticationFailed(ClientError):
    """The handshake was refused with ``status`` (401 or 403), with the token asked again once."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"the service refused the handshake with {status}: the token is missing, "
            "invalid, expired or not allowed"
        )
        self.status = status


class ConnectionLost(ClientError):
    """The connection closed before the service answered; the request may or may not have been done."""


class PublishError(ClientError):
    """A backend's ``POST /publish`` was refused; ``status`` and the ``error`` object it answered."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.error = error


_BY_CODE: dict[str, type[ServiceError]] = {
    "rate_limited": RateLimited,
    "over_capacity": OverCapacity,
    "channel_forbidden": ChannelForbidden,
    "too_many_channels": TooManyChannels,
    "registry_unavailable": ServiceUnavailable,
    "queue_unavailable": ServiceUnavailable,
    **{
        code: InvalidRequest
        for code in (
            "invalid_json",
            "too_deep",
            "integer_too_long",
            "not_an_object",
            "missing_type",
            "invalid_type",
            "invalid_echo",
            "message_too_large",
            "invalid_channel",
            "invalid_since",
            "unknown_action",
        )
    },
}


def service_error(code: str, message: str, retry_after_ms: int | None = None) -> ServiceError:
    """The typed exception for an error reply's ``code``."""
    retry_after = None if retry_after_ms is None else retry_after_ms / 1000
    return _BY_CODE.get(code, ServiceError)(code, message, retry_after)
