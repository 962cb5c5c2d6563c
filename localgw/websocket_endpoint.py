"""The WebSocket API's endpoint (``ws://HOST:PORT/STAGE``): the handshake, each inbound message, the
limits, the close; the three routes' events.

Behaviour copied from API Gateway:

- ``$connect`` runs before the handshake completes; a non-2xx status refuses the upgrade with that
  status and the handler's body and headers, an exception or a timeout with 500. A refused client
  never joins. On success the handler's ``Sec-WebSocket-Protocol`` header is the one the client gets,
  exactly: nothing is echoed from what the client offered, so a client that offered subprotocols and
  got none selected fails the handshake (a browser does) as it would against API Gateway.
- Every inbound text message is its own invocation, started at once: messages run concurrently, also
  from one connection, in a thread pool, so a slow handler never stalls the event loop.
- A failed or timed-out message invocation sends the client API Gateway's
  ``{"message": "Internal server error", ...}`` frame. The handler's return value is otherwise not sent
  (Chalice configures no route responses).
- Limits: a message over the limit closes with 1009, a binary frame with 1003; idle time and connection
  age close with 1001. Each close fires ``$disconnect`` with the code and reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.web_exceptions import HTTPException

from localgw.connections import Connection, Connections
from localgw.integration import Integration
from localgw.limits import Limits
from localgw.log import Log
from testing import apigw as events

# What a refusal without a body of its own carries.
REFUSAL_MESSAGES = {
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def header(response: object, name: str) -> str | None:
    """A header of a proxy integration's response, by case-insensitive name (multi-value ones joined)."""
    if not isinstance(response, dict):
        return None
    wanted = name.lower()
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == wanted:
            return str(value)
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == wanted and values:
            return ", ".join(str(v) for v in values)
    return None


def refusal(status: int, response: object) -> web.Response:
    """The HTTP answer to a refused handshake: the ``$connect`` handler's status, body and headers."""
    response = response if isinstance(response, dict) else {}
    body = response.get("body") or ""
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
    if not raw:
        message = REFUSAL_MESSAGES.get(status, "Internal server error" if status >= 500 else "Forbidden")
        return web.json_response({"message": message}, status=status)
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
    headers.setdefault("Content-Type", "application/json")
    return web.Response(status=status, body=raw, headers=headers)


