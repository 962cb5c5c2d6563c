"""The wire format: inbound validation, outbound encoding and error replies. Pure functions, no I/O.

Inbound, a client sends ``{"echo": false, "type": 99, "data": <any JSON>}``; ``echo`` is optional
(default false), ``data`` is optional (missing means null, as the Go reference decodes it), an
optional ``channel`` names the channel to publish to, and unknown fields are ignored. Outbound,
every recipient gets ``{"type", "data", "received"}`` (and ``channel`` when it was published to one).
Actions: ``{"action": "ping"}``, ``{"action": "subscribe" | "unsubscribe", "channel": ...}`` (a subscribe
may add ``"since": {"offset", "epoch"}`` to recover what it missed), ``{"action": "resume", "since": ...}``
(the same for the messages to everyone), ``{"action": "presence", "channel": ...}``. With history, every
publication also carries the ``offset`` and ``epoch`` of its stream, added by the registry's script
before its closing brace (``positioned``), so a replay is the same bytes as the first delivery.
A bad message is answered with ``{"error": {"code", "message"}}`` to its sender only.

Only strict JSON (RFC 8259) passes in either direction, because every recipient's ``JSON.parse``
would throw on anything else: no NaN or Infinity (nor a number that overflows to it, ``1e400``), no
byte other than JSON whitespace between tokens. Nesting is bounded by a scan that does not recurse,
before the standard library's parser and encoder (which do) see the document.
"""

from __future__ import annotations

import json
import math
import re
import sys
from enum import StrEnum
from functools import partial
from http import HTTPStatus
from itertools import accumulate
from typing import Any, NamedTuple

from chalicelib.errors import ServiceError

# API Gateway's limit for one WebSocket message; a post over it is refused with 413.
MAX_MESSAGE_BYTES = 128 * 1024
# Arrays and objects may nest this deep, the message object counting as 1 (so `data` nests 63).
# Far deeper than real messages are, and under the default limits of recipients' parsers (Ruby's
# JSON 100, serde_json 128, CPython's json about 990), so whatever is published, every client can read.
MAX_DEPTH = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# What a stream's position adds to a publication: ,"offset":<up to 19 digits>,"epoch":"<16 digits>".
POSITION_ROOM_BYTES = 64

# The stable error codes a sender can receive; the README documents each.
INVALID_JSON = "invalid_json"
TOO_DEEP = "too_deep"
INTEGER_TOO_LONG = "integer_too_long"
NOT_AN_OBJECT = "not_an_object"
MISSING_TYPE = "missing_type"
INVALID_TYPE = "invalid_type"
INVALID_ECHO = "invalid_echo"
MESSAGE_TOO_LARGE = "message_too_large"
REGISTRY_UNAVAILABLE = "registry_unavailable"
QUEUE_UNAVAILABLE = "queue_unavailable"
RATE_LIMITED = "rate_limited"
OVER_CAPACITY = "over_capacity"
INVALID_CHANNEL = "invalid_channel"
CHANNEL_FORBIDDEN = "channel_forbidden"
TOO_MANY_CHANNELS = "too_many_channels"
UNKNOWN_ACTION = "unknown_action"
INVALID_SINCE = "invalid_since"

# A channel name: no '*' (permission patterns use it), no ',' (the ?channels= list), no braces
# (Redis cluster hash tags), no spaces; short enough to be a key.
CHANNEL_CHARACTERS = "A-Za-z0-9_.:@-"  # a regular-expression class's contents
MAX_CHANNEL_LENGTH = 64
CHANNEL_NAME = re.compile(rf"^[{CHANNEL_CHARACTERS}]{{1,{MAX_CHANNEL_LENGTH}}}$")
_CHANNEL_RULE = f"1 to {MAX_CHANNEL_LENGTH} letters, digits or . _ : @ -"

# The keepalive a client sends (API Gateway closes a connection idle for 10 minutes); it is answered
# with ``{"action": "pong", "received": <unix seconds>}`` to its sender only.
PING = object()

