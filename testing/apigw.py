"""API Gateway's WebSocket API as the fakes need it: its limits, and the events it builds for a Lambda
proxy integration (pure functions, no I/O), used by localgw, the tests and the benchmarks.

Shapes follow events recorded from real API Gateway WebSocket APIs (kept as fixtures in
``tests/fixtures/apigw_events/``):

- CONNECT carries the client's ``headers``/``multiValueHeaders`` (plus the ``X-Forwarded-*`` and
  ``X-Amzn-Trace-Id`` headers API Gateway adds) and, only when the URL had a query string,
  ``queryStringParameters``/``multiValueQueryStringParameters``. No ``body``.
- MESSAGE carries ``body``, ``isBase64Encoded`` and ``requestContext.messageId``; no headers.
- DISCONNECT carries ``requestContext.disconnectStatusCode``/``disconnectReason`` and the fixed
  header set API Gateway sends then (``Host``, ``x-api-key``, ``X-Forwarded-For``, ``x-restapi``).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

# API Gateway's WebSocket limits (AWS quotas), for every fake. The app keeps its own in chalicelib/,
# which may import nothing outside itself; tests/unit/test_apigw_limits.py holds the two equal.
API_GATEWAY_MAX_MESSAGE_BYTES = 128 * 1024
API_GATEWAY_IDLE_TIMEOUT_SECONDS = 600
API_GATEWAY_MAX_CONNECTION_SECONDS = 7200
API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS = 29

ROUTE_CONNECT = "$connect"
ROUTE_DEFAULT = "$default"
ROUTE_DISCONNECT = "$disconnect"

# English month abbreviations, independent of the process locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The reasons API Gateway puts in $disconnect events for the close codes it reports.
DISCONNECT_REASONS = {
    1000: "Connection Closed Normally",
    1001: "Going away",
    1003: "Unsupported data",
    1005: "Client-side close frame status not set",
    1006: "Connection closed abnormally",
    1009: "Message too big",
}


def new_id() -> str:
    """An id shaped like API Gateway's connection and request ids: 16 characters of base64 ending in '='.

    API Gateway uses the URL-safe alphabet (ids like ``BFaT_fALIAMCKug=``); 11 random bytes encode to
    15 characters and one '=' of padding.
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(11)).decode("ascii")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_request_time(epoch_ms: int) -> str:
    """``requestTime`` as API Gateway writes it: ``26/Nov/2026:00:49:33 +0000`` (UTC)."""
    t = time.gmtime(epoch_ms / 1000)
    date = f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}"
    return f"{date}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def new_trace_id(epoch_ms: int) -> str:
    """An X-Ray trace header value like the one API Gateway adds: ``Root=1-<8 hex time>-<24 hex>``."""
    return f"Root=1-{epoch_ms // 1000:08x}-{secrets.token_hex(12)}"


@dataclass(frozen=True, kw_only=True)
class ConnectionInfo:
    """What API Gateway knows about a connection, repeated in every event of that connection."""

    connection_id: str
    connected_at_ms: int
    source_ip: str
    user_agent: str | None
    domain_name: str
    stage: str
    api_id: str


def _request_context(info: ConnectionInfo, *, route_key: str, event_type: str, epoch_ms: int) -> dict:
    request_id = new_id()
    identity = {"sourceIp": info.source_ip}
    if info.user_agent is not None:
        identity["userAgent"] = info.user_agent
    return {
        "routeKey": route_key,
        "eventType": event_type,
        # API Gateway reuses the request id as the extended request id in WebSocket events.
        "extendedRequestId": request_id,
        "requestTime": format_request_time(epoch_ms),
        "messageDirection": "IN",
        "stage": info.stage,
        "connectedAt": info.connected_at_ms,
        "requestTimeEpoch": epoch_ms,
        "identity": identity,
        "requestId": request_id,
        "domainName": info.domain_name,
        "connectionId": info.connection_id,
        "apiId": info.api_id,
    }


