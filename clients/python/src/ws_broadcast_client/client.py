"""The asyncio client: one connection at a time, reopened by itself, and every message once, in order.

The I/O is thin and the decisions are elsewhere: ``wire`` reads and writes frames, ``ordering`` decides
what to yield and what to recover, ``backoff`` how long to wait. This module holds the socket, the
timers and the requests in flight.

Requests in flight. The service answers a subscribe with an ack that names its channel, a publish
with nothing, and any refusal with an error reply that names no request. So a refusal is given to the
oldest request still waiting for an answer. A publish to a stream this client is in (everyone, or a
channel it joined) and that carries offsets is sent with ``echo: true`` whatever ``echo`` says: its
echo confirms it and tells the client its offset, which it would otherwise see as a hole in the
stream; the echo is yielded only when the caller asked for ``echo=True``. Any other publish is sent
as asked and confirmed by nothing (a refusal of it is logged, and a ``retryAfterMs`` in it still
holds back the next publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ws_broadcast_client import wire
from ws_broadcast_client.backoff import Backoff
from ws_broadcast_client.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionLost,
    OverCapacity,
    RateLimited,
    ServiceError,
)
from ws_broadcast_client.ordering import Output, Reorderer
from ws_broadcast_client.wire import Ack, ErrorReply, Gap, Message, Pong

logger = logging.getLogger("ws_broadcast_client")

Token = str | Callable[[], Awaitable[str | None] | str | None] | None
_END = object()
_RETRYABLE = (RateLimited, OverCapacity)


class _Reconnect(Exception):
    """The service lost this connection's state (``lost: true``): open a new one now."""


@dataclass
class _Request:
    """A request waiting for its answer. ``future`` None: the client's own (a resubscribe)."""

    kind: str  # "subscribe", "unsubscribe", "resume" or "publish"
    channel: str | None = None
    future: asyncio.Future | None = None
    echo_of: tuple | None = None  # a publish: (channel, type, data as JSON) of the echo that confirms it
    yield_echo: bool = False
    sent_at: float = 0.0  # the client's own: sent again when unanswered for reply_timeout


@dataclass
class _Limit:
    """No publish before ``until`` (the loop's clock): the service said when to send again."""

    until: float = 0.0
    error: ServiceError | None = field(default=None, repr=False)