class WebSocketEndpoint:
    def __init__(
        self,
        connections: Connections,
        integration: Integration,
        *,
        stage: str,
        api_id: str,
        limits: Limits,
        log: Log,
    ) -> None:
        self._connections = connections
        self._integration = integration
        self._stage = stage
        self._api_id = api_id
        self._limits = limits
        self._log = log
        self._handlers: set[asyncio.Task] = set()  # one per WebSocket, done after its $disconnect
        self._stopping = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One client's whole connection: its handshake, then its messages until it closes."""
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response(
                {"message": "Upgrade Required: connect with a WebSocket client"}, status=426
            )
        if self._stopping:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        connected_at = events.now_ms()
        info = events.ConnectionInfo(
            connection_id=events.new_id(),
            connected_at_ms=connected_at,
            source_ip=request.remote or "127.0.0.1",
            user_agent=request.headers.get("User-Agent"),
            domain_name=request.host,
            stage=self._stage,
            api_id=self._api_id,
        )
        if self._integration.has_route(events.ROUTE_CONNECT):
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            event = events.connect_event(
                info,
                headers=headers,
                query_string=request.query_string,
                local_port=sockname[1] if sockname else 0,
                scheme=request.scheme,
            )
            response, status, error = await self._integration.invoke(events.ROUTE_CONNECT, event)
            if error is not None or status is None:
                self._log.line("refused", info.connection_id, "HTTP 500")
                return web.json_response({"message": "Internal server error"}, status=500)
            if not 200 <= status < 300:
                self._log.line("refused", info.connection_id, f"HTTP {status}")
                return refusal(status, response)
            selected = header(response, "Sec-WebSocket-Protocol")
        else:
            selected = None

        ws = web.WebSocketResponse(
            max_msg_size=self._limits.max_message_bytes + 1,  # aiohttp's bound is exclusive
            compress=False,
            autoping=True,
            timeout=self._limits.close_timeout_seconds,
        )
        if selected:
            ws.headers["Sec-WebSocket-Protocol"] = selected  # the handler's choice, as API Gateway sends it
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError, HTTPException):  # the client left while $connect ran
            self._log.line("gone", info.connection_id, "the client left before the handshake completed")
            if self._integration.has_route(events.ROUTE_DISCONNECT):
                event = events.disconnect_event(
                    info, status_code=1006, reason=events.DISCONNECT_REASONS[1006]
                )
                await self._integration.invoke(events.ROUTE_DISCONNECT, event)
            return ws
        connection = Connection(info, ws, request.transport, outbox_limit=self._limits.max_outbound_bytes)
        self._connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        detail = f"from {info.source_ip} ({len(self._connections)} open)"
        if selected:
            detail += f", subprotocol {selected}"
        elif request.headers.get("Sec-WebSocket-Protocol"):
            detail += ", no subprotocol selected of those offered: a browser fails this handshake"
        self._log.line("connected", info.connection_id, detail)
        watchdog = asyncio.create_task(self._watchdog(connection))
        pump = asyncio.create_task(connection.pump())
        code, reason = 1006, events.DISCONNECT_REASONS[1006]
        try:
            code, reason = await self._receive_loop(connection)
        finally:
            watchdog.cancel()
            pump.cancel()
            connection.open = False
            self._connections.remove(info.connection_id)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=code if code not in (1005, 1006) else 1000)
            if connection.server_close is not None:
                code, reason = connection.server_close
            shown = f"{code} {reason}" if reason else str(code)
            self._log.line("closed", info.connection_id, f"{shown} ({len(self._connections)} open)")
            if self._integration.has_route(events.ROUTE_DISCONNECT):
                event = events.disconnect_event(info, status_code=code, reason=reason)
                await self._integration.invoke(events.ROUTE_DISCONNECT, event)
            if task is not None:
                self._handlers.discard(task)
        return ws

    async def _receive_loop(self, connection: Connection) -> tuple[int, str]:
        """Read until the socket closes; returns the close code and reason for ``$disconnect``."""
        ws = connection.ws
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                connection.touch()
                self._connections.spawn(self._on_message(connection, msg.data))
            elif msg.type is WSMsgType.BINARY:
                # API Gateway WebSocket APIs accept no binary frames from clients.
                task = connection.close(WSCloseCode.UNSUPPORTED_DATA, events.DISCONNECT_REASONS[1003])
                if task is not None:
                    await task
                return WSCloseCode.UNSUPPORTED_DATA, events.DISCONNECT_REASONS[1003]
            elif msg.type is WSMsgType.CLOSE:
                # The client's own code and reason, as API Gateway reports them (a browser closing a tab
                # gives 1001 and ""); a close frame without a code is reported as 1005.
                code = msg.data or 1005
                if code == 1005:
                    return code, events.DISCONNECT_REASONS[1005]
                return code, msg.extra or ""
            elif msg.type is WSMsgType.ERROR:  # aiohttp has closed with the error's code (1009, 1002...)
                code = getattr(msg.data, "code", None) or ws.close_code or 1006
                return code, events.DISCONNECT_REASONS.get(code, str(msg.data))
            else:  # CLOSING (we started the close) or CLOSED (the peer vanished)
                if connection.server_close is not None:
                    return connection.server_close
                return 1006, events.DISCONNECT_REASONS[1006]

    async def _on_message(self, connection: Connection, body: str) -> None:
        event = events.message_event(connection.info, body=body)
        request_id = event["requestContext"]["requestId"]
        connection_id = connection.info.connection_id
        if not self._integration.has_route(events.ROUTE_DEFAULT):
            self._log.line("no route", connection_id, "403 (the app has no @app.on_ws_message handler)")
            self._connections.send(connection, events.forbidden(connection_id, request_id))
            return
        _response, _status, error = await self._integration.invoke(events.ROUTE_DEFAULT, event)
        if error is not None:
            self._connections.send(connection, events.internal_server_error(connection_id, request_id))

    async def _watchdog(self, connection: Connection) -> None:
        """Close with 1001 after the idle timeout or the maximum connection duration, as API Gateway does.

        Activity only moves the idle deadline later, so the watchdog sleeps until the earliest moment
        either could pass and looks again then: a frame costs it nothing (waking the watchdogs of a
        thousand recipients on every publish was a twelfth of the gateway's CPU in a fan-out).
        """
        limits = self._limits
        while connection.open:
            now = time.monotonic()
            idle_left = connection.last_active_monotonic + limits.idle_timeout_seconds - now
            age_left = connection.opened_monotonic + limits.max_connection_seconds - now
            if age_left <= 0 or idle_left <= 0:
                why = "maximum connection duration" if age_left <= 0 else "idle timeout"
                self._log.line("timeout", connection.info.connection_id, why)
                connection.close(WSCloseCode.GOING_AWAY, events.DISCONNECT_REASONS[1001])
                return
            await asyncio.sleep(min(idle_left, age_left))

    async def close_all(self, *, deadline_seconds: float = 5.0) -> None:
        """Refuse new clients, close every connection with 1001 and wait (bounded) until each one's
        $disconnect has run."""
        self._stopping = True
        for connection in self._connections:
            connection.close(WSCloseCode.GOING_AWAY, events.DISCONNECT_REASONS[1001])
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=deadline_seconds)


__all__ = ["WebSocketEndpoint"]
