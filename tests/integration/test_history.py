"""History, recovery and presence through the real handlers: events shaped as API Gateway sends them, a
real redis-server, a real HTTP Management API. What a client sees: offsets and epochs on what it receives,
the missed messages replayed exactly as they were first delivered (or ``recovered: false``, never part of
them), a new epoch once Redis has lost its data, and who is in a channel.
"""

from __future__ import annotations

import pytest
import redis

from chalicelib import envelope
from testing.apigw import Connection, now_ms
from testing.identity_provider import secret_token
from tests.support.gateway_driver import GatewayDriver


def subscribe(
    gateway: GatewayDriver, connection: Connection, channel: str, since: dict | None = None
) -> dict:
    """Subscribe; the acknowledgement (what is replayed after it stays in the connection's inbox)."""
    before = len(gateway.management_api.received(connection.connection_id))
    gateway.send(
        connection, {"action": "subscribe", "channel": channel, **({"since": since} if since else {})}
    )
    return gateway.management_api.wait_for(connection.connection_id, before + 1)[before]


def test_offsets_grow_by_one_per_publish_and_a_reconnect_recovers_what_it_missed(gateway, management_api):
    # GIVEN a member of room-1 that has seen two messages, then lost its connection
    watcher, _ = gateway.connect(query_string="channels=room-1")
    member, _ = gateway.connect()
    ack = subscribe(gateway, member, "room-1")
    assert ack["offset"] == 0 and "recovered" not in ack, "a plain subscribe says where the stream is"
    publisher, _ = gateway.connect()
    for data in ("one", "two", "three", "four", "five"):
        gateway.send(publisher, {"type": 1, "data": data, "channel": "room-1"})
        if data == "two":
            seen = management_api.wait_for(member.connection_id, 3)[-1]
            gateway.disconnect(member)
    first_copies = management_api.wait_for(watcher.connection_id, 5)
    assert [m["offset"] for m in first_copies] == [1, 2, 3, 4, 5]
    assert len({m["epoch"] for m in first_copies}) == 1
    # WHEN it comes back and subscribes with the position it had
    again, _ = gateway.connect()
    since = {"offset": seen["offset"], "epoch": seen["epoch"]}
    gateway.send(again, {"action": "subscribe", "channel": "room-1", "since": since})
    ack, *replayed = management_api.wait_for(again.connection_id, 4)
    # THEN the ack says it is recovered, then come the three it missed, exactly as first delivered
    assert ack == {
        "action": "subscribed",
        "channel": "room-1",
        "recovered": True,
        "offset": 5,
        "epoch": seen["epoch"],
    }
    assert replayed == first_copies[2:]
    # AND it receives what follows as a member again
    gateway.send(publisher, {"type": 1, "data": "six", "channel": "room-1"})
    assert management_api.wait_for(again.connection_id, 5)[-1]["offset"] == 6


def test_an_offset_older_than_the_history_recovers_nothing(monkeypatch, gateway, management_api):
    monkeypatch.setenv("HISTORY_SIZE", "2")
    publisher, _ = gateway.connect()
    watcher, _ = gateway.connect(query_string="channels=room-1")
    for n in range(5):
        gateway.send(publisher, {"type": n, "channel": "room-1"})
    epoch = management_api.wait_for(watcher.connection_id, 5)[-1]["epoch"]
    late, _ = gateway.connect()
    ack = subscribe(gateway, late, "room-1", {"offset": 1, "epoch": epoch})
    assert (ack["recovered"], ack["offset"]) == (False, 5)
    # AND nothing is replayed: never a part of what was missed
    gateway.send(publisher, {"type": 9, "channel": "room-1"})
    assert [m.get("offset") for m in management_api.wait_for(late.connection_id, 2)] == [5, 6]