class Client:
    """``async with Client(url, token=...) as client``, then ``subscribe``, ``publish`` and
    ``async for message in client``: ``Message`` and ``Gap`` objects, each delivered message once.

    ``token``: a string, or a callable (sync or async) asked again at every reconnect.
    ``hold``: how long a message waits for a missing predecessor before the client recovers it from
    the service's history. ``keepalive``: a ping after that many seconds without sending (API
    Gateway closes a connection idle for 10 minutes). ``reply_timeout``: how long a request waits for
    its answer, or for a connection to send it on. ``backoff``: the reconnect waits.
    """

    def __init__(
        self,
        url: str,
        token: Token = None,
        *,
        hold: float = 1.0,
        keepalive: float = 300.0,
        reply_timeout: float = 10.0,
        open_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._order = Reorderer(hold)
        self._keepalive = keepalive
        self._reply_timeout = reply_timeout
        self._open_timeout = open_timeout
        self._backoff = backoff or Backoff()
        self._channels: dict[str, bool] = {}  # wanted channels -> acknowledged on this connection
        self._requests: deque[_Request] = deque()
        self._hidden: set[tuple[str | None, int | None, str | None]] = set()
        self._limit = _Limit()
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._closing = False
        self._last_sent = 0.0
        self.reconnects = 0
        """How many times the connection was opened again."""

    # ---- the public API ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        """Open the first connection; its failure is raised (a wrong URL or token shows at once)."""
        self._attach(await self._open())
        self._runner = asyncio.create_task(self._run(), name="ws-broadcast-client")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message | Gap:
        item = await self._outbox.get()
        if item is _END:
            self._outbox.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def subscribe(self, channel: str) -> None:
        """Join ``channel``; returns on the service's ack, raises its refusal (``ChannelForbidden``...).
        The client joins it again by itself after every reconnect."""
        self._channels.setdefault(channel, False)
        try:
            await self._request(wire.subscribe(channel), _Request("subscribe", channel))
        except ServiceError:
            self._channels.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel``; what the client held of it is yielded first."""
        self._channels.pop(channel, None)
        await self._request(
            wire.encode({"action": "unsubscribe", "channel": channel}), _Request("unsubscribe", channel)
        )
        self._emit(self._order.forget(channel))

    async def publish(
        self, data: Any, *, type: int, channel: str | None = None, echo: bool = False, retry: bool = False
    ) -> None:
        """Publish ``data`` to everyone or to ``channel``; raises the service's refusal.

        ``retry``: on ``RateLimited``/``OverCapacity``, wait as long as the service said
        (``retryAfterMs``) and send again, instead of raising. While such a wait is running, a publish
        without ``retry`` raises at once, unsent (the service would drop it without a reply).
        """
        loop = asyncio.get_running_loop()
        # Only a stream with offsets would show the caller's own message as a hole.
        joined = channel is None or self._channels.get(channel, False)
        confirmed = joined and self._order.point(channel) is not None
        echo_of = (channel, type, _canonical(data)) if confirmed else None
        while True:
            wait = self._limit.until - loop.time()
            if wait > 0 and self._limit.error is not None:
                if not retry:
                    refused = self._limit.error
                    raise refused.__class__(refused.code, refused.message, wait)
                await asyncio.sleep(wait)
            text = wire.publication(data, type=type, channel=channel, echo=echo or confirmed)
            request = _Request("publish", channel, echo_of=echo_of, yield_echo=echo) if confirmed else None
            try:
                await self._request(text, request)
                return
            except _RETRYABLE:
                if not retry:
                    raise

    async def close(self) -> None:
        """Close the connection (it is not reopened) and end the iteration."""
        if self._closing:
            return
        self._closing = True
        # The socket first: the runner then ends by itself (a cancellation alone can be lost inside
        # asyncio.wait_for when a frame arrives at the same instant, before Python 3.12).
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()  # when it is waiting to reconnect
            await asyncio.gather(self._runner, return_exceptions=True)
        self._fail_requests(ConnectionLost("the client was closed"), keep_subscribes=False)
        self._outbox.put_nowait(_END)

    # ---- the connection's life --------------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        """One handshake; on 401/403 the token callable is asked again once, then it is given up."""
        token = await self._ask_token()
        asked_again = False
        while True:
            try:
                return await connect(
                    self._url, subprotocols=wire.subprotocols(token), open_timeout=self._open_timeout
                )
            except InvalidStatus as refused:
                status = refused.response.status_code
                if status not in (401, 403):
                    raise
                if not callable(self._token) or asked_again:
                    raise AuthenticationFailed(status) from None
                logger.info("handshake refused with %s: asking for a token again", status)
                token, asked_again = await self._ask_token(), True

    async def _ask_token(self) -> str | None:
        if not callable(self._token):
            return self._token
        token = self._token()
        return await token if inspect.isawaitable(token) else token

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._last_sent = asyncio.get_running_loop().time()
        self._connected.set()

    async def _run(self) -> None:
        """Serve the connection; when it ends without ``close``, open another and restore the streams."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                opened = loop.time()
                now = False
                try:
                    await self._serve(self._ws)
                except _Reconnect:
                    now = True
                    await self._ws.close()
                except (ConnectionClosed, OSError) as closed:
                    logger.info("connection to %s lost: %s", _shown(self._url), closed)
                self._connection_ended()
                if self._closing:
                    return
                self._backoff.connection_ended(loop.time() - opened)
                self._attach(await self._reopen(now))
                self.reconnects += 1
                # When the new connection is gone already, _serve sees it at once.
                with contextlib.suppress(ConnectionClosed):
                    await self._restore()
        except asyncio.CancelledError:
            raise
        except BaseException as fatal:  # AuthenticationFailed, or a bug: the iteration says so
            self._fail_requests(
                fatal if isinstance(fatal, ClientError) else ConnectionLost(str(fatal)), keep_subscribes=False
            )
            self._outbox.put_nowait(fatal)
            self._outbox.put_nowait(_END)

    async def _reopen(self, now: bool) -> ClientConnection:
        while True:
            if not now:
                await asyncio.sleep(self._backoff.next_delay())
            now = False
            try:
                return await self._open()
            except (OSError, InvalidHandshake, TimeoutError, asyncio.TimeoutError) as failed:
                logger.info("reconnect to %s failed: %s", _shown(self._url), failed)

    def _connection_ended(self) -> None:
        self._connected.clear()
        for channel in self._channels:
            self._channels[channel] = False
        self._fail_requests(
            ConnectionLost("the connection closed before the service answered"), keep_subscribes=True
        )

    def _fail_requests(self, error: BaseException, *, keep_subscribes: bool) -> None:
        """Requests of a connection that ended; a caller's subscribes wait on: they are sent again."""
        kept = deque(r for r in self._requests if keep_subscribes and r.kind == "subscribe" and r.future)
        for request in self._requests:
            if request not in kept and request.future and not request.future.done():
                request.future.set_exception(error)
        self._requests = kept

    async def _restore(self) -> None:
        """Join every channel again, and recover each stream from where it stood."""
        self._order.restart(asyncio.get_running_loop().time())
        for channel in self._channels:
            await self._recover(channel)
        if self._order.point(None) is not None:
            await self._recover(None)

    async def _recover(self, channel: str | None) -> None:
        """Subscribe to ``channel`` (resume: None) with ``since`` where the stream stands, if anywhere."""
        point = self._order.point(channel)
        since = None if point is None else (point.offset, point.epoch)
        now = asyncio.get_running_loop().time()
        if channel is None:
            if since is not None:  # the messages to everyone: nothing to resume before the first
                self._requests.append(_Request("resume", sent_at=now))
                await self._send(wire.resume(since))
        else:
            self._requests.append(_Request("subscribe", channel, sent_at=now))
            await self._send(wire.subscribe(channel, since))

    async def _resend_unanswered(self, now: float) -> None:
        """The client's own requests unanswered for ``reply_timeout`` (the service answers only the
        first of a burst it refuses): send them again, from where the stream stands now."""
        for request in [
            r for r in self._requests if r.future is None and now - r.sent_at >= self._reply_timeout
        ]:
            self._requests.remove(request)
            if request.channel is None or request.channel in self._channels:
                await self._recover(request.channel)

    async def _serve(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wake = self._last_sent + self._keepalive
            deadlines = [self._order.deadline()] + [
                r.sent_at + self._reply_timeout for r in self._requests if r.future is None
            ]
            wake = min([wake] + [d for d in deadlines if d is not None])
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, wake - loop.time()))
            except asyncio.TimeoutError:
                pass
            else:
                self._on_frame(wire.parse_frame(raw), loop.time())
            now = loop.time()
            if now - self._last_sent >= self._keepalive:
                await self._send(wire.encode({"action": "ping"}))
            for point in self._order.due(now):
                await self._recover(point.channel)
            await self._resend_unanswered(now)

    # ---- frames from the service ------------------------------------------------------------------

    def _on_frame(self, frame: wire.Frame | None, now: float) -> None:
        if isinstance(frame, Message):
            if self._claim_echo(frame):
                if frame.offset is None:
                    return
                self._hidden.add((frame.channel, frame.offset, frame.epoch))
            self._emit(self._order.delivered(frame, now))
        elif isinstance(frame, Ack):
            self._on_ack(frame, now)
        elif isinstance(frame, Pong):
            if frame.lost:
                raise _Reconnect()
        elif isinstance(frame, ErrorReply):
            self._on_error(frame.error, now)

    def _on_ack(self, ack: Ack, now: float) -> None:
        if ack.lost:
            raise _Reconnect()
        if ack.action != "unsubscribed":
            self._emit(self._order.acknowledged(ack.channel, ack.offset, ack.epoch, ack.recovered, now))
            if ack.channel in self._channels:
                self._channels[ack.channel] = True
        kind = {"subscribed": "subscribe", "unsubscribed": "unsubscribe", "resumed": "resume"}[ack.action]
        for request in [r for r in self._requests if r.kind == kind and r.channel == ack.channel]:
            self._requests.remove(request)
            _settle(request)

    def _on_error(self, error: ServiceError, now: float) -> None:
        if isinstance(error, _RETRYABLE) and error.retry_after is not None:
            self._limit = _Limit(max(self._limit.until, now + error.retry_after), error)
        if not self._requests:
            logger.warning("the service refused a request: %s", error)
            return
        request = self._requests.popleft()
        if request.future is not None:
            _settle(request, error)
            return
        # The client's own resubscribe or recovery.
        logger.warning("the service refused to restore %s: %s", request.channel or "everyone", error)
        if isinstance(error, _RETRYABLE):  # sent again when the service said (_resend_unanswered)
            request.sent_at = now + (error.retry_after or 0) - self._reply_timeout
            self._requests.append(request)
            return
        if request.kind == "subscribe":
            self._channels.pop(request.channel, None)
        self._emit(self._order.forget(request.channel))

    def _claim_echo(self, message: Message) -> bool:
        """Settle the publish this message is the echo of; True when the caller did not ask for it."""
        echo_of = (message.channel, message.type, _canonical(message.data))
        for request in self._requests:
            if request.kind == "publish" and request.echo_of == echo_of:
                self._requests.remove(request)
                _settle(request)
                return not request.yield_echo
        return False

    def _emit(self, outputs: list[Output]) -> None:
        for output in outputs:
            if (
                isinstance(output, Message)
                and (key := (output.channel, output.offset, output.epoch)) in self._hidden
            ):
                self._hidden.discard(key)
                continue
            self._outbox.put_nowait(output)

    # ---- requests ---------------------------------------------------------------------------------

    async def _request(self, text: str, request: _Request | None) -> None:
        """Send ``text``; with ``request``, wait for its answer (raise the refusal)."""
        if request is not None:
            request.future = asyncio.get_running_loop().create_future()
            self._requests.append(request)
        try:
            await asyncio.wait_for(self._connected.wait(), self._reply_timeout)
            await self._send(text)
            if request is not None:
                await asyncio.wait_for(asyncio.shield(request.future), self._reply_timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"no answer within {self._reply_timeout} s") from None
        except ConnectionClosed:
            raise ConnectionLost("the connection closed while sending") from None
        finally:
            if request is not None and request in self._requests and request.future.done() is False:
                self._requests.remove(request)

    async def _send(self, text: str) -> None:
        await self._ws.send(text)
        self._last_sent = asyncio.get_running_loop().time()


def _settle(request: _Request, error: BaseException | None = None) -> None:
    if request.future is None or request.future.done():
        return
    if error is None:
        request.future.set_result(None)
    else:
        request.future.set_exception(error)


def _canonical(data: Any) -> str:
    """``data`` as JSON, keys sorted: the same for what was sent and what came back."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _shown(url: str) -> str:
    """The URL without its query: a ``?token=`` must never reach a log."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))
