"""The local API Gateway WebSocket API: one aiohttp server for the WebSocket endpoint and the
Management API, both under the stage path (``ws://HOST:PORT/STAGE`` and
``http://HOST:PORT/STAGE/@connections/{id}``).

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
- Management API: POST (200; 410; 413), GET (200 JSON; 410), DELETE (204, fires ``$disconnect``; 410).
  A request without a SigV4 ``Authorization`` header gets 403 as on AWS (its form is checked, as
  ``testing.sigv4`` checks it; the signature is not: the gateway does not know the app's secret).
  A post is answered as soon as it is queued for the client (``localgw.outbox``); a client whose
  outbox overflows is closed with 1008 and the post that overflowed it gets 410.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.web_exceptions import HTTPException

from localgw import rest
from localgw.lambdaenv import HandlerError, LambdaFunction, status_of
from localgw.outbox import DEFAULT_LIMIT_BYTES, Outbox, size_of
from testing import apigw as events
from testing.apigw import (
    API_GATEWAY_IDLE_TIMEOUT_SECONDS,
    API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS,
    API_GATEWAY_MAX_CONNECTION_SECONDS,
    API_GATEWAY_MAX_MESSAGE_BYTES,
)
from testing.sigv4 import authorization_problem

# Runs a function on an event within a timeout, elsewhere (the runtime process); resolves to its response.
Invoke = Callable[..., Future]

# A client that does not read what it is sent breaks the server's policy (it must read); 1013 ("try
# again later") would blame the server's load and invite a reconnect that overflows again.
SLOW_CLIENT_CLOSE = (WSCloseCode.POLICY_VIOLATION, "Outbound buffer full: the client is not reading")
# What a refusal without a body of its own carries.
REFUSAL_MESSAGES = {
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


@dataclass(frozen=True, kw_only=True)
class Limits:
    idle_timeout_seconds: float = API_GATEWAY_IDLE_TIMEOUT_SECONDS
    max_connection_seconds: float = API_GATEWAY_MAX_CONNECTION_SECONDS
    max_message_bytes: int = API_GATEWAY_MAX_MESSAGE_BYTES
    integration_timeout_seconds: float = API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS
    # None: each function's lambda_timeout from .chalice/config.json (Chalice's default is 60 s).
    handler_timeout_seconds: float | None = None
    # How long a close handshake may take before the socket is dropped.
    close_timeout_seconds: float = 2.0
    # For benchmarks: each Management API post answers only after this long, as a round trip from a
    # Lambda function to API Gateway would take (0: answer at once).
    simulated_post_latency_seconds: float = 0.0
    # Bytes queued for one client before the gateway gives up on it (localgw.outbox).
    max_outbound_bytes: int = DEFAULT_LIMIT_BYTES


class Log:
    """One readable line per connection event and invocation, on stdout, flushed at once.

    Every line (the gateway's and the runtime's) is written whole by this one writer, under a lock.
    The app's JSON log lines are shown only with ``app_logs``; its other output (a print, a traceback)
    always is.
    """

    def __init__(self, stream=None, *, verbose: bool = False, app_logs: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.verbose = verbose
        self.app_logs = app_logs

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def line(self, what: str, connection_id: str, detail: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        self._write(f"{stamp} {what:<12} {connection_id:<16} {detail}")

    def info(self, text: str) -> None:
        self._write(f"localgw: {text}")

    def app(self, text: str) -> None:
        """A line the app's process printed."""
        if self.app_logs or not (text.startswith("{") and text.endswith("}")):
            self._write(text)


def _iso(epoch_ms: int) -> str:
    return (
        datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{epoch_ms % 1000:03d}Z"
    )


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


class Connection:
    def __init__(
        self, info: events.ConnectionInfo, ws: web.WebSocketResponse, transport, *, outbox_limit: int
    ) -> None:
        self.info = info
        self.ws = ws
        self.transport = transport
        self.outbox = Outbox(outbox_limit)
        self.open = True
        self.last_active_monotonic = time.monotonic()
        self.opened_monotonic = self.last_active_monotonic
        self.last_active_ms = info.connected_at_ms
        self.server_close: tuple[int, str] | None = None
        self.activity = asyncio.Event()  # wakes the idle watchdog

    def touch(self) -> None:
        self.last_active_monotonic = time.monotonic()
        self.last_active_ms = events.now_ms()
        self.activity.set()

    def close(self, code: int, reason: str, *, abandon: bool = False) -> asyncio.Task | None:
        """Start closing from the gateway's side; idempotent. The receive loop then fires $disconnect.

        ``abandon``: the client is not reading, so neither the close handshake nor the data already
        written can be waited for: the close frame is sent best effort, then the socket is dropped.
        """
        if not self.open:
            return None
        self.open = False
        self.server_close = (code, reason)
        if abandon:
            return asyncio.ensure_future(self._abandon(code, reason))
        return asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    async def _abandon(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode(), drain=False), 1.0)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if self.transport is not None:
                self.transport.abort()

    async def pump(self) -> None:
        """Write the outbox to the socket in order; a client that does not read stalls only this task."""
        while True:
            frame = await self.outbox.next()
            try:
                if isinstance(frame, bytes):
                    try:
                        text = frame.decode("utf-8")
                    except UnicodeDecodeError:
                        await self.ws.send_bytes(frame)
                    else:
                        await self.ws.send_str(text)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            self.outbox.sent()


