"""The sharded registry (REGISTRY_SHARDS) and the queued publish's boundary (FANOUT_INLINE_MAX), on
fakeredis and a real redis-server alike: where entries live, what a publish reads, the post budget's
lease that paces the queue's workers.
"""

from __future__ import annotations

import base64
import time

import pytest
from redis.crc import key_slot

from chalicelib.auth import Permissions
from chalicelib.registry import ConnectionRegistry, Limits, OverCapacity, Queued, Snapshot, registry_key

# Now: Redis expires a connection's own hash at connectedAt + max age by its own clock.
NOW = float(int(time.time()))
CONNECTED_AT_MS = int(NOW * 1000)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def connection_ids(count: int) -> list[str]:
    """API Gateway-shaped ids (16 characters of base64), the same in every run."""
    return [base64.b64encode(index.to_bytes(11, "big")).decode()[:15] + "=" for index in range(count)]


def sharded(redis_client, shards: int, clock=None, **options) -> ConnectionRegistry:
    return ConnectionRegistry(
        redis_client,
        prefix="shards",
        max_age_seconds=7200,
        shards=shards,
        clock=clock or Clock(),
        bucket_clock=clock or Clock(),
        **options,
    )


def test_connections_spread_over_shards_each_its_own_key_in_its_own_slot(redis_client):
    registry = sharded(redis_client, 8)
    ids = connection_ids(400)
    for connection_id in ids:
        registry.add(connection_id, CONNECTED_AT_MS)
    sizes = [redis_client.hlen(key) for key in registry.registry_keys()]
    assert sum(sizes) == 400
    assert min(sizes) >= 25, f"a hash spreads ids evenly enough: {sizes}"
    assert len({key_slot(key.encode()) for key in registry.registry_keys()}) == 8
    for connection_id in ids[:20]:
        assert redis_client.hexists(registry.registry_keys()[registry.shard_of(connection_id)], connection_id)


def test_one_shard_keeps_the_keys_of_an_unsharded_registry(redis_client):
    registry = sharded(redis_client, 1)
    registry.add("AAAAAAAAAAAAAAA=", CONNECTED_AT_MS, channels=["room-1"])
    assert registry.registry_keys() == [registry_key("shards")]
    assert redis_client.hexists("{shards}:ch:room-1", "AAAAAAAAAAAAAAA=")


def test_a_sharded_publish_reaches_every_shard_and_channels_span_shards(redis_client):
    registry = sharded(redis_client, 4)
    ids = connection_ids(40)
    for index, connection_id in enumerate(ids):
        registry.add(connection_id, CONNECTED_AT_MS, channels=["room-1"] if index % 2 else [])
    sender = ids[0]

    everyone = registry.begin_publish(sender, CONNECTED_AT_MS, include_sender=True)
    assert isinstance(everyone, Snapshot) and sorted(everyone.live) == sorted(ids)
    room = registry.begin_publish(sender, CONNECTED_AT_MS, include_sender=False, channel="room-1")
    assert sorted(room.live) == sorted(ids[1::2])
    assert len({registry.shard_of(member) for member in room.live}) == 4

    registry.remove(ids[1])
    registry.forget([ids[3], ids[5]], channel="room-1")
    room = registry.begin_backend_publish("room-1")
    assert sorted(room.live) == sorted(set(ids[1::2]) - {ids[1], ids[3], ids[5]})
    everyone = registry.begin_backend_publish()
    assert sorted(everyone.live) == sorted(set(ids) - {ids[1], ids[3], ids[5]})


def test_subscribe_and_healing_stay_in_the_senders_shard(redis_client):
    registry = sharded(redis_client, 4)
    alice, bob = connection_ids(2)
    registry.add(alice, CONNECTED_AT_MS, permissions=Permissions())
    registry.add(bob, CONNECTED_AT_MS)
    assert registry.subscribe(bob, CONNECTED_AT_MS, "room-1").lost is False
    assert registry.begin_backend_publish("room-1").live == [bob]
    # WHEN Redis loses everything THEN bob's next ping puts him back in his own shard, and says so
    redis_client.flushall()
    assert registry.touch(bob, CONNECTED_AT_MS) is True
    assert registry.begin_backend_publish().live == [bob]
    assert redis_client.hexists(registry.registry_keys()[registry.shard_of(bob)], bob)


@pytest.mark.parametrize("shards", [1, 4])
def test_an_audience_past_the_inline_max_is_counted_not_read(redis_client, shards):
    # GIVEN a queue for audiences larger than 5, and a budget
    clock = Clock()
    registry = sharded(redis_client, shards, clock, inline_max=5, limits=Limits(max_posts_per_second=100))
    ids = connection_ids(9)
    for connection_id in ids:
        registry.add(connection_id, CONNECTED_AT_MS)
    # WHEN 9 connections are the audience THEN the publish is queued, shard by shard
    queued = registry.begin_publish(ids[0], CONNECTED_AT_MS, include_sender=True)
    assert isinstance(queued, Queued) and queued.recipients == 9
    assert queued.sizes == {
        shard: size for shard, key in enumerate(registry.registry_keys()) if (size := redis_client.hlen(key))
    }
    # AND it was admitted against the queue's budget: the post budget is the workers' as they post, all
    # of it but the inline reserve
    assert registry.lease_posts(100) == (75, 0.0)
    # AND each shard's part is read by the job for that shard
    parts = [registry.read_shard(shard).live for shard in queued.sizes]
    assert sorted(member for part in parts for member in part) == sorted(ids)
    # WHEN the audience is 5 THEN it is read inline
    for connection_id in ids[5:]:
        registry.remove(connection_id)
    clock.now += 1  # the budget refills
    assert isinstance(registry.begin_backend_publish(), Snapshot)


def test_the_lease_paces_without_debt_and_waits_out_an_inline_publishs_debt(redis_client):
    clock = Clock()
    # GIVEN 10 posts a second, of which 2 are the inline publishes' reserve
    registry = sharded(redis_client, 1, clock, limits=Limits(max_posts_per_second=10))
    assert registry.lease_posts(4) == (4, 0.0)
    assert registry.lease_posts(10) == (0, pytest.approx(0.4)), "all of a lease or none, never a debt"
    assert registry.lease_posts(4) == (4, 0.0)
    clock.now += 0.5
    assert registry.lease_posts(50) == (0, pytest.approx(0.3)), "a second's worth at most, less the reserve"
    clock.now += 0.3
    assert registry.lease_posts(50) == (8, 0.0)
    # GIVEN an inline publish to 30 that leaves a debt (it goes once the budget holds the reserve)
    clock.now += 1
    for connection_id in connection_ids(30):
        registry.add(connection_id, CONNECTED_AT_MS)
    registry.begin_backend_publish()
    # THEN a worker waits until the debt is paid and the reserve is back: 20 + 2 + 1 posts at 10 a second
    assert registry.lease_posts(1) == (0, pytest.approx(2.3))
    with pytest.raises(OverCapacity):
        registry.begin_backend_publish()
