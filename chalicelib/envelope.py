"""The wire format: inbound validation, outbound encoding and error replies. Pure functions, no I/O.

Inbound, a client sends ``{"echo": false, "type": 99, "data": <any JSON>}``; ``echo`` is optional
(default false), ``data`` is optional (missing means null, as the Go reference decodes it) and
unknown fields are ignored. Outbound, every recipient gets ``{"type", "data", "received"}``.
A bad message is answered with ``{"error": {"code", "message"}}`` to its sender only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# API Gateway's limit for one WebSocket message; a post over it is refused with 413.
MAX_MESSAGE_BYTES = 128 * 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# The stable error codes a sender can receive; the README documents each.
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TYPE = "missing_type"
INVALID_TYPE = "invalid_type"
INVALID_ECHO = "invalid_echo"
MESSAGE_TOO_LARGE = "message_too_large"
REGISTRY_UNAVAILABLE = "registry_unavailable"
RATE_LIMITED = "rate_limited"
OVER_CAPACITY = "over_capacity"

# The keepalive a client sends (API Gateway closes a connection idle for 10 minutes); it is answered
# with ``{"action": "pong", "received": <unix seconds>}`` to its sender only.
PING = object()


class InvalidMessage(ValueError):
    """The sender's message cannot be published; ``code`` is stable, ``message`` says how to fix it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Publication:
    """A valid inbound message."""

    type: int
    data: Any
    echo: bool


def parse(body: str | bytes | None) -> Publication | object:
    """Validate one inbound message body: a ``Publication``, or ``PING``; raise ``InvalidMessage``."""
    raw = body.encode() if isinstance(body, str) else (body or b"")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            MESSAGE_TOO_LARGE,
            f"the message is {len(raw)} bytes; send at most {MAX_MESSAGE_BYTES} bytes (128 KB)",
        )
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidMessage(
            INVALID_JSON, 'the message is not valid JSON; send {"type": 99, "data": ...}'
        ) from None
    if not isinstance(document, dict):
        raise InvalidMessage(
            NOT_AN_OBJECT,
            f'the message is a JSON {_json_kind(document)}; send an object: {{"type": 99, "data": ...}}',
        )
    if document.get("action") == "ping":
        return PING
    if "type" not in document:
        raise InvalidMessage(MISSING_TYPE, 'the message has no "type"; add an integer, e.g. "type": 99')
    message_type = document["type"]
    if not _is_int64(message_type):
        raise InvalidMessage(
            INVALID_TYPE,
            f'"type" must be an integer from {_INT64_MIN} to {_INT64_MAX}, '
            f"got a JSON {_json_kind(message_type)}",
        )
    echo = document.get("echo", False)
    if not isinstance(echo, bool):
        raise InvalidMessage(
            INVALID_ECHO, f'"echo" must be true or false (or left out), got a JSON {_json_kind(echo)}'
        )
    return Publication(type=message_type, data=document.get("data"), echo=echo)


def encode_publication(publication: Publication, received: int) -> bytes:
    """The bytes every recipient gets; raise ``InvalidMessage`` when they would exceed API Gateway's limit."""
    payload = _dumps({"type": publication.type, "data": publication.data, "received": received})
    if len(payload) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            MESSAGE_TOO_LARGE,
            f"the published message would be {len(payload)} bytes with its envelope; "
            f"keep it under {MAX_MESSAGE_BYTES} bytes (128 KB)",
        )
    return payload


def encode_error(code: str, message: str, *, retry_after_ms: int | None = None) -> bytes:
    """The one reply a sender gets when its message is not published (when to retry, if it may)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if retry_after_ms is not None:
        error["retryAfterMs"] = retry_after_ms
    return _dumps({"error": error})


def encode_pong(received: int) -> bytes:
    return _dumps({"action": "pong", "received": received})


def _dumps(document: dict) -> bytes:
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\\ud800" in the input) has no UTF-8 form: keep it escaped, as it came.
        return json.dumps(document, separators=(",", ":")).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
