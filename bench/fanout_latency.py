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
import subprocess
import sys
import time
from pathlib import Path

import redis
import websockets

from bench.common import AWS_ENV, REPO, Figure, at_most, https_files, percentile
from bench.tls_terminator import TlsTerminator
from chalicelib.registry.keys import Keys
from chalicelib.settings import Settings
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
IDEAL_GOALS = (at_most(1.15), at_most(1.25))  # p50's and p95's against the ideal bound at GOAL_CLIENTS
HTTPS_IDEAL_GOALS = (at_most(1.5), at_most(1.5))  # the same case over HTTPS (its goal before issue 22's)
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


class MinimalPoster:
    """bench/minimal_poster.py in its own process, posting through the same gateway as our app."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.minimal_poster",
                str(gateway.port),
                gateway.stage,
                str(SHIPPED_WORKERS),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the minimal poster did not start")

    def start(self, ids: list[str], payload: str) -> None:
        """Start posting ``payload`` to ``ids``; ``finished`` says when the last answer came."""
        self._process.stdin.write(json.dumps({"ids": ids, "payload": payload}) + "\n")
        self._process.stdin.flush()

    def finished(self) -> None:
        if not self._process.stdout.readline():
            raise LostDeliveries(f"the minimal poster exited with {self._process.wait()}")

    def stop(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=10)


async def _delivered(recipients: list, expected_data, repeat: int, gateway: GatewayProcess) -> float:
    """Once the publish has started: when (``perf_counter``) the last recipient had ``expected_data``."""
    arrivals = [asyncio.ensure_future(client.recv()) for client in recipients]
    done, missing = await asyncio.wait(arrivals, timeout=DELIVERY_TIMEOUT_SECONDS)
    finished = time.perf_counter()
    if missing:
        for arrival in missing:
            arrival.cancel()
        # The app's JSON lines are hidden (they would load the machine being measured); the gateway's
        # own lines (a post's 4xx or 5xx, a timeout) and the app's tracebacks are not.
        last_lines = gateway.output().splitlines()[-10:]
        raise LostDeliveries(
            f"publish {repeat} reached {len(done)} of {len(recipients)} recipients within "
            f"{DELIVERY_TIMEOUT_SECONDS} s; the gateway's last lines:"
            + "".join(f"\n  {line}" for line in last_lines)
        )
    if not all(json.loads(arrival.result())["data"] == expected_data for arrival in done):
        raise LostDeliveries(f"publish {repeat}: a recipient received an earlier message")
    return finished


async def _publish_times(
    gateway: GatewayProcess, redis_server: RedisServer, clients_count: int, repeats: int, *, minimal: bool
) -> dict[str, list[float]]:
    """Seconds from each publish to its last delivery, over ``repeats`` publishes by the app served
    (``app``: ours, or a baseline's) and, with ``minimal``, as many by the minimal poster to the same
    recipients, taking turns."""
    sender = (await connect_all(gateway.url, 1))[0]  # alone in the registry: its id is the one there
    sender_id = registry_ids(redis_server)[0] if minimal else None
    recipients = await connect_all(gateway.url, clients_count - 1)
    poster = MinimalPoster(gateway) if minimal else None
    recipient_ids = [i for i in registry_ids(redis_server) if i != sender_id] if minimal else []
    samples: dict[str, list[float]] = {"app": [], **({"minimal": []} if minimal else {})}
    try:
        for repeat in range(repeats + 1):  # the first publish warms everything up and is not counted
            expected = {"repeat": repeat}
            arrivals = asyncio.ensure_future(_delivered(recipients, expected, repeat, gateway))
            started = time.perf_counter()
            await sender.send(json.dumps({"type": 99, "data": expected}))
            finished = await arrivals
            if repeat:
                samples["app"].append(finished - started)
            if poster is None:
                continue
            expected = {"repeat": repeat, "by": "the minimal poster"}
            arrivals = asyncio.ensure_future(_delivered(recipients, expected, repeat, gateway))
            await asyncio.sleep(0)  # every recipient is waiting before the first post leaves
            started = time.perf_counter()
            poster.start(recipient_ids, json.dumps({"type": 99, "data": expected}))
            finished = await arrivals
            await asyncio.get_running_loop().run_in_executor(None, poster.finished)
            if repeat:
                samples["minimal"].append(finished - started)
        return samples
    finally:
        if poster is not None:
            poster.stop()
        await asyncio.gather(*(client.close() for client in [sender, *recipients]), return_exceptions=True)


def registry_ids(redis_server: RedisServer) -> list[str]:
    """The connection ids the app registered (one shard, the default prefix)."""
    keys = Keys(Settings.redis_key_prefix, 1)
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        return client.hkeys(keys.registry(0))


def measure(
    tmp_dir: Path,
    redis_server: RedisServer,
    *,
    project_dir: Path,
    clients: int,
    repeats: int,
    env: dict,
    tls: TlsFiles | None = None,
    minimal: bool = False,
) -> dict[str, list[float]]:
    """Seconds from each publish to its last delivery (``app``; with ``minimal``, the minimal poster's
    beside them); with ``tls``, the app posts over HTTPS to a TLS-terminating proxy in front of the
    gateway's Management API, trusted through AWS_CA_BUNDLE."""
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
            samples = asyncio.run(_publish_times(gateway, redis_server, clients, repeats, minimal=minimal))
            label = env.get("BASELINE_STRATEGY") or f"ours, {env.get('FANOUT_WORKERS')} workers"
            scheme = "https" if tls else "http"
            for name, values in samples.items():
                print(
                    f"fanout: N={clients} {label if name == 'app' else 'the minimal poster'}, {scheme}: "
                    f"{', '.join(f'{s:.3f}' for s in values)} s",
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


def against_ideal(case: str, clients: int, samples: list[float], goals=(None, None)) -> list[Figure]:
    """p50 and p95 of our fan-out against the ideal bound, with ``goals`` (p50's, p95's)."""
    return [
        Figure(
            "fan-out latency",
            f"{case} {name}",
            "s",
            percentile(samples, fraction),
            ideal_seconds(clients, SHIPPED_WORKERS),
            f"ideal ceil(N/{SHIPPED_WORKERS}) x latency",
            goal,
        )
        for (name, fraction), goal in zip((("p50", 0.5), ("p95", 0.95)), goals, strict=True)
    ]


def against_minimal(case: str, samples: dict[str, list[float]]) -> list[Figure]:
    """p50 and p95 of our fan-out against the minimal poster's through the same gateway, taking turns:
    what our app adds to a fan-out, apart from what the gateway and the machine cost any poster."""
    return [
        Figure(
            "fan-out latency",
            f"{case} {name}, against the minimal poster",
            "s",
            percentile(samples["app"], fraction),
            percentile(samples["minimal"], fraction),
            "the minimal poster, same gateway, taking turns",
            at_most(1.05),
        )
        for name, fraction in (("p50", 0.5), ("p95", 0.95))
    ]


def at_goal(tmp_dir: Path, redis_server: RedisServer, *, tls=None, minimal=False) -> dict[str, list[float]]:
    """Our fan-out's samples at GOAL_CLIENTS with the shipped workers, over HTTP or (``tls``) HTTPS;
    with ``minimal``, the minimal poster's beside them."""
    return measure(
        tmp_dir,
        redis_server,
        project_dir=REPO,
        clients=GOAL_CLIENTS,
        repeats=CASES_REPEATS[GOAL_CLIENTS],
        env={"FANOUT_WORKERS": str(SHIPPED_WORKERS)},
        tls=tls,
        minimal=minimal,
    )


def goal_case(tmp_dir: Path, redis_server: RedisServer) -> tuple[list[Figure], list[float]]:
    """The case the goals are set for (GOAL_CLIENTS over HTTP): its figures, and our samples."""
    samples = at_goal(tmp_dir, redis_server, minimal=True)
    case = f"N={GOAL_CLIENTS}, {LATENCY_MS} ms/post"
    return [
        *against_ideal(case, GOAL_CLIENTS, samples["app"], IDEAL_GOALS),
        *against_minimal(case, samples),
    ], samples["app"]


def https_case(tmp_dir: Path, redis_server: RedisServer, *, http: list[float]) -> list[Figure]:
    """Ours at GOAL_CLIENTS with every post over HTTPS, against the ideal bound and against ``http``
    (the same case's samples over HTTP)."""
    https = at_goal(tmp_dir, redis_server, tls=https_files(tmp_dir / "tls"))["app"]
    case = f"N={GOAL_CLIENTS}, {LATENCY_MS} ms/post"
    return [
        *against_ideal(f"{case}, https", GOAL_CLIENTS, https, HTTPS_IDEAL_GOALS),
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
    """Only the case of the goals and its HTTPS counterpart (``python -m bench fanout-https``)."""
    os.environ.update(AWS_ENV)
    redis_server = RedisServer(tmp_dir / "redis-fanout-https")
    redis_server.start()
    try:
        figures, http = goal_case(tmp_dir, redis_server)
        return [*figures, *https_case(tmp_dir, redis_server, http=http)]
    finally:
        redis_server.stop()


def run(tmp_dir: Path) -> list[Figure]:
    os.environ.update(AWS_ENV)
    redis_server = RedisServer(tmp_dir / "redis-fanout")
    redis_server.start()
    figures = []
    try:
        for clients, repeats, baseline_repeats in CASES:
            case = f"N={clients}, {LATENCY_MS} ms/post"
            if clients == GOAL_CLIENTS:
                goal_figures, ours = goal_case(tmp_dir, redis_server)
                figures += [*goal_figures, *https_case(tmp_dir, redis_server, http=ours)]
            else:
                ours = measure(
                    tmp_dir,
                    redis_server,
                    project_dir=REPO,
                    clients=clients,
                    repeats=repeats,
                    env={"FANOUT_WORKERS": str(SHIPPED_WORKERS)},
                )["app"]
                figures += against_ideal(case, clients, ours)
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
                )["app"]
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
            )["app"]
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
