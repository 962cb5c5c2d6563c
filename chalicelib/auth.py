"""Who may connect: where the token travels, the Origin check, and the answer to the handshake.

Pure over what it is given: the ``$connect`` event's headers and query string, and a token verifier
(``chalicelib.tokens``, imported only when ``AUTH_MODE=jwt`` so that ``none`` pays nothing for the
JWT library at cold start). It knows neither Redis nor API Gateway, and never logs a token.

A token is read from the first of these that carries one:

1. ``Sec-WebSocket-Protocol: wsbroadcast, bearer.<jwt>``: browsers, which cannot set headers on a
   WebSocket. The handshake then selects ``wsbroadcast`` (a browser that offered subprotocols fails
   the handshake when none is selected); the ``bearer.`` entry is never echoed.
2. ``Authorization: Bearer <jwt>``: servers, ``wscat -H``.
3. ``?token=<jwt>``: tools that can do nothing else (query strings end up in access logs).

With tokens, what a connection may do with channels comes from the token's ``channels`` claim:
``{"subscribe": ["room-*"], "publish": ["room-1"]}``, each entry a channel name or a prefix ending in
``*`` (``*`` alone: every channel). A token without the claim may use no channel (broadcasts to
every connection stay open to every valid token, as the reference has them).

Refusals carry the HTTP status the client sees at the handshake: ``Unauthorized`` (401, an invalid
token; ``MissingToken``, its subclass, when there is none), ``Forbidden`` (403, valid but not allowed), ``AuthUnavailable`` (503, the keys
could not be fetched).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from chalicelib.envelope import CHANNEL_CHARACTERS, CHANNEL_NAME, MAX_CHANNEL_LENGTH
from chalicelib.errors import ServiceError

SUBPROTOCOL = "wsbroadcast"
_BEARER_SUBPROTOCOL_PREFIX = "bearer."
CHANNELS_CLAIM = "channels"
# A channel name (envelope.CHANNEL_NAME), or a prefix of one followed by '*'.
_CHANNEL_PATTERN = re.compile(
    rf"^(?:{CHANNEL_NAME.pattern[1:-1]}|[{CHANNEL_CHARACTERS}]{{0,{MAX_CHANNEL_LENGTH - 1}}}\*)$"
)


class Refused(ServiceError):
    """The handshake is refused with ``status``; ``text`` is safe to log and to show the client."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Unauthorized(Refused):
    status = HTTPStatus.UNAUTHORIZED


class MissingToken(Unauthorized):
    """No token anywhere: told apart from an invalid one because a client that forgot its token and an
    attacker guessing tokens call for different answers from the operator (the ``NoToken`` and
    ``BadToken`` metrics)."""


class Forbidden(Refused):
    status = HTTPStatus.FORBIDDEN


class AuthUnavailable(Refused):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Mapping[str, Any]:
        """The token's verified claims; raise ``Unauthorized`` or ``AuthUnavailable``."""


class Permissions(NamedTuple):
    """Channel patterns a principal may subscribe to and publish to (from its token)."""

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()


class Admission(NamedTuple):
    """A connection let in: who it is and what it may do with channels (both ``None`` when
    AUTH_MODE=none: anyone, every channel), and the subprotocol to select."""

    principal: str | None
    subprotocol: str | None
    permissions: Permissions | None = None


class Gatekeeper:
    def __init__(self, verifier: TokenVerifier | None, allowed_origins: tuple[str, ...] = ()) -> None:
        self._verifier = verifier
        self._allowed_origins = frozenset(canonical_origin(origin) for origin in allowed_origins) - {None}

    def admit(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Admission:
        """Decide a handshake; ``headers`` has lower-case names. Raise a ``Refused`` to refuse it."""
        origin = headers.get("origin")
        if (
            self._allowed_origins
            and origin is not None
            and canonical_origin(origin) not in self._allowed_origins
        ):
            raise Forbidden(f"origin {origin!r} is not allowed to connect")
        offered = _offered_subprotocols(headers)
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        if self._verifier is None:
            return Admission(principal=None, subprotocol=subprotocol)
        token = _token(offered, headers, query)
        if not token:
            raise MissingToken(
                "a token is required: offer the subprotocols wsbroadcast and bearer.<token>, or send "
                "Authorization: Bearer <token>, or add ?token=<token>"
            )
        claims = self._verifier.verify(token)
        return Admission(
            principal=str(claims["sub"]), subprotocol=subprotocol, permissions=permissions_from(claims)
        )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` with scheme and host lower-cased and the scheme's default port dropped,
    or None when ``origin`` is no such origin (``null``, a path, credentials, a bad port).

    Scheme and host are case-insensitive (RFC 6454, 4) and browsers send them lower-cased, while an
    operator may write ``https://App.example.com:443``: both sides of the allow-list check pass through
    here, so the comparison is of origins, not of spellings.
    """
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc or any(character.isspace() for character in origin):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


def permissions_from(claims: Mapping[str, Any]) -> Permissions:
    """The ``channels`` claim; a malformed one refuses the token (it was signed that way)."""
    claim = claims.get(CHANNELS_CLAIM)
    if claim is None:
        return Permissions()
    if not isinstance(claim, dict):
        raise Unauthorized(_MALFORMED_CLAIM)
    lists = {}
    for verb in ("subscribe", "publish"):
        patterns = claim.get(verb, [])
        if not isinstance(patterns, list) or not all(
            isinstance(pattern, str) and _CHANNEL_PATTERN.match(pattern) for pattern in patterns
        ):
            raise Unauthorized(_MALFORMED_CLAIM)
        lists[verb] = tuple(patterns)
    return Permissions(**lists)


_MALFORMED_CLAIM = (
    'the token\'s "channels" claim must look like {"subscribe": ["room-*"], "publish": ["room-1"]}: '
    "channel names, or prefixes ending in *"
)


def _offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    return [part.strip() for part in headers.get("sec-websocket-protocol", "").split(",") if part.strip()]


def _token(offered: list[str], headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(_BEARER_SUBPROTOCOL_PREFIX):
            return protocol[len(_BEARER_SUBPROTOCOL_PREFIX) :]
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query.get("token") or None