_EXAMPLE = '{"type": 99, "data": ...}'
# A JSON string; an unterminated one runs to the end of the text, so the depth scan stays linear.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class InvalidMessage(ServiceError, ValueError):
    """The sender's message cannot be published; ``code`` is stable, ``message`` says how to fix it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = self.text = message

    @property
    def status(self) -> HTTPStatus:
        return (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE if self.code == MESSAGE_TOO_LARGE else HTTPStatus.BAD_REQUEST
        )


class Publication(NamedTuple):
    """A valid inbound message; ``channel`` None publishes to every connection."""

    type: int
    data: Any
    echo: bool
    channel: str | None = None


class Since(NamedTuple):
    """Where a client's copy of a stream ends: the last ``offset`` it saw under ``epoch``."""

    offset: int
    epoch: str


class ChannelAction(StrEnum):
    """A request about one channel; ``acknowledged`` is its answer's action."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PRESENCE = "presence"

    @property
    def acknowledged(self) -> str:
        return {"subscribe": "subscribed", "unsubscribe": "unsubscribed"}.get(self.value, self.value)


class ChannelRequest(NamedTuple):
    """``{"action": "subscribe" | "unsubscribe" | "presence", "channel": ...}``; a subscribe's ``since``
    asks for what was published after it."""

    action: ChannelAction
    channel: str
    since: Since | None = None


class Resume(NamedTuple):
    """``{"action": "resume", "since": ...}``: what was published to everyone after ``since``."""

    since: Since


# The epoch a stream gets (digits of Redis's clock); a client's is checked only against it.
_MAX_EPOCH_LENGTH = 64


class _LongInteger:
    """Stands in for an integer literal too long to convert, so a `type` can be told from `data`."""


def parse(body: str | bytes | None) -> Publication | ChannelRequest | Resume | object:
    """Validate one inbound message body: a ``Publication``, a ``ChannelRequest``, a ``Resume`` or ``PING``.

    Raise ``InvalidMessage`` saying what is wrong.
    """
    document, long_integers = _loads(_text(body))
    if not isinstance(document, dict):
        raise InvalidMessage(
            NOT_AN_OBJECT, f"the message is a JSON {_json_kind(document)}; send an object: {_EXAMPLE}"
        )
    if "action" in document:
        return _action(document)
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
    if long_integers:
        raise InvalidMessage(
            INTEGER_TOO_LONG,
            f"the message has an integer of {max(long_integers)} digits; integers may have at most "
            f"{sys.get_int_max_str_digits()}: send longer ones as strings",
        )
    channel = document.get("channel")
    return Publication(
        type=message_type,
        data=document.get("data"),
        echo=echo,
        channel=None if channel is None else _channel(channel),
    )


def parse_channels(listed: str | None) -> tuple[str, ...]:
    """The ``?channels=room-1,room-2`` of a handshake, each name checked; empty when there is none."""
    names = [name.strip() for name in (listed or "").split(",") if name.strip()]
    try:
        return tuple(dict.fromkeys(_channel(name) for name in names))
    except InvalidMessage as problem:
        raise InvalidMessage(problem.code, f"?channels=: {problem.message}") from None


def _action(document: dict) -> ChannelRequest | Resume | object:
    action = document["action"]
    if action == "ping":
        return PING
    if action in tuple(ChannelAction):
        if "channel" not in document:
            raise InvalidMessage(INVALID_CHANNEL, f'"{action}" needs a "channel", e.g. "channel": "room-1"')
        since = (
            _since(document["since"]) if action == ChannelAction.SUBSCRIBE and "since" in document else None
        )
        return ChannelRequest(
            action=ChannelAction(action), channel=_channel(document["channel"]), since=since
        )
    if action == "resume":
        return Resume(since=_since(document.get("since")))
    raise InvalidMessage(
        UNKNOWN_ACTION,
        f'"action" must be "ping", "subscribe", "unsubscribe", "resume" or "presence", got {_shown(action)}',
    )


def _since(value: Any) -> Since:
    """``{"offset": <integer >= 0>, "epoch": <string>}``, as the client last received them."""
    offset = value.get("offset") if isinstance(value, dict) else None
    epoch = value.get("epoch") if isinstance(value, dict) else None
    if not (
        _is_int64(offset) and offset >= 0 and isinstance(epoch, str) and 0 < len(epoch) <= _MAX_EPOCH_LENGTH
    ):
        raise InvalidMessage(
            INVALID_SINCE,
            '"since" must be {"offset": <the last offset received, an integer from 0>, "epoch": <its '
            f'"epoch", a string>}}, got {_shown(value)}',
        )
    return Since(offset=offset, epoch=epoch)


def _channel(name: Any) -> str:
    if not isinstance(name, str) or not CHANNEL_NAME.match(name):
        raise InvalidMessage(INVALID_CHANNEL, f"a channel name is {_CHANNEL_RULE}, got {_shown(name)}")
    return name


def _shown(value: Any) -> str:
    """A value quoted back to its sender, cut short: an error reply must stay small."""
    text = json.dumps(value) if isinstance(value, str) else f"a JSON {_json_kind(value)}"
    return text if len(text) <= 70 else text[:67] + "..."


def encode_publication(publication: Publication, received: int) -> bytes:
    """The bytes every recipient gets; raise ``InvalidMessage`` when they would exceed API Gateway's limit.

    ``publication`` comes from ``parse``, whose limits keep the encoder from recursing too deep; a
    value strict JSON cannot carry (NaN, Infinity) is refused here too, never posted.
    """
    document = {"type": publication.type, "data": publication.data, "received": received}
    if publication.channel is not None:
        document["channel"] = publication.channel
    try:
        payload = _dumps(document)
    except ValueError:
        raise InvalidMessage(
            INVALID_JSON, '"data" holds a number JSON cannot carry (NaN or Infinity); send a finite number'
        ) from None
    if len(payload) > MAX_MESSAGE_BYTES - POSITION_ROOM_BYTES:
        raise InvalidMessage(
            MESSAGE_TOO_LARGE,
            f"the published message would be {len(payload)} bytes with its envelope; "
            f"keep it under {MAX_MESSAGE_BYTES - POSITION_ROOM_BYTES} bytes (128 KB, less room for its "
            "offset and epoch)",
        )
    return payload


def positioned(payload: bytes, suffix: str) -> bytes:
    """A publication with what its stream's history added before its closing brace (its offset and
    epoch), or as it is without history (``suffix`` empty)."""
    return payload[:-1] + suffix.encode() if suffix else payload


def error_document(code: str, message: str, *, retry_after_ms: int | None = None) -> dict:
    """``{"error": {"code", "message"}}``, with when to retry if the sender may (``retryAfterMs``)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if retry_after_ms is not None:
        error["retryAfterMs"] = retry_after_ms
    return {"error": error}


