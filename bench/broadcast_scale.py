"""Broadcast at scale: a publish to N synthetic connections, queued on SQS and delivered by W worker
processes, paced to the whole API's post budget B, against a Management API stand-in that answers each
post after 20 ms and throttles at B. Compared with the bound N / B, and with today's single invocation.

Everything on the app's side is its real code path: the sender's ``app.message`` (an API Gateway event)
reads the shard sizes and enqueues one job per shard with SendMessageBatch to moto's SQS (testing/sqs.py);
each worker process is a Lambda container: it imports the app with the stage's environment, long-polls
the queue (ReceiveMessage, 10 at a time), calls ``app.fanout_worker`` with the SQS event Lambda would
build and a context with ``WORKER_TIMEOUT_SECONDS``, and deletes what the function did not name in
``batchItemFailures`` (localgw's rule). The registry is filled in bulk in its own layout (no clients).

python -m bench scale                         N = 100 000, and the other figures
BENCH_SCALE_MILLION=1 python -m bench scale   also N = 1 000 000 (N / B = 500 s at B = 2000)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import redis

from bench.common import AWS_ENV, REPO, Figure, at_most, exactly
from bench.throttled_management_server import connection_id
from testing.apigw import Connection
from testing.lambda_context import LambdaContext
from testing.redis_server import RedisServer
from testing.sqs import SqsStandIn, create_queue_with_dlq, depth, queue_url

POST_LATENCY_MS = 20
# The post budget: the stand-in throttles at it and the app paces to it (MAX_POSTS_PER_SECOND); the
# highest this shared 2-core machine serves cleanly with the stand-in, the workers and Redis (README).
BUDGET = 2000
# The stand-in's burst: as much as the app's own bucket holds (one second of the budget), so a 429 means
# the workers together went past the budget, not that the two buckets differ in size.
BURST = BUDGET
WORKERS = 4  # worker processes ("Lambda containers")
SHARDS = 16
POPULATION = 100_000
MILLION = 1_000_000
GOALS = {POPULATION: at_most(1.15), MILLION: at_most(1.25)}
WORKER_TIMEOUT_SECONDS = 60
# At least the worker's timeout, as Lambda requires of an event source's queue.
VISIBILITY_TIMEOUT_SECONDS = 90
MAX_RECEIVE_COUNT = 5
QUEUE = "ws-broadcast-fanout"
PREFIX = "bench-scale"
MESSAGE = '{"type": 1, "data": "to everyone", "echo": true}'
# A run is over when every recipient has its post, or when nothing has been posted for this long.
QUIET_SECONDS = 30
MESSAGE_TIMEOUT_SECONDS = 28  # websocket_message's Lambda timeout (its publish deadline is 25 s)
INLINE_SAMPLE = 10_000  # FANOUT_INLINE_MAX's default: what one invocation delivers itself
INLINE_SECONDS = 3.0
FANOUT_WORKERS = 64


def fill_registry(client: redis.Redis, population: int, shards: int, connected_at: int) -> list[str]:
    """N connections in the registry's layout (``shard_of`` picks the hash, the value is connectedAt
    in seconds, the hash expires as connect's script makes it); the registry's keys."""
    from chalicelib.registry import ConnectionRegistry

    registry = ConnectionRegistry(client, prefix=PREFIX, max_age_seconds=7200, shards=shards)
    keys = registry.registry_keys()
    client.flushall()
    by_shard: list[dict[str, str]] = [{} for _ in keys]
    value = str(connected_at)
    for index in range(population):
        member = connection_id(index)
        by_shard[registry.shard_of(member)][member] = value
    pipeline = client.pipeline(transaction=False)
    for key, members in zip(keys, by_shard, strict=True):
        items = list(members.items())
        for start in range(0, len(items), 5000):
            pipeline.hset(key, mapping=dict(items[start : start + 5000]))
        pipeline.expire(key, 7200)
    pipeline.execute()
    return keys


class StandIn:
    """The throttled Management API stand-in, in a process of its own."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.throttled_management_server", "--latency-ms", str(POST_LATENCY_MS)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.endpoint = self.process.stdout.readline().strip()
        self._origin = self.endpoint.rsplit("/", 1)[0]

    def reset(self, population: int, budget: int, burst: int) -> None:
        body = json.dumps({"population": population, "budget": budget, "burst": burst}).encode()
        urllib.request.urlopen(urllib.request.Request(self._origin + "/_reset", data=body, method="POST"))

    def stats(self) -> dict:
        with urllib.request.urlopen(self._origin + "/_stats") as answer:
            return json.load(answer)

    def wait_until_delivered(self, expected: int, limit_seconds: float) -> dict:
        """Poll the counts until every recipient has its post, or nothing moved for QUIET_SECONDS."""
        started = last_change = time.monotonic()
        seen = -1
        while True:
            stats = self.stats()
            now = time.monotonic()
            if stats["distinct"] >= expected:
                return stats
            if stats["posts"] != seen:
                seen, last_change = stats["posts"], now
            if now - last_change > QUIET_SECONDS or now - started > limit_seconds:
                return stats
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def app_env(redis_url: str, endpoint: str, *, shards: int, budget: int, queue: str | None, sqs: str) -> dict:
    env = {
        **AWS_ENV,
        "AUTH_MODE": "none",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": PREFIX,
        "REGISTRY_SHARDS": str(shards),
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": endpoint,
        "AWS_ENDPOINT_URL_SQS": sqs,
        "MAX_POSTS_PER_SECOND": str(budget),
        "PUBLISH_RATE_PER_SECOND": "0",
        "FANOUT_WORKERS": str(FANOUT_WORKERS),
        "LOG_LEVEL": "INFO",
    }
    if queue:
        env["FANOUT_QUEUE_URL"] = queue
    return env


