"""Each event costs a constant number of Redis commands, counted by the real server (MONITOR)."""

import socket
import uuid

import pytest

from tests.support.redis_server import RedisServer


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


@pytest.fixture
def command_log(redis_server, gateway):
    log = CommandLog(redis_server)
    yield log
    log.close()


def test_connect_disconnect_and_publish_cost_one_command_each(gateway, management_api, command_log):
    # GIVEN a warm container (its Redis connection open and its script loaded)
    alice, _ = gateway.connect()
    command_log.commands_until_now()

    bob, _ = gateway.connect()
    assert command_log.commands_until_now() == ["EVALSHA"]

    gateway.send(alice, {"type": 1})
    management_api.wait_for(bob.connection_id, 1)
    assert command_log.commands_until_now() == ["HGETALL"]

    gateway.disconnect(bob)
    assert command_log.commands_until_now() == ["HDEL"]


def test_a_publish_with_gone_connections_costs_one_more_command_whatever_their_number(
    gateway, management_api, command_log
):
    alice, _ = gateway.connect()
    gone = [gateway.connect()[0] for _ in range(5)]
    for connection in gone:
        management_api.close(connection.connection_id)
    command_log.commands_until_now()

    gateway.send(alice, {"type": 1, "echo": True})
    management_api.wait_for(alice.connection_id, 1)
    assert command_log.commands_until_now() == ["HGETALL", "HDEL"]
