"""Fan-out latency: from a publish until the last recipient has the message, through the local gateway.

N real WebSocket clients connect to ``python -m localgw`` serving the app, with every Management API
post answered after a simulated round trip (``--post-latency-ms``). One client publishes; the clock
stops when the last of the others has received it. Ours is compared, in the same run, with one post
after another (the Go reference's way, boto3), with Chalice's ``app.websocket_api.send`` in a loop
(its tutorial's way), and with the ideal bound ceil(recipients / workers) x latency.

At N = 1000 ours runs over HTTPS too, as every post on AWS is: the app posts to a TLS-terminating
proxy in front of the gateway's Management API (bench/tls_terminator.py), so its transport encrypts
every post and verifies the proxy's certificate; the uncounted first publish opens its connections,
so the handshakes of a cold start are bench/first_publish.py's figure, not this one's.

A sweep over the worker count at N = 1000 is what the default of ``FANOUT_WORKERS`` rests on.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import time
from pathlib import Path

import redis
import websockets

from bench.common import AWS_ENV, REPO, Figure, at_most, https_files, percentile
from bench.tls_terminator import TlsTerminator
from testing.gateway_process import GatewayProcess
from testing.redis_server import RedisServer
from testing.tls import TlsFiles

LATENCY_MS = 20
STAGE = "api"
SHIPPED_WORKERS = 64  # FANOUT_WORKERS default, chosen from the sweep below (README: Performance)
BASELINE_APP = REPO / "bench" / "baseline_app"
# Populations and repeats: the baselines post one after another, N x 20 ms each time, and past
# about 1400 recipients they cannot finish inside API Gateway's 29 s integration timeout at all.
CASES = [(100, 9, 3), (1000, 9, 2), (5000, 5, 0)]  # (clients, repeats of ours, repeats of baselines)
CASES_REPEATS = {clients: repeats for clients, repeats, _ in CASES}
SWEEP_WORKERS = (8, 16, 32, 64, 128)
GOAL_CLIENTS = 1000  # the population the goals are set for
DELIVERY_TIMEOUT_SECONDS = 120
NO_LIMITS = {"MAX_POSTS_PER_SECOND": "0", "PUBLISH_RATE_PER_SECOND": "0"}


async def connect_all(url: str, count: int) -> list:
    clients = []
    for start in range(0, count, 250):
        batch = [
            websockets.connect(url, max_size=None, ping_interval=None, open_timeout=60)
            for _ in range(start, min(count, start + 250))
        ]
        clients += await asyncio.gather(*batch)
    return clients


class LostDeliveries(AssertionError):
    """A publish did not reach every recipient: the figure would be meaningless, so the run fails."""


async def _publish_times(gateway: GatewayProcess, clients_count: int, repeats: int) -> list[float]:
    """Seconds from each publish to its last delivery, over ``repeats`` publishes."""
    clients = await connect_all(gateway.url, clients_count)
    sender, recipients = clients[0], clients[1:]
    try:
        samples = []
        for repeat in range(repeats + 1):  # the first publish warms the container up and is not counted
            message = json.dumps({"type": 99, "data": {"repeat": repeat}})
            arrivals = [asyncio.ensure_future(client.recv()) for client in recipients]
            started = time.perf_counter()
            await sender.send(message)
            done, missing = await asyncio.wait(arrivals, timeout=DELIVERY_TIMEOUT_SECONDS)
            finished = time.perf_counter()
            if missing:
                for arrival in missing:
                    arrival.cancel()
                failures = [line for line in gateway.output().splitlines() if "delivery failed" in line]
                raise LostDeliveries(
                    f"publish {repeat} reached {len(done)} of {len(recipients)} recipients within "
                    f"{DELIVERY_TIMEOUT_SECONDS} s; the app logged {len(failures)} failed deliveries"
                    + "".join(f"\n  {line}" for line in failures[:5])
                )
            received = [arrival.result() for arrival in done]
            if not all(json.loads(text)["data"] == {"repeat": repeat} for text in received):
                raise LostDeliveries(f"publish {repeat}: a recipient received an earlier message")
            if repeat:
                samples.append(finished - started)
        return samples
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def measure(
    tmp_dir: Path,
    redis_server: RedisServer,
    *,
    project_dir: Path,
    clients: int,
    repeats: int,
    env: dict,
    tls: TlsFiles | None = None,
) -> list[float]:
    """Seconds from each publish to its last delivery; with ``tls``, the app posts over HTTPS to a
    TLS-terminating proxy in front of the gateway's Management API, trusted through AWS_CA_BUNDLE."""
    args, terminator = ["--post-latency-ms", str(LATENCY_MS)], None
    if tls is not None:
        terminator = TlsTerminator(tls)
        args += [
            "--stage",
            STAGE,
            "--management-api-endpoint",
            f"https://127.0.0.1:{terminator.port}/{STAGE}",
        ]
        env = {**env, "AWS_CA_BUNDLE": str(tls.ca_cert)}
    try:
        gateway = GatewayProcess(
            *args,
            project_dir=project_dir,
            tmp_path=tmp_dir,
            # Limits off for every way: this measures the fan-out, not the post budget.
            env={**AWS_ENV, "REDIS_URL": redis_server.url, "LOG_LEVEL": "WARNING", **NO_LIMITS, **env},
        )
        if terminator is not None:
            terminator.forward_to(gateway.port)
        try:
            redis_server_flush(redis_server)
            samples = asyncio.run(_publish_times(gateway, clients, repeats))
            label = env.get("BASELINE_STRATEGY") or f"ours, {env.get('FANOUT_WORKERS')} workers"
            scheme = "https" if tls else "http"
            print(
                f"fanout: N={clients} {label}, {scheme}: {', '.join(f'{s:.3f}' for s in samples)} s",
                flush=True,
            )
            return samples
        finally:
            gateway.stop(timeout=120)  # thousands of $disconnect invocations run first
    finally:
        if terminator is not None:
            terminator.stop()