def encode_error(code: str, message: str, *, retry_after_ms: int | None = None) -> bytes:
    """The one reply a sender gets when its message is not published."""
    return _dumps(error_document(code, message, retry_after_ms=retry_after_ms))


def encode_pong(received: int, *, lost: bool) -> bytes:
    """``lost``: the service had lost this connection (Redis lost its data) and registered it again;
    its subscriptions are gone, so the client should reconnect."""
    return _dumps({"action": "pong", "received": received, **({"lost": True} if lost else {})})


def encode_ack(
    request: ChannelRequest,
    *,
    lost: bool,
    position: tuple[int, str] | None = None,
    recovered: bool | None = None,
) -> bytes:
    """``{"action": "subscribed" | "unsubscribed", "channel": ...}`` to the sender of the request; with
    history, a subscribe's ``offset`` and ``epoch`` (the stream's latest), and ``recovered`` when it
    asked for what it missed."""
    reply: dict[str, Any] = {"action": request.action.acknowledged, "channel": request.channel}
    return _dumps({**reply, **_recovery_fields(position, recovered), **({"lost": True} if lost else {})})


def encode_resumed(*, lost: bool, position: tuple[int, str] | None, recovered: bool | None) -> bytes:
    """``{"action": "resumed", "recovered", "offset", "epoch"}``: without history, never recovered."""
    fields = _recovery_fields(position, recovered) if position else {"recovered": False}
    return _dumps({"action": "resumed", **fields, **({"lost": True} if lost else {})})


