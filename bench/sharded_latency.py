"""A sharded publish's waits on Redis: with REGISTRY_SHARDS=4 and Redis 10 ms away (a proxy that holds
every answer that long), the time of a publish to 8 connections against one shard's, which is one round
trip. Two round trips (each two requests side by side) should make about 2x, where four sequential
round trips would make about 4x (the measured figures: bench/README.md).
"""

from __future__ import annotations

import statistics
import time

import redis

from bench.common import Figure, at_most
from chalicelib.registry import ConnectionRegistry, History, Limits
from testing.apigw import new_id
from testing.redis_server import RedisServer
from testing.tcp_proxy import TcpProxy

LINK_SECONDS = 0.010
CONNECTIONS = 8


def run(tmp_dir) -> list[Figure]:
    server = RedisServer(tmp_dir / "latency-redis")
    server.start()
    proxy = TcpProxy(("127.0.0.1", server.port))
    try:
        client = redis.Redis.from_url(proxy.url(), decode_responses=True)
        now_ms = int(time.time() * 1000)
        times = {}
        for shards in (4, 1):
            registry = ConnectionRegistry(
                client,
                prefix=f"latency{shards}",
                max_age_seconds=7200,
                shards=shards,
                limits=Limits(max_posts_per_second=5000),
                history=History(size=100),
            )
            ids = [new_id() for _ in range(CONNECTIONS)]
            for connection_id in ids:
                registry.add(connection_id, now_ms)
            registry.begin_publish(ids[0], now_ms, include_sender=True)  # loads the scripts
            proxy.delay_answers(LINK_SECONDS)
            samples = []
            for _ in range(21):
                started = time.perf_counter()
                registry.begin_publish(ids[0], now_ms, include_sender=True)
                samples.append((time.perf_counter() - started) * 1000)
            proxy.delay_answers(0)
            times[shards] = statistics.median(samples)
        return [
            Figure(
                "sharded publish",
                f"4 shards, Redis {LINK_SECONDS * 1000:.0f} ms away: the publish's wait",
                "ms",
                times[4],
                times[1],
                "one shard (one round trip)",
                at_most(2.2, "two round trips"),
            )
        ]
    finally:
        proxy.close()
        server.stop()