def redis_server_flush(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as client:
        client.flushall()


def ideal_seconds(clients: int, workers: int) -> float:
    return math.ceil((clients - 1) / workers) * LATENCY_MS / 1000


def against_ideal(case: str, clients: int, samples: list[float]) -> list[Figure]:
    """p50 and p95 of our fan-out against the ideal bound (with their goals at GOAL_CLIENTS)."""
    return [
        Figure(
            "fan-out latency",
            f"{case} {name}",
            "s",
            percentile(samples, fraction),
            ideal_seconds(clients, SHIPPED_WORKERS),
            f"ideal ceil(N/{SHIPPED_WORKERS}) x latency",
            at_most(1.5) if clients == GOAL_CLIENTS else None,
        )
        for name, fraction in (("p50", 0.5), ("p95", 0.95))
    ]


def ours_at_goal(tmp_dir: Path, redis_server: RedisServer, *, tls=None) -> list[float]:
    """Our fan-out's samples at GOAL_CLIENTS with the shipped workers, over HTTP or (``tls``) HTTPS."""
    return measure(
        tmp_dir,
        redis_server,
        project_dir=REPO,
        clients=GOAL_CLIENTS,
        repeats=CASES_REPEATS[GOAL_CLIENTS],
        env={"FANOUT_WORKERS": str(SHIPPED_WORKERS)},
        tls=tls,
    )


def https_case(tmp_dir: Path, redis_server: RedisServer, *, http: list[float]) -> list[Figure]:
    """Ours at GOAL_CLIENTS with every post over HTTPS, against the ideal bound and against ``http``
    (the same case's samples over HTTP)."""
    https = ours_at_goal(tmp_dir, redis_server, tls=https_files(tmp_dir / "tls"))
    case = f"N={GOAL_CLIENTS}, {LATENCY_MS} ms/post"
    return [
        *against_ideal(f"{case}, https", GOAL_CLIENTS, https),
        Figure(
            "fan-out latency",
            f"{case} p50, https against http",
            "s",
            percentile(https, 0.5),
            percentile(http, 0.5),
            "ours over http, same run",
        ),
    ]


def run_https(tmp_dir: Path) -> list[Figure]:
    """Only the HTTPS case and its HTTP counterpart (``python -m bench fanout-https``)."""
    os.environ.update(AWS_ENV)
    redis_server = RedisServer(tmp_dir / "redis-fanout-https")
    redis_server.start()
    try:
        http = ours_at_goal(tmp_dir, redis_server)
        case = f"N={GOAL_CLIENTS}, {LATENCY_MS} ms/post"
        return [*against_ideal(case, GOAL_CLIENTS, http), *https_case(tmp_dir, redis_server, http=http)]
    finally:
        redis_server.stop()


def run(tmp_dir: Path) -> list[Figure]:
    os.environ.update(AWS_ENV)
    redis_server = RedisServer(tmp_dir / "redis-fanout")
    redis_server.start()
    figures = []
    try:
        for clients, repeats, baseline_repeats in CASES:
            ours = measure(
                tmp_dir,
                redis_server,
                project_dir=REPO,
                clients=clients,
                repeats=repeats,
                env={"FANOUT_WORKERS": str(SHIPPED_WORKERS)},
            )
            case = f"N={clients}, {LATENCY_MS} ms/post"
            figures += against_ideal(case, clients, ours)
            if clients == GOAL_CLIENTS:
                figures += https_case(tmp_dir, redis_server, http=ours)
            for strategy, label in (
                ("sequential", "one post after another (boto3)"),
                ("chalice_send", "Chalice websocket_api.send loop"),
            ):
                if not baseline_repeats:
                    continue
                baseline = measure(
                    tmp_dir,
                    redis_server,
                    project_dir=BASELINE_APP,
                    clients=clients,
                    repeats=baseline_repeats,
                    env={"BASELINE_STRATEGY": strategy},
                )
                goal = (
                    at_most(0.033, "30x faster")
                    if strategy == "sequential" and clients == GOAL_CLIENTS
                    else None
                )
                figures.append(
                    Figure(
                        "fan-out latency",
                        f"{case} p50",
                        "s",
                        percentile(ours, 0.5),
                        statistics.median(baseline),
                        label,
                        goal,
                    )
                )
        sweep_clients = 1000
        sweep = {}
        for workers in SWEEP_WORKERS:
            samples = measure(
                tmp_dir,
                redis_server,
                project_dir=REPO,
                clients=sweep_clients,
                repeats=5,
                env={"FANOUT_WORKERS": str(workers)},
            )
            sweep[workers] = statistics.median(samples)
            figures.append(
                Figure(
                    "workers sweep",
                    f"N={sweep_clients}, FANOUT_WORKERS={workers} p50",
                    "s",
                    sweep[workers],
                    ideal_seconds(sweep_clients, workers),
                    f"ideal ceil(N/{workers}) x latency",
                )
            )
    finally:
        redis_server.stop()
    return figures
