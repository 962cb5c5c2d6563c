"""The service's wire format, as this client reads and writes it. Pure functions, no I/O.

A frame from the service is one of: a delivered ``Message`` (``type``, ``data``, ``received``, and
``channel`` for a channel; ``offset`` and ``epoch`` when the service keeps history), an ``Ack``
(``subscribed``, ``unsubscribed``, ``resumed``: a stream's ``offset``/``epoch``, ``recovered`` after a
request with ``since``), a ``Pong``, or an error reply. ``lost: true`` on a pong or an ack says the
service had lost this connection's state (its subscriptions are gone). Anything else is ``None``:
a newer service may send more, and an older client must not break on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ws_broadcast_client.errors import ServiceError, service_error

SUBPROTOCOL = "wsbroadcast"
BEARER_PREFIX = "bearer."


@dataclass(frozen=True)
class Message:
    """One delivered message. ``channel`` None: it was published to everyone. ``offset``/``epoch``
    None: the service keeps no history (then the client neither orders nor deduplicates)."""

    type: int
    data: Any
    received: int | None = None
    channel: str | None = None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True)
class Gap:
    """Messages of a stream (``channel``; None: the messages to everyone) may have been lost and
    could not be recovered from the service's history: those after offset ``from_offset - 1`` (the
    last one yielded) up to ``to_offset``, from where the stream goes on. When the stream's epoch
    changed (the service lost or reset its history), ``to_offset`` counts in the new epoch."""

    channel: str | None
    from_offset: int
    to_offset: int


@dataclass(frozen=True)
class Ack:
    """``{"action": "subscribed" | "unsubscribed" | "resumed", ...}``."""

    action: str
    channel: str | None
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None
    lost: bool = False


@dataclass(frozen=True)
class Pong:
    lost: bool = False


@dataclass(frozen=True)
class ErrorReply:
    error: ServiceError


Frame = Message | Ack | Pong | ErrorReply


def parse_frame(text: str | bytes) -> Frame | None:
    """What one frame from the service says; None for a frame this client does not understand."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    if isinstance(error := document.get("error"), dict):
        return _error(error)
    action = document.get("action")
    if action == "pong":
        return Pong(lost=document.get("lost") is True)
    if action in ("subscribed", "unsubscribed", "resumed"):
        return _ack(action, document)
    if "action" in document or not _is_int(document.get("type")):
        return None
    return _message(document)


def _error(error: dict) -> ErrorReply:
    code, message = error.get("code"), error.get("message")
    retry_after_ms = error.get("retryAfterMs")
    return ErrorReply(
        service_error(
            code if isinstance(code, str) else "unknown",
            message if isinstance(message, str) else "",
            retry_after_ms if _is_int(retry_after_ms) and retry_after_ms >= 0 else None,
        )
    )


def _ack(action: str, document: dict) -> Ack | None:
    channel = document.get("channel")
    if action != "resumed" and not isinstance(channel, str):
        return None
    offset, epoch = _position(document)
    recovered = document.get("recovered")
    return Ack(
        action=action,
        channel=channel if action != "resumed" else None,
        offset=offset,
        epoch=epoch,
        recovered=recovered if isinstance(recovered, bool) else None,
        lost=document.get("lost") is True,
    )


def _message(document: dict) -> Message:
    channel = document.get("channel")
    received = document.get("received")
    offset, epoch = _position(document)
    return Message(
        type=document["type"],
        data=document.get("data"),
        received=received if _is_int(received) else None,
        channel=channel if isinstance(channel, str) else None,
        offset=offset,
        epoch=epoch,
    )


def _position(document: dict) -> tuple[int, str] | tuple[None, None]:
    """A stream's ``offset`` and ``epoch``, both or neither: one without the other orders nothing."""
    offset, epoch = document.get("offset"), document.get("epoch")
    if _is_int(offset) and offset >= 0 and isinstance(epoch, str):
        return offset, epoch
    return None, None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode(document: dict) -> str:
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def subscribe(channel: str, since: tuple[int, str] | None = None) -> str:
    """A subscribe, with ``since`` (offset, epoch) to recover what was published after it."""
    request: dict[str, Any] = {"action": "subscribe", "channel": channel}
    if since is not None:
        request["since"] = {"offset": since[0], "epoch": since[1]}
    return encode(request)


def resume(since: tuple[int, str]) -> str:
    """Recover the messages to everyone published after ``since``."""
    return encode({"action": "resume", "since": {"offset": since[0], "epoch": since[1]}})


def publication(data: Any, *, type: int, channel: str | None, echo: bool) -> str:
    request: dict[str, Any] = {"type": type, "data": data, "echo": echo}
    if channel is not None:
        request["channel"] = channel
    return encode(request)


def subprotocols(token: str | None) -> list[str]:
    """What the handshake offers: the service's subprotocol, and the token beside it (browsers and
    this client alike: a header would work here, but one way for both keeps the service's logs simple)."""
    return [SUBPROTOCOL] if not token else [SUBPROTOCOL, BEARER_PREFIX + token]
