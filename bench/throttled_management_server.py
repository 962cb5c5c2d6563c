"""A Management API stand-in for broadcasts at scale: every post answered after a fixed latency, the
account's budget enforced with 429s, each connection's deliveries counted. Runs in its own process.

Why not ``testing/management_api.py``: it runs a thread per connection and verifies every SigV4
signature in full; with a 20 ms answer added to it, it served one invocation's 64 posts in flight
below the 2000 posts a second the benchmark needs, where this one, a single asyncio loop (aiohttp),
serves more (both measured: bench/README.md, "Figures once written in the code").
It still refuses what API Gateway would refuse for our purpose: another method or path (404/405), a
request without a SigV4 ``Authorization`` for ``execute-api`` and its date (403, the form only), a body
over 128 KB (413), an id it does not know (410).

Connections are the benchmark's synthetic ids ``connection_id(i)``, i < population, so deliveries are
counted in one byte each. ``GET /_stats`` answers the counts; ``POST /_reset`` with
``{"population": N, "budget": B, "burst": C}`` zeroes them and sets the budget (0: no throttling).
Prints its endpoint on the first line of standard output, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

from localgw.deadline_sleep import DeadlineSleeper
from testing.apigw import API_GATEWAY_MAX_MESSAGE_BYTES

_ID_DIGITS = 15


def connection_id(index: int) -> str:
    """The benchmark's synthetic connection ids: 16 characters, as API Gateway's are."""
    return f"{index:0{_ID_DIGITS}d}="


def index_of(connection_id_text: str) -> int | None:
    if len(connection_id_text) != _ID_DIGITS + 1 or not connection_id_text.endswith("="):
        return None
    head = connection_id_text[:_ID_DIGITS]
    return int(head) if head.isdigit() else None


class TokenBucket:
    """API Gateway's account throttle: ``rate`` a second, at most ``capacity`` at once."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.at = capacity, time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Counts:
    def __init__(self, population: int, budget: float, burst: float) -> None:
        self.delivered = bytearray(population)  # posts answered 200, per connection (capped at 255)
        self.bucket = TokenBucket(budget, burst or budget)
        self.posts = self.ok = self.throttled = self.refused = 0
        self.first_at = self.last_at = 0.0  # wall clock of the first and the last 200

    def stats(self) -> dict:
        never = self.delivered.count(0)
        return {
            "posts": self.posts,
            "delivered": self.ok,
            "throttled": self.throttled,
            "refused": self.refused,
            "distinct": len(self.delivered) - never,
            "twice": len(self.delivered) - never - self.delivered.count(1),
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


def make_app(stage: str, latency_seconds: float) -> web.Application:
    state = {"counts": Counts(0, 0, 0)}
    round_trip = DeadlineSleeper()  # as the local gateway waits out its simulated latency
    prefix = f"/{stage}/@connections/"

    async def post(request: web.Request) -> web.Response:
        counts: Counts = state["counts"]
        counts.posts += 1
        authorization = request.headers.get("Authorization", "")
        signed = (
            authorization.startswith("AWS4-HMAC-SHA256 Credential=")
            and "/execute-api/aws4_request" in authorization
            and "X-Amz-Date" in request.headers
        )
        body = await request.read()
        await round_trip.sleep(latency_seconds)
        if not signed:
            counts.refused += 1
            return web.json_response({"message": "Forbidden"}, status=403)
        if len(body) > API_GATEWAY_MAX_MESSAGE_BYTES:
            counts.refused += 1
            return _error(413, "PayloadTooLargeException")
        if not counts.bucket.take():
            counts.throttled += 1
            return _error(429, "LimitExceededException")
        index = index_of(request.match_info["id"])
        if index is None or index >= len(counts.delivered):
            counts.refused += 1
            return _error(410, "GoneException")
        counts.delivered[index] = min(255, counts.delivered[index] + 1)
        counts.ok += 1
        counts.last_at = time.time()
        counts.first_at = counts.first_at or counts.last_at
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state["counts"].stats())

    async def reset(request: web.Request) -> web.Response:
        settings = await request.json()
        state["counts"] = Counts(settings["population"], settings.get("budget", 0), settings.get("burst", 0))
        return web.json_response({})

    app = web.Application(client_max_size=2 * API_GATEWAY_MAX_MESSAGE_BYTES)
    app.router.add_post(prefix + "{id}", post)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app


def _error(status: int, error_type: str) -> web.Response:
    return web.json_response({"message": error_type}, status=status, headers={"x-amzn-ErrorType": error_type})


async def serve(stage: str, latency_seconds: float) -> None:
    runner = web.AppRunner(make_app(stage, latency_seconds), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}/{stage}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", default="api")
    parser.add_argument("--latency-ms", type=float, default=20)
    args = parser.parse_args()
    asyncio.run(serve(args.stage, args.latency_ms / 1000))
