"""How closely the stand-ins keep to a simulated round trip (``localgw --post-latency-ms``,
bench/throttled_management_server.py): 64 sleeps of 20 ms in flight at once, as a fan-out's posts are,
each one's overshoot past its 20 ms, ``localgw.deadline_sleep``'s against ``asyncio.sleep``'s, taking
turns. Every post of every fan-out figure waits out one such sleep, ours and the baselines' alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import Figure, at_most
from localgw.deadline_sleep import DeadlineSleeper

LATENCY_SECONDS = 0.020
IN_FLIGHT = 64
ROUNDS = 40  # sleeps one after another in each flight
TURNS = 3


async def overshoots(sleep: Callable[[float], Awaitable[None]]) -> list[float]:
    """Seconds past LATENCY_SECONDS that each sleep ended, IN_FLIGHT at a time, their starts spread
    over one latency as a fan-out's posts spread."""
    measured = []

    async def flight(index: int) -> None:
        await asyncio.sleep(index * LATENCY_SECONDS / IN_FLIGHT)
        for _ in range(ROUNDS):
            started = time.monotonic()
            await sleep(LATENCY_SECONDS)
            measured.append(time.monotonic() - started - LATENCY_SECONDS)

    await asyncio.gather(*(flight(index) for index in range(IN_FLIGHT)))
    return measured


async def _taking_turns() -> dict[str, list[float]]:
    sleeper = DeadlineSleeper()
    samples = {"ours": [], "asyncio": []}
    try:
        for _ in range(TURNS):
            samples["ours"] += await overshoots(sleeper.sleep)
            samples["asyncio"] += await overshoots(asyncio.sleep)
        if not sleeper.precise:
            raise RuntimeError("no timerfd here: the deadline sleep fell back to asyncio.sleep")
    finally:
        sleeper.close()
    return samples


def run(tmp_dir: Path) -> list[Figure]:
    samples = asyncio.run(_taking_turns())
    mean_ms = {name: statistics.mean(values) * 1000 for name, values in samples.items()}
    return [
        Figure(
            "simulated latency",
            f"a {LATENCY_SECONDS * 1000:g} ms round trip, {IN_FLIGHT} in flight, mean overshoot",
            "ms",
            mean_ms["ours"],
            mean_ms["asyncio"],
            "asyncio.sleep, taking turns",
            at_most(0.25),
        )
    ]