def _error(status: int, error_type: str, message: str | None) -> web.Response:
    """An error as AWS's rest-json services send it, so botocore raises the right exception."""
    return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": error_type})


class Gateway:
    def __init__(
        self,
        functions: dict[str, LambdaFunction],
        *,
        invoke: Invoke,
        stage: str,
        api_id: str,
        limits: Limits,
        log: Log,
        runtime_exited: Callable[[], bool] = lambda: False,
        page: Path | None = None,
    ) -> None:
        """``page``: a file served at ``GET /`` (a sample client; it shadows a REST route at ``/``), and
        the ES modules beside it at ``GET /<name>.js`` (the page imports ``./ws-broadcast.js``)."""
        self.functions = functions
        self.page = page
        self._runtime_exited = runtime_exited
        self.stage = stage
        self.api_id = api_id
        self.limits = limits
        self.log = log
        self.connections: dict[str, Connection] = {}
        self._invoke_function = invoke
        self._handlers: set[asyncio.Task] = set()  # one per WebSocket, done after its $disconnect
        self._background: set[asyncio.Task] = set()
        self._stopping = False
        self._warm: set[str] = set()
        self._cold_start = asyncio.Lock()

    # ---- the aiohttp application ------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # the 128 KB limit is checked here
        stage = self.stage
        app.router.add_get(f"/{stage}", self._websocket)
        app.router.add_get(f"/{stage}/", self._websocket)
        app.router.add_post(f"/{stage}/@connections/{{connection_id}}", self._post)
        app.router.add_get(f"/{stage}/@connections/{{connection_id}}", self._get)
        app.router.add_delete(f"/{stage}/@connections/{{connection_id}}", self._delete)
        # Everything else: the app's REST routes (Chalice's local gateway, in the runtime), the page.
        app.router.add_route("*", "/{path:.*}", self._rest)
        return app

    # ---- invocations ------------------------------------------------------------------------------

    def _timeouts(self, function: LambdaFunction, route_key: str) -> tuple[float, float]:
        """(the function's own timeout, how long the gateway waits for it)."""
        lambda_timeout = self.limits.handler_timeout_seconds or function.timeout_seconds
        wait = lambda_timeout
        if route_key != events.ROUTE_DISCONNECT:  # the integration must answer within 29 s
            wait = min(wait, self.limits.integration_timeout_seconds)
        return lambda_timeout, wait

    async def _invoke(self, route_key: str, event: dict) -> tuple[object, int | None, str | None]:
        """Invoke the route's function off the loop; (response, status, None) or (None, None, error).
        Logs one line.

        In Lambda a container finishes its cold start (init and first invocation) before it takes another
        event. Here all invocations share one process, so each function's first invocation runs alone:
        lazy initialisation in handlers (a boto3 client built on first use, say) never races. A runtime
        that exited is replaced by a new process on the next invocation: every function is cold again.
        """
        if self._runtime_exited():
            self._warm.clear()
        if route_key not in self._warm:
            async with self._cold_start:
                if route_key not in self._warm:
                    try:
                        return await self._invoke_now(route_key, event)
                    finally:
                        self._warm.add(route_key)
        return await self._invoke_now(route_key, event)

    async def _invoke_now(self, route_key: str, event: dict) -> tuple[object, int | None, str | None]:
        function = self.functions[route_key]
        connection_id = event["requestContext"]["connectionId"]
        lambda_timeout, timeout = self._timeouts(function, route_key)
        started = time.perf_counter()
        future = asyncio.wrap_future(self._invoke_function(function, event, timeout_seconds=lambda_timeout))
        response: object = None
        status: int | None = None
        error: str | None = None
        try:
            response = await asyncio.wait_for(future, timeout)
            status = status_of(response)
        except TimeoutError:
            error = f"Task timed out after {timeout:.2f} seconds"
        except HandlerError as exc:
            error = str(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        outcome = str(status) if error is None else f"ERR {error}"
        self.log.line(route_key, connection_id, f"{outcome} {elapsed_ms:.1f} ms")
        return response, status, error

    # ---- REST routes and the page -----------------------------------------------------------------

    def _page_file(self, path: str) -> Path | None:
        """The page at ``/``, or a module beside it (one name, ``.js``; nothing else of the folder)."""
        if path == "/":
            return self.page
        name = path[1:]
        if "/" in name or not name.endswith(".js") or name.startswith("."):
            return None
        module = self.page.parent / name
        return module if module.is_file() else None

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        """A request to the app's REST API, served as ``chalice local`` serves it; ``GET /``: the page."""
        if request.method == "GET" and self.page is not None and (beside := self._page_file(request.path)):
            return web.FileResponse(beside)
        function = self.functions.get(rest.ROUTE_KEY)
        if function is None:
            return web.json_response({"message": "Not Found"}, status=404)
        event = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {name: value for name, value in request.headers.items()},
            "body": await request.read(),
        }
        started = time.perf_counter()
        future = self._invoke_function(
            function, event, timeout_seconds=self.limits.integration_timeout_seconds
        )
        try:
            response = await asyncio.wait_for(
                asyncio.wrap_future(future), self.limits.integration_timeout_seconds
            )
        except TimeoutError:
            response = {
                "statusCode": 504,
                "headers": {},
                "body": b'{"message": "Endpoint request timed out"}',
            }
        except HandlerError as error:
            self.log.info(f"{request.method} {request.path}: {error}")
            response = {"statusCode": 502, "headers": {}, "body": b'{"message": "Internal server error"}'}
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.log.line(f"{request.method} {request.path}", "", f"{response['statusCode']} {elapsed_ms:.1f} ms")
        headers = {k: v for k, v in response["headers"].items() if k.lower() not in ("content-length",)}
        return web.Response(status=response["statusCode"], headers=headers, body=response["body"])

    # ---- WebSocket endpoint -----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
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
            stage=self.stage,
            api_id=self.api_id,
        )
        if events.ROUTE_CONNECT in self.functions:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            event = events.connect_event(
                info,
                headers=headers,
                query_string=request.query_string,
                local_port=sockname[1] if sockname else 0,
                scheme=request.scheme,
            )
            response, status, error = await self._invoke(events.ROUTE_CONNECT, event)
            if error is not None or status is None:
                self.log.line("refused", info.connection_id, "HTTP 500")
                return web.json_response({"message": "Internal server error"}, status=500)
            if not 200 <= status < 300:
                self.log.line("refused", info.connection_id, f"HTTP {status}")
                return refusal(status, response)
            selected = header(response, "Sec-WebSocket-Protocol")
        else:
            selected = None

        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_message_bytes + 1,  # aiohttp's bound is exclusive
            compress=False,
            autoping=True,
            timeout=self.limits.close_timeout_seconds,
        )
        if selected:
            ws.headers["Sec-WebSocket-Protocol"] = selected  # the handler's choice, as API Gateway sends it
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError, HTTPException):  # the client left while $connect ran
            self.log.line("gone", info.connection_id, "the client left before the handshake completed")
            if events.ROUTE_DISCONNECT in self.functions:
                event = events.disconnect_event(
                    info, status_code=1006, reason=events.DISCONNECT_REASONS[1006]
                )
                await self._invoke(events.ROUTE_DISCONNECT, event)
            return ws
        connection = Connection(info, ws, request.transport, outbox_limit=self.limits.max_outbound_bytes)
        self.connections[info.connection_id] = connection
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        detail = f"from {info.source_ip} ({len(self.connections)} open)"
        if selected:
            detail += f", subprotocol {selected}"
        elif request.headers.get("Sec-WebSocket-Protocol"):
            detail += ", no subprotocol selected of those offered: a browser fails this handshake"
        self.log.line("connected", info.connection_id, detail)
        watchdog = asyncio.create_task(self._watchdog(connection))
        pump = asyncio.create_task(connection.pump())
        code, reason = 1006, events.DISCONNECT_REASONS[1006]
        try:
            code, reason = await self._receive_loop(connection)
        finally:
            watchdog.cancel()
            pump.cancel()
            connection.open = False
            self.connections.pop(info.connection_id, None)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=code if code not in (1005, 1006) else 1000)
            if connection.server_close is not None:
                code, reason = connection.server_close
            shown = f"{code} {reason}" if reason else str(code)
            self.log.line("closed", info.connection_id, f"{shown} ({len(self.connections)} open)")
            if events.ROUTE_DISCONNECT in self.functions:
                event = events.disconnect_event(info, status_code=code, reason=reason)
                await self._invoke(events.ROUTE_DISCONNECT, event)
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
                self._spawn(self._on_message(connection, msg.data))
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

    def _spawn(self, coro) -> None:
        if coro is None:
            return
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_message(self, connection: Connection, body: str) -> None:
        event = events.message_event(connection.info, body=body)
        request_id = event["requestContext"]["requestId"]
        connection_id = connection.info.connection_id
        if events.ROUTE_DEFAULT not in self.functions:
            self.log.line("no route", connection_id, "403 (the app has no @app.on_ws_message handler)")
            self._send(connection, events.forbidden(connection_id, request_id))
            return
        _response, _status, error = await self._invoke(events.ROUTE_DEFAULT, event)
        if error is not None:
            self._send(connection, events.internal_server_error(connection_id, request_id))

    def _send(self, connection: Connection, data: str | bytes) -> bool:
        """Queue a frame for the client without waiting for it to read; False when it is gone."""
        if not connection.open or connection.ws.closed:
            return False
        if connection.outbox.put(data):
            return True
        outbox = connection.outbox
        self.log.line(
            "slow client",
            connection.info.connection_id,
            f"{outbox.queued_bytes} bytes queued, {size_of(data)} more would pass the {outbox.limit} limit",
        )
        self._spawn(connection.close(*SLOW_CLIENT_CLOSE, abandon=True))
        return False

    async def _watchdog(self, connection: Connection) -> None:
        """Close with 1001 after the idle timeout or the maximum connection duration, as API Gateway does."""
        limits = self.limits
        while connection.open:
            now = time.monotonic()
            idle_left = connection.last_active_monotonic + limits.idle_timeout_seconds - now
            age_left = connection.opened_monotonic + limits.max_connection_seconds - now
            if age_left <= 0 or idle_left <= 0:
                why = "maximum connection duration" if age_left <= 0 else "idle timeout"
                self.log.line("timeout", connection.info.connection_id, why)
                connection.close(WSCloseCode.GOING_AWAY, events.DISCONNECT_REASONS[1001])
                return
            connection.activity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.activity.wait(), min(idle_left, age_left))

    # ---- Management API ---------------------------------------------------------------------------

    def _lookup(self, request: web.Request) -> tuple[Connection | None, web.Response | None]:
        """The open connection a Management API call names, or the logged error response to send."""
        failure = None
        connection = self.connections.get(request.match_info["connection_id"])
        if authorization_problem(request.headers) is not None:
            failure = _error(403, "ForbiddenException", "Missing Authentication Token")
        elif connection is None or not connection.open:
            failure = _error(410, "GoneException", None)
        if failure is not None:
            self._log_management(request.method, request.match_info["connection_id"], failure.status)
            return None, failure
        return connection, None

    def _log_management(self, method: str, connection_id: str, status: int) -> None:
        if self.log.verbose or status >= 400:
            self.log.line(f"{method} @conn", connection_id, str(status))

    async def _post(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        data = await request.read()
        if self.limits.simulated_post_latency_seconds:
            await asyncio.sleep(self.limits.simulated_post_latency_seconds)
        if len(data) > self.limits.max_message_bytes:
            self._log_management("POST", connection_id, 413)
            return _error(413, "PayloadTooLargeException", "Message too long")
        if not self._send(connection, data):
            self._log_management("POST", connection_id, 410)
            return _error(410, "GoneException", None)
        connection.touch()  # API Gateway counts a post as activity on the connection
        self._log_management("POST", connection_id, 200)
        return web.Response(status=200)

    async def _get(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        info = connection.info
        identity = {"sourceIp": info.source_ip}
        if info.user_agent is not None:
            identity["userAgent"] = info.user_agent
        self._log_management("GET", connection_id, 200)
        return web.json_response(
            {
                "connectedAt": _iso(info.connected_at_ms),
                "identity": identity,
                "lastActiveAt": _iso(connection.last_active_ms),
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        self._spawn(connection.close(WSCloseCode.OK, events.DISCONNECT_REASONS[1000]))
        self._log_management("DELETE", connection_id, 204)
        return web.Response(status=204)

    # ---- shutdown ---------------------------------------------------------------------------------

    async def close_all(self, *, deadline_seconds: float = 5.0) -> None:
        """Close every connection with 1001 and wait (bounded) until each one's $disconnect has run."""
        self._stopping = True
        for connection in list(self.connections.values()):
            connection.close(WSCloseCode.GOING_AWAY, events.DISCONNECT_REASONS[1001])
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=deadline_seconds)


async def serve(
    gateway: Gateway,
    sockets: list,
    *,
    on_ready: Callable[[], None],
    stop: asyncio.Event,
) -> None:
    """Serve on already-bound sockets until ``stop`` is set, then close every connection cleanly."""
    # aiohttp warns when a client offered subprotocols and none was selected: the gateway's own
    # "connected" line says so, in words.
    logging.getLogger("aiohttp.websocket").setLevel(logging.ERROR)
    runner = web.AppRunner(gateway.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    on_ready()
    await stop.wait()
    await gateway.close_all()
    await runner.cleanup()


__all__ = ["Connection", "Gateway", "Limits", "Log", "serve"]
