"""A tiny WebSocket service (python-websockets) speaking ws-broadcast's wire format with history, so
that the client's recovery is tested before the real service keeps history.

Streams: each channel, and ``None`` for the messages to everyone; every publication gets the
stream's next offset in epoch ``epoch``, and the last ``history`` of each are kept. A subscribe or
resume with ``since`` is answered ``recovered: true`` with every kept message after it, or
``recovered: false`` when one is missing from history or the epoch differs. The test steers the rest:
``lost`` drops deliveries in transit, ``refusals`` answers a request kind with an error, ``drop_all``
cuts every connection, ``away`` refuses handshakes (503) while the test publishes, ``lose_state``
makes the next pong say ``lost``, ``status`` refuses the next handshakes.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve


@dataclass
class Connection:
    ws: ServerConnection
    channels: set[str] = field(default_factory=set)


class ScriptedService:
    def __init__(self, *, history: int | None = 100, epoch: str = "E1") -> None:
        """``history=None``: the service keeps none and sends no offsets (HISTORY_SIZE=0)."""
        self.history = history
        self.epoch = epoch
        self.streams: dict[str | None, list[dict]] = defaultdict(
            list
        )  # every publication, offset = index + 1
        self.connections: list[Connection] = []
        self.handshakes: list[list[str]] = []  # the subprotocols each handshake offered
        self.received: list[dict] = []  # every request, in order
        self.status: list[int] = []  # the next handshakes' refusals, in order
        self.refusals: dict[str, list[dict]] = defaultdict(list)  # request kind -> error replies to give
        self.lost: set[tuple[str | None, int]] = set()  # (stream, offset) deliveries dropped in transit
        self.lose_state = False
        self.away = False  # while True, every handshake is refused with 503 (the client retries)
        self.changed = asyncio.Condition()

    async def __aenter__(self) -> ScriptedService:
        self._server = await serve(
            self._serve, "127.0.0.1", 0, subprotocols=["wsbroadcast"], process_request=self._handshake
        )
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/api"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, predicate, timeout: float = 5) -> None:
        """Until ``predicate()`` holds (checked at each request and connection), bounded."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    def requests(self, action: str) -> list[dict]:
        return [r for r in self.received if r.get("action", "publish") == action]

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _handshake(self, connection, request):
        self.handshakes.append(
            [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        )
        if self.status:
            return connection.respond(HTTPStatus(self.status.pop(0)), "refused\n")
        if self.away:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "away\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        connection = Connection(ws)
        self.connections.append(connection)
        await self._changed()
        try:
            async for text in ws:
                request = json.loads(text)
                self.received.append(request)
                await self._answer(connection, request)
                await self._changed()
        finally:
            self.connections.remove(connection)
            await self._changed()

    async def _answer(self, connection: Connection, request: dict) -> None:
        action = request.get("action", "publish")
        if self.refusals[action]:
            await connection.ws.send(json.dumps({"error": self.refusals[action].pop(0)}))
            return
        if action == "ping":
            await connection.ws.send(
                json.dumps({"action": "pong", "received": 0, **({"lost": True} if self.lose_state else {})})
            )
            self.lose_state = False
        elif action == "subscribe":
            connection.channels.add(request["channel"])
            await self._ack(connection, {"action": "subscribed", "channel": request["channel"]}, request)
        elif action == "resume":
            await self._ack(connection, {"action": "resumed"}, request)
        elif action == "publish":
            await self.publish(
                request.get("data"),
                channel=request.get("channel"),
                type=request["type"],
                sender=None if request.get("echo") else connection,
            )

    async def _ack(self, connection: Connection, ack: dict, request: dict) -> None:
        stream = self.streams[ack.get("channel")]
        if self.history is not None:
            ack.update(offset=len(stream), epoch=self.epoch)
        since = request.get("since")
        replay = []
        if since is not None and self.history is not None:
            kept_from = max(1, len(stream) - self.history + 1)
            recovered = since["epoch"] == self.epoch and since["offset"] + 1 >= kept_from
            ack["recovered"] = recovered
            replay = stream[since["offset"] :] if recovered else []
        await connection.ws.send(json.dumps(ack))
        for message in replay:
            await connection.ws.send(json.dumps(message))

    async def publish(
        self, data, *, channel: str | None = None, type: int = 1, sender: Connection | None = None
    ) -> int:
        """Publish as the service does (``sender``: left out, as without echo); the offset."""
        stream = self.streams[channel]
        message = {"type": type, "data": data, "received": 1795654176}
        if channel is not None:
            message["channel"] = channel
        if self.history is not None:
            message.update(offset=len(stream) + 1, epoch=self.epoch)
        stream.append(message)
        for connection in list(self.connections):
            member = channel is None or channel in connection.channels
            if member and connection is not sender and (channel, len(stream)) not in self.lost:
                await connection.ws.send(json.dumps(message))
        return len(stream)

    async def drop_all(self) -> None:
        """Cut every connection, as a gateway that closes them does (1001)."""
        for connection in list(self.connections):
            await connection.ws.close(1001, "going away")
