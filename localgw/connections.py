"""The open WebSocket connections, shared by the WebSocket endpoint (which opens and closes them) and
the Management API (which posts to them, describes and deletes them).

A frame for a client, a Management API post or the gateway's own error frame, is queued in the
connection's outbox (``localgw.outbox``) and written by one pump per connection, so a client that
does not read stalls nobody else; a client whose outbox overflows is closed with 1008.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSCloseCode, web

from localgw.log import Log
from localgw.outbox import Outbox, size_of
from testing import apigw as events

# A client that does not read what it is sent breaks the server's policy (it must read); 1013 ("try
# again later") would blame the server's load and invite a reconnect that overflows again.
SLOW_CLIENT_CLOSE = (WSCloseCode.POLICY_VIOLATION, "Outbound buffer full: the client is not reading")


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

    def touch(self) -> None:
        self.last_active_monotonic = time.monotonic()
        self.last_active_ms = events.now_ms()

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


class Connections:
    """The open connections by id, and what both endpoints do with one: queue it a frame, close it
    in the background."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._by_id: dict[str, Connection] = {}
        self._background: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        """A snapshot: closing a connection while iterating is safe."""
        return iter(list(self._by_id.values()))

    def add(self, connection: Connection) -> None:
        self._by_id[connection.info.connection_id] = connection

    def remove(self, connection_id: str) -> None:
        self._by_id.pop(connection_id, None)

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def send(self, connection: Connection, data: str | bytes) -> bool:
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
        self.spawn(connection.close(*SLOW_CLIENT_CLOSE, abandon=True))
        return False

    def spawn(self, coro) -> None:
        """Run ``coro`` (a close, a message's invocation) on the loop, keeping it referenced until done."""
        if coro is None:
            return
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["SLOW_CLIENT_CLOSE", "Connection", "Connections"]