class Workers:
    """W Lambda containers of ``fanout_worker``, each a process running ``lambda_container``."""

    def __init__(self, count: int, env: dict, queue_arn: str, log: Path) -> None:
        self.lines: list[str] = []
        self._log = log.open("a")
        self._ready = threading.Semaphore(0)
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.broadcast_scale", queue_arn],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(count)
        ]
        for process in self.processes:
            threading.Thread(target=self._read, args=(process,), daemon=True).start()
        for _ in self.processes:
            if not self._ready.acquire(timeout=60):
                raise RuntimeError("a worker did not start:\n" + "".join(self.lines[-20:]))

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if line.strip() == "ready":
                self._ready.release()
            else:
                self.lines.append(line)
                self._log.write(line)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self._log.close()

    def summary(self) -> dict:
        """What the app logged about the jobs: counts summed over every ``delivered`` line."""
        totals = {"jobs": 0, "invocations": 0, "retried_jobs": 0, "whole_retries": 0}
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = record.get("message", "")
            if message == "delivered":
                totals["jobs"] += 1
                for name in ("delivered", "failed", "handed_on", "queued_again", "given_up", "stale", "gone"):
                    totals[name] = totals.get(name, 0) + int(record.get(name, 0))
            elif message == "invocation":
                totals["invocations"] += 1
                totals["retried_jobs"] += record["retried"]
            elif message.startswith("the job is retried whole"):
                totals["whole_retries"] += 1
        return totals