def test_after_redis_loses_its_data_the_epoch_changes_and_nothing_is_replayed(
    gateway, management_api, redis_server
):
    publisher, _ = gateway.connect()
    member, _ = gateway.connect(query_string="channels=room-1")
    for n in range(3):
        gateway.send(publisher, {"type": n, "channel": "room-1"})
    old = management_api.wait_for(member.connection_id, 3)[-1]
    redis.Redis.from_url(redis_server.url).flushall()
    gateway.send(publisher, {"type": 7, "channel": "room-1"})  # a new stream: offset 1, a new epoch
    back, _ = gateway.connect()
    ack = subscribe(gateway, back, "room-1", {"offset": old["offset"], "epoch": old["epoch"]})
    assert ack["recovered"] is False
    assert ack["epoch"] != old["epoch"] and ack["offset"] == 1


def test_resume_recovers_the_messages_to_everyone(gateway, management_api):
    publisher, _ = gateway.connect()
    listener, _ = gateway.connect()
    gateway.send(publisher, {"type": 1})
    first = management_api.wait_for(listener.connection_id, 1)[0]
    gateway.disconnect(listener)
    for n in (2, 3):
        gateway.send(publisher, {"type": n})
    back, _ = gateway.connect()
    gateway.send(back, {"action": "resume", "since": {"offset": first["offset"], "epoch": first["epoch"]}})
    resumed, *missed = management_api.wait_for(back.connection_id, 3)
    assert resumed == {"action": "resumed", "recovered": True, "offset": 3, "epoch": first["epoch"]}
    assert [m["type"] for m in missed] == [2, 3]
    assert [m["offset"] for m in missed] == [2, 3]


def test_a_recovery_right_after_the_handshake_gets_its_replay(gateway, management_api):
    # GIVEN a message published before the client reconnects
    publisher, _ = gateway.connect()
    watcher, _ = gateway.connect(query_string="channels=room-1")
    gateway.send(publisher, {"type": 1, "channel": "room-1"})
    gateway.send(publisher, {"type": 2, "channel": "room-1"})
    first = management_api.wait_for(watcher.connection_id, 2)[0]
    # WHEN it recovers while API Gateway still answers 410 for it (its handshake is finishing)
    client, _ = gateway.connect()
    management_api.handshake(client.connection_id, posts=2)
    gateway.send(
        client, {"action": "subscribe", "channel": "room-1", "since": {"offset": 1, "epoch": first["epoch"]}}
    )
    # THEN the ack and the replay arrive once the connection takes posts, and it is not pruned
    ack, missed = management_api.wait_for(client.connection_id, 2)
    assert ack["recovered"] is True and missed["type"] == 2
    gateway.send(publisher, {"type": 3, "channel": "room-1"})
    assert management_api.wait_for(client.connection_id, 3)[-1]["type"] == 3


def test_a_malformed_since_gets_one_invalid_since_error_and_replays_nothing(gateway, management_api):
    client, _ = gateway.connect()
    response = gateway.send(
        client, {"action": "subscribe", "channel": "c", "since": {"offset": -1, "epoch": "E"}}
    )
    assert response == {"statusCode": 400}
    (reply,) = management_api.wait_for(client.connection_id, 1)
    assert reply["error"]["code"] == envelope.INVALID_SINCE


def test_recovery_obeys_the_channels_permissions(jwt_stage, gateway, management_api):
    reader, _ = gateway.connect(
        headers={"Authorization": f"Bearer {secret_token(channels={'subscribe': ['room-*']})}"}
    )
    refused = gateway.send(
        reader, {"action": "subscribe", "channel": "lobby", "since": {"offset": 0, "epoch": "E"}}
    )
    assert refused == {"statusCode": 403}
    assert management_api.wait_for(reader.connection_id, 1)[0]["error"]["code"] == envelope.CHANNEL_FORBIDDEN
    presence = gateway.send(reader, {"action": "presence", "channel": "lobby"})
    assert presence == {"statusCode": 403}


