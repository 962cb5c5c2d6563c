"""A TCP proxy on 127.0.0.1 that can drop its connections the way a NAT gateway does: an RST to the
client and no WebSocket close frame, so the client learns of it only from the socket's error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class RstProxy:
    """``async with RstProxy(port) as proxy``: ``proxy.port`` forwards to ``port``; ``cut()`` resets
    every connection it carries (the upstream side is closed too, as the flow is gone)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._flows: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.accepted = 0

    async def __aenter__(self) -> RstProxy:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._flows.append((client_writer, upstream_writer))
        await asyncio.gather(
            _pipe(client_reader, upstream_writer),
            _pipe(upstream_reader, client_writer),
            return_exceptions=True,
        )

    def cut(self) -> None:
        for client_writer, upstream_writer in self._flows:
            client_socket = client_writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client_writer.transport.abort()
            upstream_writer.transport.abort()
        self._flows.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
