"""Each event costs a constant number of Redis commands, counted by the real server (MONITOR)."""

import pytest

from testing.apigw import Connection, now_ms
from testing.command_log import CommandLog


@pytest.fixture
def command_log(redis_server, gateway):
    log = CommandLog(redis_server)
    yield log
    log.close()


def warm(gateway) -> None:
    """A warm container: its Redis connection open and every script loaded (the first use of a
    script in a fresh Redis costs a SCRIPT LOAD once)."""
    warmer, _ = gateway.connect()
    for message in ({"type": 0}, {"action": "ping"}, {"action": "subscribe", "channel": "warm"}):
        gateway.send(warmer, message)
    gateway.disconnect(warmer)


def test_connect_disconnect_and_publish_cost_one_command_each(gateway, management_api, command_log):
    warm(gateway)
    alice, _ = gateway.connect()
    command_log.commands_until_now()

    bob, _ = gateway.connect()
    assert command_log.commands_until_now() == ["EVALSHA"]

    gateway.send(alice, {"type": 1})
    management_api.wait_for(bob.connection_id, 1)
    assert command_log.commands_until_now() == ["EVALSHA"], (
        "re-register, both limits and the read: one script"
    )

    gateway.send(alice, {"action": "ping"})
    management_api.wait_for(alice.connection_id, 1)
    assert command_log.commands_until_now() == ["EVALSHA"]

    gateway.disconnect(bob)
    assert command_log.commands_until_now() == ["EVALSHA"]


def test_channels_cost_one_command_per_event(gateway, management_api, command_log):
    warm(gateway)
    alice, _ = gateway.connect()
    bob, _ = gateway.connect(query_string="channels=room-1,room-2")
    command_log.commands_until_now()

    gateway.send(alice, {"action": "subscribe", "channel": "room-1"})
    management_api.wait_for(alice.connection_id, 1)
    assert command_log.commands_until_now() == ["EVALSHA"]

    gateway.send(alice, {"type": 1, "channel": "room-1"})
    management_api.wait_for(bob.connection_id, 1)
    assert command_log.commands_until_now() == ["EVALSHA"], "the channel's members only, in the same script"

    gateway.disconnect(bob)
    assert command_log.commands_until_now() == ["EVALSHA"], "out of every channel in the same round trip"


def test_a_publish_with_gone_connections_costs_one_more_command_whatever_their_number(
    gateway, management_api, command_log
):
    warm(gateway)
    alice, _ = gateway.connect()
    gone = [gateway.connect(Connection(connected_at_ms=now_ms() - 60_000))[0] for _ in range(5)]
    for connection in gone:
        management_api.close(connection.connection_id)
    command_log.commands_until_now()

    gateway.send(alice, {"type": 1, "echo": True})
    management_api.wait_for(alice.connection_id, 1)
    assert command_log.commands_until_now() == ["EVALSHA", "HDEL"]


@pytest.fixture
def sharded_gateway(monkeypatch, redis_server, management_api):
    """The app with REGISTRY_SHARDS=4, as a cluster-mode stage would run it."""
    from tests.support.gateway_driver import GatewayDriver, app_on

    for app_module in app_on(monkeypatch, redis_server.url, management_api, REGISTRY_SHARDS="4"):
        yield GatewayDriver(app_module, management_api)


def test_sharded_events_cost_what_they_cost_unsharded_and_a_publish_reads_one_key_per_shard(
    redis_server, sharded_gateway, management_api
):
    gateway = sharded_gateway
    warm(gateway)
    alice, _ = gateway.connect()
    log = CommandLog(redis_server)
    try:
        bob, _ = gateway.connect(query_string="channels=room-1")
        assert log.commands_until_now() == ["EVALSHA"], "a connection, its channels, its rate: one shard"
        gateway.send(alice, {"action": "subscribe", "channel": "room-1"})
        gateway.send(alice, {"action": "ping"})
        management_api.wait_for(alice.connection_id, 2)
        assert log.commands_until_now() == [
            "EVALSHA",  # the subscribe, in alice's shard
            "EVALSHA",  # the channel's stream position, in the unsharded slot (history is on)
            "EVALSHA",  # the ping
        ]

        gateway.send(alice, {"type": 1, "channel": "room-1"})
        management_api.wait_for(bob.connection_id, 1)
        members_shards = len(
            {gateway.app.broadcaster()._registry.shard_of(c.connection_id) for c in (alice, bob)}
        )
        commands = log.commands_until_now()
        # Two round trips, each two requests side by side (so their commands interleave): first the
        # sender (healed, its rate, its channel permission: one script in its own shard) and the
        # audience's size (one HLEN per shard, one pipeline); then the admission (the post budget and the
        # stream's offset: one script in the unsharded slot) and the read (the shards with members, one
        # pipeline). The read depends on the sizes, so every HLEN comes before every HGETALL.
        assert sorted(commands[:5]) == ["EVALSHA", *["HLEN"] * 4]
        assert sorted(commands[5:]) == ["EVALSHA", *["HGETALL"] * members_shards]

        gateway.disconnect(bob)
        assert log.commands_until_now() == ["EVALSHA"], "out of every channel in the same round trip"
    finally:
        log.close()