def encode_presence(
    channel: str, count: int, members: list[tuple[str | None, int]], *, lost: bool = False
) -> bytes:
    """``{"action": "presence", "channel", "count", "members": [{"user", "connections"}, ...]}``;
    ``lost`` as in ``encode_pong``."""
    return _dumps(
        {
            "action": "presence",
            "channel": channel,
            "count": count,
            "members": [{"user": user, "connections": connections} for user, connections in members],
            **({"lost": True} if lost else {}),
        }
    )


def _recovery_fields(position: tuple[int, str] | None, recovered: bool | None) -> dict[str, Any]:
    fields: dict[str, Any] = {} if recovered is None else {"recovered": recovered}
    if position is not None:
        fields["offset"], fields["epoch"] = position
    return fields


def _text(body: str | bytes | None) -> str:
    """The body as text within the size limit; bytes must be UTF-8 (RFC 8259 section 8.1).

    Never hand bytes to ``json.loads``: it guesses UTF-16/32 from NUL bytes, so a frame of NULs
    interleaved with JSON (``"\\x00{\\x00..."``) would decode as UTF-16 and pass.
    """
    if isinstance(body, str):
        size = len(body.encode("utf-8", "surrogatepass"))
    else:
        body = body or b""
        size = len(body)
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            MESSAGE_TOO_LARGE, f"the message is {size} bytes; send at most {MAX_MESSAGE_BYTES} bytes (128 KB)"
        )
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidMessage(
            INVALID_JSON, f"the message is not UTF-8 (byte {error.start}); send JSON as UTF-8 text"
        ) from None


def _loads(text: str) -> tuple[Any, list[int]]:
    """Parse strict JSON no deeper than MAX_DEPTH; also the digit counts of integers too long to keep."""
    if text.count("[") + text.count("{") > MAX_DEPTH and (depth := _depth(text)) > MAX_DEPTH:
        raise InvalidMessage(
            TOO_DEEP,
            f"arrays and objects nest {depth} levels deep; nest at most {MAX_DEPTH} "
            "(the message object counts as one)",
        )
    long_integers: list[int] = []
    try:
        try:
            document = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
        except (json.JSONDecodeError, InvalidMessage):
            raise
        except ValueError:
            # int() refused an integer over its digit limit. Parse again, noting each such integer,
            # so that every other message keeps the decoder's fast built-in integer parsing.
            document = json.loads(
                text,
                parse_int=partial(_int_or_placeholder, long_integers),
                parse_float=_finite_float,
                parse_constant=_reject_constant,
            )
    except json.JSONDecodeError as error:
        raise InvalidMessage(
            INVALID_JSON, f"the message is not JSON ({error.msg} at character {error.pos}); send {_EXAMPLE}"
        ) from None
    return document, long_integers


def _depth(text: str) -> int:
    """How deep arrays and objects nest in ``text``, without recursing: brackets outside strings."""
    brackets = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def _int_or_placeholder(long_integers: list[int], literal: str) -> int | _LongInteger:
    try:
        return int(literal)
    except ValueError:  # over sys.get_int_max_str_digits(): 4300 unless the environment says otherwise
        long_integers.append(len(literal.lstrip("-")))
        return _LongInteger()


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidMessage(
            INVALID_JSON,
            f"the number {literal[:40]} is too large for a JSON number (a double); "
            "send a smaller one, or a string",
        )
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(INVALID_JSON, f"{name} is not JSON; send a finite number, a string or null")


def _dumps(document: dict) -> bytes:
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\\ud800" in the input) has no UTF-8 form: keep it escaped, as it came.
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | _LongInteger):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