def lambda_container(queue_arn_text: str) -> None:
    """One worker container: poll, invoke ``app.fanout_worker`` as the event source mapping does, delete."""
    import boto3

    import app
    from localgw.sqs import deletable
    from testing.sqs import record_from_message, sqs_event

    app.broadcaster()  # the cold start happens before the publish, as in a warm pool of containers
    client = boto3.client("sqs")  # AWS_ENDPOINT_URL_SQS: the stand-in
    url = os.environ["FANOUT_QUEUE_URL"]
    # The mapping's batch size, as the app's decorator sets it (and the template's mapping).
    (source,) = [source for source in app.app.event_sources if source.name == "fanout_worker"]
    print("ready", flush=True)
    while True:
        messages = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=source.batch_size,
            WaitTimeSeconds=5,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            continue
        records = [record_from_message(message, queue_arn=queue_arn_text) for message in messages]
        context = LambdaContext("ws-broadcast-dev-fanout_worker", WORKER_TIMEOUT_SECONDS)
        response = app.fanout_worker(sqs_event(records), context)
        done, _ = deletable(records, response)
        if done:
            entries = [{"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(done)]
            client.delete_message_batch(QueueUrl=url, Entries=entries)
        print(
            json.dumps(
                {"message": "invocation", "records": len(records), "retried": len(records) - len(done)}
            ),
            flush=True,
        )


def queued_broadcast(
    server: RedisServer, stand_in: StandIn, sqs: SqsStandIn, population: int, workers: int
) -> list[Figure]:
    import app

    client = redis.Redis.from_url(server.url, decode_responses=True)
    connected_at = int(time.time())
    started = time.monotonic()
    fill_registry(client, population, SHARDS, connected_at)
    print(
        f"scale: {population:,} connections in {SHARDS} shards in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    sqs_client = sqs.client()
    # A queue of this broadcast's own: empty, and no PurgeQueue (SQS allows one a minute).
    name = f"{QUEUE}-{population}"
    queue = create_queue_with_dlq(
        sqs_client,
        name,
        visibility_timeout_seconds=VISIBILITY_TIMEOUT_SECONDS,
        max_receive_count=MAX_RECEIVE_COUNT,
    )
    env = app_env(
        server.url, stand_in.endpoint, shards=SHARDS, budget=BUDGET, queue=queue_url(name), sqs=sqs.endpoint
    )
    log = Path(server.workdir) / f"workers-{population}.log"
    pool = Workers(workers, env, queue.arn, log)
    try:
        stand_in.reset(population, BUDGET, BURST)
        os.environ.update(env)
        app.configured.cache_clear()
        sender = Connection(connection_id=connection_id(0), connected_at_ms=connected_at * 1000)
        event = sender.message_event(MESSAGE)
        published = time.time()
        answer = app.message(event, LambdaContext(timeout_seconds=MESSAGE_TIMEOUT_SECONDS))
        handler_ms = (time.time() - published) * 1000
        assert answer == {"statusCode": 200}, answer
        bound = population / BUDGET
        stats = stand_in.wait_until_delivered(
            population, limit_seconds=3 * bound + 2 * VISIBILITY_TIMEOUT_SECONDS
        )
    finally:
        pool.stop()
    left = depth(sqs_client, queue.url), depth(sqs_client, queue.dlq_url)
    jobs = pool.summary()
    elapsed = stats["last_at"] - published
    print(
        f"scale: queued N={population:,}: {stats['distinct']:,} delivered in {elapsed:.1f} s (bound {bound:.0f} s); "
        f"handler {handler_ms:.0f} ms; stand-in {stats}; jobs {jobs}; queue and DLQ left {left}; the workers' logs: {log}",
        flush=True,
    )
    case = f"N={population:,}, B={BUDGET}/s, {workers} workers, {SHARDS} shards"
    return [
        Figure(
            "broadcast at scale",
            f"queued {case}",
            "s",
            elapsed,
            bound,
            "bound N / B",
            GOALS.get(population),
        ),
        Figure(
            "broadcast at scale",
            f"queued {case}: recipients posted",
            "recipients",
            stats["distinct"],
            population,
            "N",
            exactly(1, "nothing lost"),
        ),
        Figure(
            "broadcast at scale",
            f"queued {case}: posted twice",
            "recipients",
            stats["twice"],
            jobs.get("whole_retries", 0),
            "jobs retried whole (logged)",
            at_most(1),
        ),
        Figure(
            "broadcast at scale",
            f"queued {case}: throttled (429) posts",
            "posts",
            stats["throttled"],
            stats["delivered"],
            "posts delivered",
        ),
    ]


def inline_broadcast(
    server: RedisServer, stand_in: StandIn, population: int, budget: int, *, burst: int
) -> tuple[dict, float]:
    """Today's fan-out: no queue, one shard, one ``app.message`` invocation; the stand-in's counts and
    the handler's seconds."""
    import app

    client = redis.Redis.from_url(server.url, decode_responses=True)
    connected_at = int(time.time())
    fill_registry(client, population, 1, connected_at)
    env = app_env(server.url, stand_in.endpoint, shards=1, budget=budget, queue=None, sqs="")
    stand_in.reset(population, budget, burst)
    os.environ.update(env)
    os.environ.pop("FANOUT_QUEUE_URL", None)
    app.configured.cache_clear()
    sender = Connection(connection_id=connection_id(0), connected_at_ms=connected_at * 1000)
    started = time.perf_counter()
    answer = app.message(
        sender.message_event(MESSAGE), LambdaContext(timeout_seconds=MESSAGE_TIMEOUT_SECONDS)
    )
    seconds = time.perf_counter() - started
    assert answer == {"statusCode": 200}, answer
    return stand_in.stats(), seconds


def registry_memory(server: RedisServer, population: int) -> list[Figure]:
    """MEMORY USAGE of the sharded registry's hashes, summed, against one bare set of the same ids."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    figures = []
    for shards in (1, SHARDS):
        keys = fill_registry(client, population, shards, int(time.time()))
        ours = sum(client.memory_usage(key, samples=0) for key in keys)
        pipeline = client.pipeline(transaction=False)
        ids = [connection_id(index) for index in range(population)]
        for start in range(0, population, 5000):
            pipeline.sadd("{bench}:reference", *ids[start : start + 5000])
        pipeline.execute()
        bare = client.memory_usage("{bench}:reference", samples=0)
        figures.append(
            Figure(
                "redis memory (MEMORY USAGE)",
                f"{population:,} connections, {shards} shard(s)",
                "B/conn",
                ours / population,
                bare / population,
                "bare set",
                at_most(1.5),
            )
        )
    return figures


def run(tmp_dir: Path) -> list[Figure]:
    os.environ.update(AWS_ENV)
    server = RedisServer(tmp_dir / "redis-scale")
    server.start()
    stand_in = StandIn()
    sqs = SqsStandIn().start()
    figures = []
    try:
        # What one invocation delivers at 64 in flight and 20 ms a post, without throttling.
        stats, seconds = inline_broadcast(server, stand_in, INLINE_SAMPLE, 0, burst=0)
        ideal = INLINE_SAMPLE * POST_LATENCY_MS / 1000 / FANOUT_WORKERS
        print(f"scale: inline N={INLINE_SAMPLE:,} unthrottled: {stats} in {seconds:.2f} s", flush=True)
        figures.append(
            Figure(
                "broadcast at scale",
                f"one invocation, N={INLINE_SAMPLE:,}, no throttle",
                "s",
                seconds,
                ideal,
                f"ideal N x {POST_LATENCY_MS} ms / {FANOUT_WORKERS}",
            )
        )
        figures.append(
            Figure(
                "broadcast at scale",
                f"one invocation: recipients in {INLINE_SECONDS:.0f} s",
                "recipients",
                stats["distinct"] / seconds * INLINE_SECONDS,
                INLINE_SAMPLE,
                "FANOUT_INLINE_MAX default",
            )
        )
        figures += queued_broadcast(server, stand_in, sqs, POPULATION, WORKERS)
        if os.environ.get("BENCH_SCALE_MILLION") == "1":
            figures += queued_broadcast(server, stand_in, sqs, MILLION, WORKERS)
        stats, seconds = inline_broadcast(server, stand_in, POPULATION, BUDGET, burst=BURST)
        print(f"scale: inline N={POPULATION:,} at B={BUDGET}: {stats} in {seconds:.1f} s", flush=True)
        case = f"today's single invocation, N={POPULATION:,}, B={BUDGET}/s"
        figures += [
            Figure(
                "broadcast at scale",
                f"{case}: recipients posted",
                "recipients",
                stats["distinct"],
                POPULATION,
                "N",
            ),
            Figure(
                "broadcast at scale",
                f"{case}: handler time",
                "s",
                seconds,
                POPULATION / BUDGET,
                "bound N / B",
            ),
            Figure(
                "broadcast at scale",
                f"{case}: throttled (429) posts",
                "posts",
                stats["throttled"],
                stats["delivered"],
                "posts delivered",
            ),
        ]
        figures += registry_memory(server, POPULATION)
    finally:
        sqs.stop()
        stand_in.stop()
        server.stop()
    return figures


if __name__ == "__main__":
    lambda_container(sys.argv[1])
