"""Channels' Redis costs: a channel publish's read among many other connections, and memory.

- Publish to a channel of 10 members while 100 000 other connections are registered, against a
  publish to every connection when there are 10 in all: the read must not grow with the connections
  outside the channel (goal at most 1.5x).
- Memory per membership (an entry in a channel's hash plus the channel in its member's own hash), and
  per connection with its list of 3 channels, against the Go reference's bare set of ids.
"""

from __future__ import annotations

import time

import redis

from bench.common import Figure, at_most, median_call_ms
from chalicelib.registry import ConnectionRegistry
from testing.apigw import new_id
from testing.redis_server import RedisServer

OTHERS = 100_000
MEMBERS = 10
MEMORY_POPULATION = 10_000
CHANNELS_EACH = 3


def _fill(
    client: redis.Redis, registry: ConnectionRegistry, ids: list[str], now_ms: int, channels=()
) -> None:
    for connection_id in ids:
        registry.add(connection_id, now_ms, channels=channels)


def channel_read(client: redis.Redis) -> Figure:
    now_ms = int(time.time() * 1000)
    client.flushall()
    small = ConnectionRegistry(client, prefix="small", max_age_seconds=7200)
    small_ids = [new_id() for _ in range(MEMBERS)]
    _fill(client, small, small_ids, now_ms)
    big = ConnectionRegistry(client, prefix="big", max_age_seconds=7200)
    _fill(client, big, [new_id() for _ in range(OTHERS)], now_ms)
    members = [new_id() for _ in range(MEMBERS)]
    _fill(client, big, members, now_ms, channels=("room-1",))
    return Figure(
        "channel publish read",
        f"{MEMBERS} members among {OTHERS:,} others",
        "ms",
        median_call_ms(
            lambda: big.begin_publish(members[0], now_ms, include_sender=False, channel="room-1"), repeats=31
        ),
        median_call_ms(lambda: small.begin_publish(small_ids[0], now_ms, include_sender=False), repeats=31),
        f"publish to {MEMBERS} in all",
        at_most(1.5),
    )


def memory(client: redis.Redis) -> list[Figure]:
    now_ms = int(time.time() * 1000)
    ids = [new_id() for _ in range(MEMORY_POPULATION)]

    def used() -> int:
        return client.info("memory")["used_memory"]

    client.flushall()
    empty = used()
    pipeline = client.pipeline(transaction=False)
    for connection_id in ids:
        pipeline.sadd("{bench}:reference", connection_id)
    pipeline.execute()
    bare = (used() - empty) / MEMORY_POPULATION

    client.flushall()
    registry = ConnectionRegistry(client, prefix="bench", max_age_seconds=7200)
    empty = used()
    _fill(client, registry, ids, now_ms)
    plain = used() - empty
    client.flushall()
    empty = used()
    channels = tuple(f"room-{index}" for index in range(CHANNELS_EACH))
    _fill(client, registry, ids, now_ms, channels=channels)
    with_channels = used() - empty
    per_membership = (with_channels - plain) / (MEMORY_POPULATION * CHANNELS_EACH)
    return [
        Figure("redis memory", "per channel membership", "B", per_membership, bare, "bare set entry"),
        Figure(
            "redis memory",
            f"per connection with {CHANNELS_EACH} channels",
            "B/conn",
            with_channels / MEMORY_POPULATION,
            bare,
            "bare set entry",
        ),
    ]


def run(tmp_dir) -> list[Figure]:
    server = RedisServer(tmp_dir / "channel-costs")
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        return [channel_read(client), *memory(client)]
    finally:
        server.stop()
