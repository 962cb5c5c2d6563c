"""One shard's failover in cluster mode, as ElastiCache's cluster mode enabled does it: a primary dies,
its replica takes over its slots, and the clients learn the new owner from the cluster (redis-py's
RedisCluster refreshes its slot map on a connection error or a MOVED).

The registry is sharded over three primaries; the one that dies holds some of its shards and the slot of
the budgets and the streams, which every publish needs. The same promise as test_redis_failover.py's: during the outage each
client affected is told ``registry_unavailable`` once; once the replica is promoted, a publish reaches
every live client exactly once, new clients are admitted and nothing registered before is lost.
"""

from __future__ import annotations

import itertools
import time

import pytest
from redis.crc import key_slot

from chalicelib import envelope
from chalicelib.registry.keys import Keys, hash_tagged
from testing.apigw import Connection
from testing.redis_cluster import ClusterNode, LocalCluster
from testing.redis_server import wait_until_replicated
from tests.support.gateway_driver import GatewayDriver, app_on

# The promise: within this long after the promotion, publishing works again for everyone.
RECOVERY_SECONDS = 15
# A fixed prefix, so that where the shards' slots fall is known: the test checks it spreads them.
PREFIX = "failover"
SHARDS = 6


@pytest.fixture
def cluster(tmp_path) -> LocalCluster:
    with LocalCluster(tmp_path, primaries=3) as cluster:
        yield cluster


@pytest.fixture
def victim(cluster) -> ClusterNode:
    """The primary that will die: the one serving the budgets' and the streams' slot."""
    return cluster.owner_of(key_slot(hash_tagged(PREFIX, "posts").encode()))


@pytest.fixture
def gateway(monkeypatch, cluster, victim, management_api):
    """The app in cluster mode, its only seed the primary that will die (the client learns the rest)."""
    settings = {"REDIS_CLUSTER": "true", "REGISTRY_SHARDS": str(SHARDS), "REDIS_KEY_PREFIX": PREFIX}
    for app in app_on(monkeypatch, victim.url, management_api, **settings):
        yield GatewayDriver(app, management_api)


def owner_of_shard(cluster: LocalCluster, shard: int) -> ClusterNode:
    return cluster.owner_of(key_slot(Keys(PREFIX, SHARDS).registry(shard).encode()))


@pytest.fixture
def new_connection(cluster, victim):
    """Connections of ids never used before, in a shard of the primary that will die or (``elsewhere``)
    of another."""
    keys, numbers = Keys(PREFIX, SHARDS), itertools.count()

    def new(*, elsewhere: bool = False) -> Connection:
        for number in numbers:
            connection_id = f"failover{number:07d}="
            if (owner_of_shard(cluster, keys.shard_of(connection_id)) is victim) != elsewhere:
                return Connection(connection_id=connection_id)

    return new


def test_after_one_shards_failover_a_publish_reaches_everyone_exactly_once(
    gateway, management_api, cluster, victim, new_connection, json_log
):
    # GIVEN the registry's shards spread over every primary
    assert {owner_of_shard(cluster, shard) for shard in range(SHARDS)} == set(cluster.primaries)
    # AND clients in the shards of the primary that will die and of the others, some in a channel
    alice, response = gateway.connect(new_connection())
    assert response == {"statusCode": 200}
    bob, _ = gateway.connect(new_connection(elsewhere=True))
    dave, _ = gateway.connect(new_connection(), query_string="channels=room-1")
    frank, _ = gateway.connect(new_connection(elsewhere=True), query_string="channels=room-1")
    assert gateway.send(alice, {"type": 1, "data": "before"}) == {"statusCode": 200}
    # AND the replica has every write
    wait_until_replicated(victim.server)

    # WHEN the primary dies, and every connection to it is cut
    victim.kill()

    # THEN meanwhile a publish is refused with one clear error to its sender, whichever shard it is in,
    # and delivers nothing (a publish to some shards only would be a silent loss)
    assert gateway.send(alice, {"type": 1, "data": "lost?"}) == {"statusCode": 503}
    assert gateway.send(bob, {"type": 1, "data": "lost?"}) == {"statusCode": 503}
    for sender, received_before in ((alice, 0), (bob, 1)):
        *_, refusal = management_api.wait_for(sender.connection_id, received_before + 1)
        assert refusal["error"]["code"] == envelope.REGISTRY_UNAVAILABLE
    # AND a new client of the dead primary's shards is refused at its handshake with 503
    assert gateway.connect(new_connection())[1]["statusCode"] == 503

    # WHEN its replica takes over its slots, and every live node learns it
    promoted = time.monotonic()
    cluster.promote(cluster.replica_of(victim))

    # THEN, within the promise, a publish reaches every client registered before the failover
    assert gateway.send(alice, {"type": 2, "data": "after", "echo": True}) == {"statusCode": 200}
    # AND a channel's membership survived, in both shards
    assert gateway.send(bob, {"type": 3, "channel": "room-1", "data": "room"}) == {"statusCode": 200}
    # AND a new client of the promoted replica's shards is admitted and reached
    erin, response = gateway.connect(new_connection())
    assert response == {"statusCode": 200}
    assert gateway.send(erin, {"type": 4, "data": "new", "echo": True}) == {"statusCode": 200}
    assert time.monotonic() - promoted < RECOVERY_SECONDS

    # AND each got each message exactly once (every post was answered before its handler returned)
    assert gateway.received(alice) == [envelope.REGISTRY_UNAVAILABLE, "after", "new"]
    assert gateway.received(bob) == ["before", envelope.REGISTRY_UNAVAILABLE, "after", "new"]
    assert gateway.received(dave) == ["before", "after", "room", "new"]
    assert gateway.received(frank) == ["before", "after", "room", "new"]
    assert gateway.received(erin) == ["new"]
    # AND what the service logged is its own lines, with the refusals named
    failures = [line for line in json_log() if line["level"] == "ERROR"]
    assert {line["exception_name"] for line in failures} == {"RegistryUnavailable"}


def test_a_container_idle_through_the_failover_publishes_at_once_with_no_error(
    gateway, management_api, cluster, victim, new_connection, json_log
):
    # GIVEN clients in the dying primary's shards and another's, and the container's connections and
    # slot map warm from a publish
    alice, _ = gateway.connect(new_connection())
    bob, _ = gateway.connect(new_connection(elsewhere=True))
    assert gateway.send(alice, {"type": 1, "data": "before"}) == {"statusCode": 200}
    wait_until_replicated(victim.server)

    # WHEN the primary dies and its replica takes over while the container handles nothing (its pooled
    # connections to the dead primary cut, its slot map stale)
    victim.kill()
    cluster.promote(cluster.replica_of(victim))

    # THEN the first publish from either shard reaches everyone, with no error to anyone
    assert gateway.send(bob, {"type": 2, "data": "after", "echo": True}) == {"statusCode": 200}
    assert gateway.send(alice, {"type": 3, "data": "again", "echo": True}) == {"statusCode": 200}
    assert [message["data"] for message in management_api.received(alice.connection_id)] == ["after", "again"]
    assert [message["data"] for message in management_api.received(bob.connection_id)] == [
        "before",
        "after",
        "again",
    ]
    # AND the failover cost the service no error line
    assert [line for line in json_log() if line["level"] in {"WARNING", "ERROR"}] == []
