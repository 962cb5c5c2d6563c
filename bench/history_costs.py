"""What history, recovery and presence cost, each beside the same work without them.

- A publish to 10 recipients with history (HISTORY_SIZE=100) against the same publish with history off:
  round trips (MONITOR; goal: the same one), bytes on the wire, the registry call's time (client and
  server together) and Redis's own time in the script (commandstats), medians of rounds taking turns.
- The handler's CPU per publish to 10 recipients (app.message as wired, a real redis-server, the
  Management API stand-in in another process) with history against history off, the two taking turns
  in each round, medians. Goal: at most 1.1x.
- Memory per kept message: the history list's MEMORY USAGE per message against the message's own bytes
  (a 200-byte publication with its offset and epoch). Goal: at most 1.2x.
- A replay of 100 missed messages (one subscribe with ``since``, through the handler's fan-out, to the
  Management API stand-in) against 100 ordinary posts of the same messages to the same connection.
- Presence of a channel of 10 000 members against a publish's read of the same channel.
- Memory per membership of a connection with a token (its sub kept for presence) against one without.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import time
import uuid

import redis

from bench.common import Figure, at_most, median_call_ms
from bench.cpu_per_recipient import process_cpu_seconds, publishing_app
from bench.redis_costs import CountingProxy
from chalicelib.auth import Gatekeeper
from chalicelib.broadcast import Broadcaster
from chalicelib.fanout import Fanout
from chalicelib.gateway_event import GatewayEvent
from chalicelib.management_api import ManagementApis
from chalicelib.registry import ConnectionRegistry, History
from chalicelib.settings import Settings
from testing.apigw import Connection, new_id
from testing.aws import DUMMY_AWS_ENV, use_dummy_aws
from testing.command_log import CommandLog
from testing.management_api import ManagementApiServer
from testing.redis_server import RedisServer

RECIPIENTS = 10
ROUNDS, PUBLISHES_PER_ROUND = 7, 300
PAYLOAD_BYTES = 200
MISSED = 100
PRESENCE_MEMBERS = 10_000
SUB = "a1b2c3d4-5678-90ab-cdef-1234567890ab"  # a Cognito sub's shape


def _registry(client: redis.Redis, prefix: str, size: int) -> ConnectionRegistry:
    return ConnectionRegistry(client, prefix=prefix, max_age_seconds=7200, history=History(size=size))


def _payload(n: int) -> bytes:
    data = "x" * (PAYLOAD_BYTES - len('{"type":1,"data":"","received":1796286850}'))
    return json.dumps({"type": n, "data": data, "received": 1796286850}, separators=(",", ":")).encode()


def publish_costs(server: RedisServer) -> list[Figure]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    now_ms = int(time.time() * 1000)
    registries = {size: _registry(client, f"h{size}", size) for size in (100, 0)}
    senders = {}
    for size, registry in registries.items():
        ids = [new_id() for _ in range(RECIPIENTS + 1)]
        for connection_id in ids:
            registry.add(connection_id, now_ms)
        senders[size] = ids[0]

    def publish(size: int, registry: ConnectionRegistry | None = None) -> None:
        (registry or registries[size]).begin_publish(
            senders[size], now_ms, include_sender=False, payload=_payload(1)
        )

    for size in registries:
        publish(size)  # loads the scripts: a warm container's publish is what is counted
    log = CommandLog(server)
    commands = {}
    for size in registries:
        log.commands_until_now()
        publish(size)
        commands[size] = len(log.commands_until_now())
    log.close()
    proxy = CountingProxy(server.port)
    proxied = redis.Redis(port=proxy.port, decode_responses=True)
    wire = {}
    for size in registries:
        registry = _registry(proxied, f"h{size}", size)
        publish(size, registry)  # loads the script
        proxy.since_last()
        publish(size, registry)
        wire[size] = proxy.since_last()
    samples: dict[int, list[float]] = {100: [], 0: []}
    server_us: dict[int, list[float]] = {100: [], 0: []}
    for _ in range(ROUNDS):
        for size in registries:
            client.config_resetstat()
            started = time.perf_counter()
            for _ in range(PUBLISHES_PER_ROUND):
                publish(size)
            samples[size].append((time.perf_counter() - started) * 1e6 / PUBLISHES_PER_ROUND)
            server_us[size].append(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    case = f"a publish to {RECIPIENTS}, history 100 vs off"
    return [
        Figure(
            "history",
            f"{case}: round trips",
            "commands",
            commands[100],
            commands[0],
            "history off",
            at_most(1),
        ),
        Figure("history", f"{case}: bytes on the wire", "bytes", wire[100], wire[0], "history off"),
        Figure(
            "history",
            f"{case}: the registry's call (client and Redis)",
            "us",
            statistics.median(samples[100]),
            statistics.median(samples[0]),
            "history off",
        ),
        Figure(
            "history",
            f"{case}: Redis's time in the publish's script",
            "us",
            statistics.median(server_us[100]),
            statistics.median(server_us[0]),
            "history off",
        ),
    ]


def handler_cpu(tmp_dir) -> Figure:
    from chalicelib.log import logger
    from testing.lambda_context import LambdaContext

    limits_off = {"PUBLISH_RATE_PER_SECOND": "0", "MAX_POSTS_PER_SECOND": "0"}
    with (
        publishing_app(tmp_dir, RECIPIENTS, **limits_off) as (app, connections, _),
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),  # each publish's EMF document, both ways alike
    ):
        logger.setLevel("WARNING")
        event = connections[0].message_event(json.dumps({"type": 1, "data": "x" * PAYLOAD_BYTES}))
        samples: dict[str, list[float]] = {"100": [], "0": []}
        for round_number in range(ROUNDS + 1):  # the first round warms up
            for size in samples:
                os.environ["HISTORY_SIZE"] = size
                app.configured.cache_clear()  # a container of that stage: settings read once
                app.message(event, LambdaContext())  # its first publish loads the script
                started = process_cpu_seconds()
                for _ in range(PUBLISHES_PER_ROUND):
                    assert app.message(event, LambdaContext()) == {"statusCode": 200}
                if round_number:
                    samples[size].append((process_cpu_seconds() - started) * 1000 / PUBLISHES_PER_ROUND)
        logger.setLevel("INFO")
    return Figure(
        "history", f"the handler's CPU per publish to {RECIPIENTS}, history 100 vs off", "ms",
        statistics.median(samples["100"]), statistics.median(samples["0"]), "history off", at_most(1.1),
    )  # fmt: skip


def memory_per_message(server: RedisServer) -> list[Figure]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    registry = _registry(client, "mem", 100)
    now_ms = int(time.time() * 1000)
    registry.add(new_id(), now_ms)
    for n in range(100):
        registry.begin_backend_publish(payload=_payload(n))
    kept = client.lrange("{mem}:history", 0, -1)
    message_bytes = statistics.mean(len(message.encode()) for message in kept)
    per_message = client.memory_usage("{mem}:history", samples=0) / len(kept)
    # Each publish also leaves a mark for 60 s, so that a script run again is kept once (streams.lua).
    marks = list(client.scan_iter("{mem}:appended:*"))
    per_mark = statistics.mean(client.memory_usage(mark, samples=0) for mark in marks)
    return [
        Figure("history memory", f"per kept message ({PAYLOAD_BYTES} B payload)", "B", per_message,
               message_bytes, "the message's bytes", at_most(1.2)),
        Figure("history memory", "a publish's mark, for its 60 s", "B", per_mark, message_bytes,
               "the message's bytes"),
    ]  # fmt: skip


def replay_against_posts(server: RedisServer) -> Figure:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    settings = Settings.from_env(
        {**DUMMY_AWS_ENV, "REDIS_URL": server.url, "AUTH_MODE": "none", "MAX_POSTS_PER_SECOND": "0"}
    )
    use_dummy_aws()
    with ManagementApiServer(stage="api") as management:
        import boto3

        session = boto3.session.Session()
        apis = ManagementApis(
            Settings.from_env({**DUMMY_AWS_ENV, "REDIS_URL": server.url, "AUTH_MODE": "none",
                               "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": management.endpoint}),
            session,
        )  # fmt: skip
        registry = ConnectionRegistry(
            client,
            prefix=f"replay-{uuid.uuid4().hex[:6]}",
            max_age_seconds=7200,
            history=History(size=MISSED),
        )
        broadcaster = Broadcaster(registry, apis, Fanout(settings.fanout_workers), Gatekeeper(None),
                                  publish_deadline_seconds=25)  # fmt: skip
        reader = Connection(connected_at_ms=int(time.time() * 1000) - 60_000)
        broadcaster.connect(GatewayEvent.from_dict(reader.connect_event()))
        management.open(reader.connection_id)
        ack = json.loads(_send(broadcaster, reader, {"action": "subscribe", "channel": "c"}, management))
        for n in range(MISSED):
            registry.begin_backend_publish("c", _payload(n))
        api = apis.for_event(reader.api_id, reader.stage)
        messages = client.lrange(registry._keys.history("c"), 0, -1)[::-1]
        replays, posts = [], []
        for _ in range(5):
            started = time.perf_counter()
            since = {"offset": ack["offset"], "epoch": ack["epoch"]}
            _send(broadcaster, reader, {"action": "subscribe", "channel": "c", "since": since}, management)
            replays.append(time.perf_counter() - started)
            started = time.perf_counter()
            for message in messages:
                api.post(reader.connection_id, message.encode())
            posts.append(time.perf_counter() - started)
    return Figure(
        "history replay", f"{MISSED} missed messages to one connection", "ms",
        statistics.median(replays) * 1000, statistics.median(posts) * 1000, f"{MISSED} posts one after another",
    )  # fmt: skip


def _send(broadcaster: Broadcaster, connection: Connection, message: dict, management) -> str:
    before = len(management.received(connection.connection_id))
    broadcaster.publish(GatewayEvent.from_dict(connection.message_event(json.dumps(message))), 25)
    return json.dumps(management.received(connection.connection_id)[before])


def presence_and_membership(server: RedisServer) -> list[Figure]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    registry = ConnectionRegistry(client, prefix="presence", max_age_seconds=7200)
    now_ms = int(time.time() * 1000)
    members = [new_id() for _ in range(PRESENCE_MEMBERS)]
    for n, connection_id in enumerate(members):
        registry.add(connection_id, now_ms, principal=f"{SUB[:-5]}{n % 5000:05d}", channels=("room-1",))

    median_ms = functools.partial(median_call_ms, repeats=15)
    presence = median_ms(lambda: registry.presence(members[0], now_ms, "room-1"))
    read = median_ms(
        lambda: registry.begin_publish(members[0], now_ms, include_sender=True, channel="room-1")
    )

    def membership_bytes(principal: str | None) -> float:
        client.flushall()
        plain = ConnectionRegistry(client, prefix="m", max_age_seconds=7200)
        ids = [new_id() for _ in range(2000)]
        before = client.info("memory")["used_memory"]
        for connection_id in ids:
            plain.add(connection_id, now_ms, principal=principal, channels=("room-1",))
        return (client.info("memory")["used_memory"] - before) / len(ids)

    with_sub, without = membership_bytes(SUB), membership_bytes(None)
    return [
        Figure(
            "presence",
            f"a channel of {PRESENCE_MEMBERS:,} members",
            "ms",
            presence,
            read,
            "a publish's read of the channel",
        ),
        Figure(
            "presence memory",
            "a connection in one channel, with a token's sub",
            "B",
            with_sub,
            without,
            "the same without a token",
        ),
    ]


def run(tmp_dir) -> list[Figure]:
    server = RedisServer(tmp_dir / "history-redis")
    server.start()
    try:
        return [
            *publish_costs(server),
            handler_cpu(tmp_dir),
            *memory_per_message(server),
            replay_against_posts(server),
            *presence_and_membership(server),
        ]
    finally:
        server.stop()
