"""Redis costs of the registry beside the Go reference's bare set of ids (SADD / SREM / SMEMBERS).

Per event: commands (round trips) and bytes on the wire; memory per registered connection at
10 000 and 100 000 connections (expiry of missed disconnects included in ours, none in the set);
and the publish-side read of 100 000 connections (1 000 000 with BENCH_SCALE_MILLION=1) beside the floor
of any read a script returns in the publish's one round trip.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
import uuid

import redis

from bench.common import Figure, at_most, median_call_ms
from chalicelib.auth import Permissions
from chalicelib.registry import ConnectionRegistry, Limits, registry_key
from testing.apigw import new_id as new_connection_id
from testing.command_log import CommandLog
from testing.redis_server import RedisServer

KEY = registry_key("bench")
REFERENCE_KEY = "{bench}:reference"
EVENT_POPULATION = 1000
# The limits a stage runs with by default (settings.py): they are checked inside the publish's script.
DEFAULT_LIMITS = Limits(publish_rate_per_second=5, publish_burst=20, max_posts_per_second=5000)


class CountingProxy:
    """A TCP forwarder in front of redis-server that counts the bytes crossing it, both ways."""

    def __init__(self, target_port: int) -> None:
        self.bytes = 0
        self._lock = threading.Lock()
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while chunk := source.recv(65536):
            with self._lock:
                self.bytes += len(chunk)
            sink.sendall(chunk)

    def since_last(self) -> int:
        with self._lock:
            moved, self.bytes = self.bytes, 0
        return moved


def event_costs(server: RedisServer, shards: int = 1) -> list[Figure]:
    """Per event; with ``shards`` > 1 (REGISTRY_SHARDS) a publish's commands go out in three round
    trips (the sender's checks, the shards' sizes, the budget and the shards' reads)."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    now_ms = int(time.time() * 1000)
    registry = ConnectionRegistry(
        client, prefix="bench", max_age_seconds=7200, limits=DEFAULT_LIMITS, shards=shards
    )
    population = [new_connection_id() for _ in range(EVENT_POPULATION)]
    for connection_id in population:
        registry.add(connection_id, now_ms)
        client.sadd(REFERENCE_KEY, connection_id)
    newcomer = new_connection_id()

    suffix = f", {shards} shards" if shards > 1 else ""

    def events(registry: ConnectionRegistry, client: redis.Redis) -> dict:
        """Each event as ours and as the reference's bare set would do it."""
        return {
            "connect" + suffix: (
                lambda: registry.add(newcomer, now_ms),
                lambda: client.sadd(REFERENCE_KEY, newcomer),
            ),
            "disconnect" + suffix: (
                lambda: registry.remove(newcomer),
                lambda: client.srem(REFERENCE_KEY, newcomer),
            ),
            f"publish to {EVENT_POPULATION}{suffix}": (
                lambda: registry.begin_publish(population[0], now_ms, include_sender=False),
                lambda: client.smembers(REFERENCE_KEY),
            ),
        }

    for ours, _ in events(registry, client).values():
        ours()  # warm, as a container is after its first event: scripts loaded, connection open
    figures = []
    log = CommandLog(server)
    try:
        for name, (ours, reference) in events(registry, client).items():
            log.commands_until_now()
            ours()
            ours_commands = len(log.commands_until_now())
            reference()
            reference_commands = len(log.commands_until_now())
            figures.append(
                Figure("redis round trips", name, "commands", ours_commands, reference_commands, "bare set")
            )
    finally:
        log.close()
    client.close()
    # The same events again, through a proxy that counts every byte each way.
    proxy = CountingProxy(server.port)
    client = redis.Redis(port=proxy.port, decode_responses=True)
    client.ping()
    for name, (ours, reference) in events(
        ConnectionRegistry(
            client, prefix="bench", max_age_seconds=7200, limits=DEFAULT_LIMITS, shards=shards
        ),
        client,
    ).items():
        proxy.since_last()
        ours()
        ours_bytes = proxy.since_last()
        reference()
        figures.append(Figure("redis bytes", name, "bytes", ours_bytes, proxy.since_last(), "bare set"))
    client.close()
    return figures


def memory(server: RedisServer, population: int) -> list[Figure]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    ids = [new_connection_id() for _ in range(population)]
    now_ms = int(time.time() * 1000)
    open_registry = ConnectionRegistry(client, prefix="bench", max_age_seconds=7200)
    # As AUTH_MODE=jwt registers a connection: its token's channel permissions and its sub (for
    # presence) in a hash of its own, the sub's digest in its entry (for PUBLISH_RATE_PER_USER).
    jwt_registry = ConnectionRegistry(
        client, prefix="bench", max_age_seconds=7200, enforce_channel_permissions=True
    )
    permissions = Permissions(subscribe=("room-*",), publish=("room-1",))

    def used_memory() -> int:
        return client.info("memory")["used_memory"]

    def memory_per_connection(registry: ConnectionRegistry, principal, permissions=None) -> float:
        client.flushall()
        empty = used_memory()
        for connection_id in ids:
            registry.add(connection_id, now_ms, principal(), permissions)
        return (used_memory() - empty) / population

    ours_bytes = memory_per_connection(open_registry, lambda: None)
    # A Cognito user pool's sub is a UUID: 36 characters.
    with_token_bytes = memory_per_connection(jwt_registry, lambda: str(uuid.uuid4()), permissions)
    client.flushall()
    empty = used_memory()
    pipeline = client.pipeline(transaction=False)
    for connection_id in ids:
        pipeline.sadd(REFERENCE_KEY, connection_id)
    pipeline.execute()
    reference_bytes = (used_memory() - empty) / population
    figures = [
        Figure(
            "redis memory",
            f"{population:,} connections",
            "B/conn",
            ours_bytes,
            reference_bytes,
            "bare set",
            at_most(1.5),
        ),
        Figure(
            "redis memory",
            f"{population:,} connections with a token (AUTH_MODE=jwt: permissions, sub)",
            "B/conn",
            with_token_bytes,
            reference_bytes,
            "bare set",
        ),
    ]
    client.close()
    return figures


def read_costs(server: RedisServer, population: int) -> list[Figure]:
    """A publish's read of ``population`` connections, and the floor of any read a script returns in
    the publish's one round trip: the ids alone (``HKEYS``), and the ids with the ``connectedAt`` a
    read must classify by (``HGETALL``), each against ``SMEMBERS`` of a bare set of the same ids."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    now_ms = int(time.time() * 1000)
    registry = ConnectionRegistry(client, prefix="bench", max_age_seconds=7200)
    ids = [new_connection_id() for _ in range(population)]
    registry.add(ids[0], now_ms - 60_000)  # connected a minute ago: past the handshake window
    (key,) = registry.registry_keys()
    value = client.hget(key, ids[0])  # the registry's own entry, written by its script
    for start in range(0, population, 10_000):  # filled in bulk: a million scripted connects take minutes
        pipeline = client.pipeline(transaction=False)
        chunk = ids[start : start + 10_000]
        pipeline.hset(key, mapping=dict.fromkeys(chunk, value))
        pipeline.sadd(REFERENCE_KEY, *chunk)
        pipeline.execute()
    keys_only = client.register_script("return redis.call('HKEYS', KEYS[1])")
    entries = client.register_script("return redis.call('HGETALL', KEYS[1])")

    case = f"{population:,} connections"
    median_ms = functools.partial(median_call_ms, repeats=5)
    smembers = median_ms(lambda: client.smembers(REFERENCE_KEY))
    figures = [
        Figure("registry read", case, "ms", median_ms(
            lambda: registry.begin_publish(ids[0], now_ms, include_sender=False).live), smembers, "SMEMBERS"),
        Figure("registry read", f"{case}: a script returning the ids alone (the floor)", "ms",
               median_ms(lambda: keys_only(keys=[key])), smembers, "SMEMBERS", measured_name="EVAL of HKEYS"),
        Figure("registry read", f"{case}: a script returning ids and connectedAt", "ms",
               median_ms(lambda: entries(keys=[key])), smembers, "SMEMBERS", measured_name="EVAL of HGETALL"),
    ]  # fmt: skip
    client.flushall()
    client.close()
    return figures


def run(tmp_dir) -> list[Figure]:
    server = RedisServer(tmp_dir / "redis-costs")
    server.start()
    try:
        return [
            *event_costs(server),
            *event_costs(server, shards=16),
            *memory(server, 10_000),
            *memory(server, 100_000),
            *read_costs(server, 100_000),
            *(read_costs(server, 1_000_000) if os.environ.get("BENCH_SCALE_MILLION") == "1" else []),
        ]
    finally:
        server.stop()
