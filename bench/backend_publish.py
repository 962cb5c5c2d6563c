"""POST /publish against the WebSocket path: the same 1000 recipients, the same simulated 20 ms per
post, through one ``make run``-like gateway. From the publish until the last recipient has it; the two
ways take turns within each round.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import boto3
from ws_broadcast_client import publish_from_backend

from bench.common import AWS_ENV, Figure
from bench.fanout_latency import LATENCY_MS, NO_LIMITS, SHIPPED_WORKERS, connect_all, redis_server_flush
from testing.aws import use_dummy_aws
from testing.gateway_process import GatewayProcess
from testing.redis_server import RedisServer

CLIENTS = 1000
ROUNDS = 7


async def _rounds(gateway: GatewayProcess) -> dict[str, list[float]]:
    clients = await connect_all(gateway.url, CLIENTS)
    sender, recipients = clients[0], clients[1:]
    session = boto3.session.Session(region_name="us-east-1")
    url = f"http://127.0.0.1:{gateway.port}/publish"

    async def websocket(message: dict) -> None:
        await sender.send(json.dumps(message))

    async def backend(message: dict) -> None:
        await asyncio.to_thread(publish_from_backend, url, message, session=session)

    samples: dict[str, list[float]] = {"backend": [], "websocket": []}
    try:
        for round_number in range(ROUNDS + 1):  # the first round warms both functions up
            for name, send in (("backend", backend), ("websocket", websocket)):
                tag = {"round": round_number, "way": name}
                # The backend publish reaches the sender's connection too (it has no sender of its own).
                listeners = recipients if name == "websocket" else clients
                arrivals = [asyncio.ensure_future(client.recv()) for client in listeners]
                started = time.perf_counter()
                await send({"type": 1, "data": tag})
                await asyncio.wait_for(asyncio.gather(*arrivals), 120)
                if not all(json.loads(a.result())["data"] == tag for a in arrivals):
                    raise AssertionError(f"{name}: a recipient received another message")
                if round_number:
                    samples[name].append(time.perf_counter() - started)
        return samples
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def run(tmp_dir: Path) -> list[Figure]:
    use_dummy_aws()
    redis_server = RedisServer(tmp_dir / "redis-backend")
    redis_server.start()
    try:
        redis_server_flush(redis_server)
        gateway = GatewayProcess(
            "--post-latency-ms",
            str(LATENCY_MS),
            project_dir=None,
            tmp_path=tmp_dir,
            env={
                **AWS_ENV,
                "REDIS_URL": redis_server.url,
                "LOG_LEVEL": "WARNING",
                "FANOUT_WORKERS": str(SHIPPED_WORKERS),
                **NO_LIMITS,
            },
        )
        try:
            samples = asyncio.run(_rounds(gateway))
        finally:
            gateway.stop(timeout=120)
    finally:
        redis_server.stop()
    print(f"backend: {samples}", flush=True)
    return [
        Figure(
            "backend publish",
            f"POST /publish to {CLIENTS}, {LATENCY_MS} ms/post, p50",
            "s",
            statistics.median(samples["backend"]),
            statistics.median(samples["websocket"]),
            f"WebSocket publish to {CLIENTS - 1}",
        )
    ]
