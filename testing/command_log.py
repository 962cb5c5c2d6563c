"""The commands a real redis-server receives, read from a MONITOR connection."""

from __future__ import annotations

import socket
import uuid

from testing.redis_server import RedisServer


class CommandLog:
    """The commands a redis-server receives from clients, read from a MONITOR connection.

    Commands a Lua script runs inside the server are left out: they cost no round trip.
    """

    def __init__(self, server: RedisServer) -> None:
        self._socket = socket.create_connection(("127.0.0.1", server.port))
        self._socket.sendall(b"MONITOR\r\n")
        self._reader = self._socket.makefile("r", encoding="utf-8", errors="replace")
        assert self._reader.readline().strip() == "+OK"
        self._port = server.port

    def commands_until_now(self) -> list[str]:
        """Every client command since the last call; ends on a marker the test sends, so no waiting by time."""
        marker = uuid.uuid4().hex
        with socket.create_connection(("127.0.0.1", self._port)) as probe:
            probe.sendall(f"ECHO {marker}\r\n".encode())
            probe.recv(100)
        seen = []
        for line in self._reader:
            if marker in line:
                return seen
            if " lua]" not in line:
                seen.append(line.split('"')[1].upper())
        raise AssertionError("MONITOR connection closed")

    def close(self) -> None:
        self._socket.close()