def _single_and_multi(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """API Gateway's two views of repeated names: last value wins, and every value in order."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value
        multi.setdefault(name, []).append(value)
    return single, multi


def connect_event(
    info: ConnectionInfo,
    *,
    headers: list[tuple[str, str]],
    query_string: str,
    local_port: int,
    scheme: str = "http",
    epoch_ms: int | None = None,
) -> dict:
    """The ``$connect`` event for a handshake request with these raw headers and query string."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    names = {name.lower() for name, _ in headers}
    added = []
    if "x-amzn-trace-id" not in names:
        added.append(("X-Amzn-Trace-Id", new_trace_id(epoch_ms)))
    # API Gateway replaces any forwarding headers with what it saw itself.
    kept = [
        (n, v)
        for n, v in headers
        if n.lower() not in ("x-forwarded-for", "x-forwarded-port", "x-forwarded-proto")
    ]
    added += [
        ("X-Forwarded-For", info.source_ip),
        ("X-Forwarded-Port", str(local_port)),
        ("X-Forwarded-Proto", scheme),
    ]
    single, multi = _single_and_multi(kept + added)
    event: dict = {"headers": single, "multiValueHeaders": multi}
    if query_string:
        query_single, query_multi = _single_and_multi(parse_qsl(query_string, keep_blank_values=True))
        event["queryStringParameters"] = query_single
        event["multiValueQueryStringParameters"] = query_multi
    event["requestContext"] = _request_context(
        info, route_key=ROUTE_CONNECT, event_type="CONNECT", epoch_ms=epoch_ms
    )
    event["isBase64Encoded"] = False
    return event


def message_event(info: ConnectionInfo, *, body: str, epoch_ms: int | None = None) -> dict:
    """The ``$default`` event for one text message (Chalice routes every message to ``$default``)."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    context = _request_context(info, route_key=ROUTE_DEFAULT, event_type="MESSAGE", epoch_ms=epoch_ms)
    # messageId comes right after routeKey in recorded events; order is cosmetic but kept.
    context = {"routeKey": context.pop("routeKey"), "messageId": new_id(), **context}
    return {"requestContext": context, "body": body, "isBase64Encoded": False}


def disconnect_event(
    info: ConnectionInfo, *, status_code: int, reason: str, epoch_ms: int | None = None
) -> dict:
    """The ``$disconnect`` event, with the close code and reason API Gateway reports."""
    epoch_ms = now_ms() if epoch_ms is None else epoch_ms
    pairs = [("Host", info.domain_name), ("x-api-key", ""), ("X-Forwarded-For", ""), ("x-restapi", "")]
    single, multi = _single_and_multi(pairs)
    context = _request_context(info, route_key=ROUTE_DISCONNECT, event_type="DISCONNECT", epoch_ms=epoch_ms)
    context = {
        "routeKey": context.pop("routeKey"),
        "disconnectStatusCode": status_code,
        **context,
        "disconnectReason": reason,
    }
    return {
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": context,
        "isBase64Encoded": False,
    }


def internal_server_error(connection_id: str, request_id: str) -> str:
    """What API Gateway sends the client when the integration fails, byte for byte (its odd spacing too)."""
    return (
        '{"message": "Internal server error", '
        f'"connectionId":"{connection_id}", "requestId":"{request_id}"}}'
    )


def forbidden(connection_id: str, request_id: str) -> str:
    """What API Gateway sends the client when no route matches a message (no ``$default`` route)."""
    return f'{{"message": "Forbidden", "connectionId":"{connection_id}", "requestId":"{request_id}"}}'


@dataclass
class Connection:
    """One simulated client connection of a deployed API, for tests and benchmarks: its events are
    the builders' above, with the headers a browser sends through API Gateway."""

    api_id: str = "a1b2c3d4e5"
    stage: str = "api"
    region: str = "us-east-1"
    connection_id: str = field(default_factory=new_id)
    connected_at_ms: int = field(default_factory=now_ms)
    source_ip: str = "203.0.113.7"
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"

    @property
    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            connection_id=self.connection_id,
            connected_at_ms=self.connected_at_ms,
            source_ip=self.source_ip,
            user_agent=self.user_agent,
            domain_name=f"{self.api_id}.execute-api.{self.region}.amazonaws.com",
            stage=self.stage,
            api_id=self.api_id,
        )

    def connect_event(self, *, headers: list[tuple[str, str]] = (), query_string: str = "") -> dict:
        browser = [
            ("Host", self.info.domain_name),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("Sec-WebSocket-Key", base64.b64encode(secrets.token_bytes(16)).decode()),
            ("Sec-WebSocket-Version", "13"),
            ("User-Agent", self.user_agent),
        ]
        return connect_event(
            self.info,
            headers=[*browser, *headers],
            query_string=query_string,
            local_port=443,
            scheme="https",
            epoch_ms=self.connected_at_ms,
        )

    def message_event(self, body: str, *, request_time_ms: int | None = None) -> dict:
        return message_event(self.info, body=body, epoch_ms=request_time_ms)

    def disconnect_event(self, status_code: int = 1001, reason: str = DISCONNECT_REASONS[1001]) -> dict:
        return disconnect_event(self.info, status_code=status_code, reason=reason)