def test_presence_counts_joins_leaves_and_dropped_connections(jwt_stage, gateway, management_api):
    everyone = {"subscribe": ["*"]}
    alice = [
        gateway.connect(headers={"Authorization": f"Bearer {secret_token(sub='alice', channels=everyone)}"})[
            0
        ]
        for _ in range(2)
    ]
    bob, _ = gateway.connect(
        headers={"Authorization": f"Bearer {secret_token(sub='bob', channels=everyone)}"}
    )
    for connection in (*alice, bob):
        subscribe(gateway, connection, "room-1")

    def presence() -> dict:
        count = len(management_api.received(bob.connection_id)) + 1
        gateway.send(bob, {"action": "presence", "channel": "room-1"})
        return management_api.wait_for(bob.connection_id, count)[-1]

    assert presence() == {
        "action": "presence",
        "channel": "room-1",
        "count": 3,
        "members": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
    }
    gateway.send(alice[0], {"action": "unsubscribe", "channel": "room-1"})
    gateway.disconnect(alice[1])
    assert presence()["members"] == [{"user": "bob", "connections": 1}]


@pytest.mark.parametrize("shards", ["4"])
def test_history_with_a_sharded_registry(monkeypatch, redis_server, management_api, shards):
    from tests.support.gateway_driver import app_on

    for app_module in app_on(monkeypatch, redis_server.url, management_api, REGISTRY_SHARDS=shards):
        gateway = GatewayDriver(app_module, management_api)
        publisher, _ = gateway.connect()
        watchers = [gateway.connect(query_string="channels=room-1")[0] for _ in range(4)]
        for n in range(3):
            gateway.send(publisher, {"type": n, "channel": "room-1"})
        copies = [management_api.wait_for(w.connection_id, 3) for w in watchers]
        assert all([m["offset"] for m in c] == [1, 2, 3] for c in copies)
        back, _ = gateway.connect(Connection(connected_at_ms=now_ms()))
        epoch = copies[0][0]["epoch"]
        ack = subscribe(gateway, back, "room-1", {"offset": 1, "epoch": epoch})
        assert ack["recovered"] is True
        assert management_api.wait_for(back.connection_id, 3)[1:] == copies[0][1:]


@pytest.mark.parametrize("shards", ["1", "4"])
def test_a_publish_whose_script_ran_twice_is_kept_once(monkeypatch, redis_server, management_api, shards):
    """A client retries a script whose answer it lost (a reset, a timeout), and Redis runs it again: the
    message script's append with one shard, the budget script's sharded. The second run keeps nothing
    more (tests/integration/test_redis_network_faults.py loses a real answer on the wire)."""
    from redis.commands.core import Script

    from tests.support.gateway_driver import app_on

    for app_module in app_on(monkeypatch, redis_server.url, management_api, REGISTRY_SHARDS=shards):
        gateway = GatewayDriver(app_module, management_api)
        publisher, _ = gateway.connect()
        watcher, _ = gateway.connect(query_string="channels=room-1")
        gateway.send(publisher, {"type": 1, "data": "first", "channel": "room-1"})
        (first,) = management_api.wait_for(watcher.connection_id, 1)
        # WHEN every script of the next publish runs twice with the same keys and arguments
        with monkeypatch.context() as patch:
            patch.setattr(Script, "__call__", _run_twice(Script.__call__))
            gateway.send(publisher, {"type": 2, "data": "second", "channel": "room-1"})
        # THEN it is delivered at the next offset, and a client that had seen "first" recovers it once
        second = management_api.wait_for(watcher.connection_id, 2)[1]
        assert second["offset"] == first["offset"] + 1
        late, _ = gateway.connect(Connection(connected_at_ms=now_ms()))
        ack = subscribe(gateway, late, "room-1", {"offset": first["offset"], "epoch": first["epoch"]})
        assert (ack["recovered"], ack["offset"]) == (True, second["offset"])
        assert management_api.wait_for(late.connection_id, 2)[1:] == [second]


def _run_twice(run):
    def run_twice(script, *args, **kwargs):
        run(script, *args, **kwargs)  # the run whose answer the client lost
        return run(script, *args, **kwargs)

    return run_twice
