"""The gateway's simulated round trip: sleeps that never end before their deadline, each woken in
deadline order, by a timerfd on Linux and by asyncio's own sleep where there is none."""

from __future__ import annotations

import asyncio
import os
import select
import sys
import time

import pytest

from localgw import deadline_sleep
from localgw.deadline_sleep import DeadlineSleeper, TimerFd

# Lengths in milliseconds, in the order the sleeps start: equal ones, zero, and out of order.
LENGTHS_MS = [12, 3, 7, 7, 0, 1, 12, 5, 2, 9]


async def sleep_all(sleeper: DeadlineSleeper, lengths_ms: list[int]) -> list[tuple[int, float, float]]:
    """Each sleep's (index, deadline, when it ended), in the order they ended."""
    ended = []

    async def one(index: int, length_ms: int) -> None:
        deadline = time.monotonic() + length_ms / 1000
        await sleeper.sleep(length_ms / 1000)
        ended.append((index, deadline, time.monotonic()))

    await asyncio.gather(*(one(index, length) for index, length in enumerate(lengths_ms)))
    return ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_on_linux_every_sleep_ends_by_the_timerfd_never_before_its_deadline_and_in_deadline_order():
    sleeper = DeadlineSleeper()

    async def scenario():
        try:
            ended = await sleep_all(sleeper, LENGTHS_MS)
            return ended, sleeper.precise
        finally:
            sleeper.close()

    ended, precise = asyncio.run(scenario())
    # THEN the timerfd woke them (a silent fall back to asyncio.sleep would cost every benchmark)
    assert precise
    # AND none ended before its deadline
    assert all(end >= deadline for _, deadline, end in ended)
    # AND they ended in the order of their deadlines
    deadlines = [deadline for _, deadline, _ in ended]
    assert deadlines == sorted(deadlines)
    assert len(ended) == len(LENGTHS_MS)


def test_where_there_is_no_timerfd_the_sleeps_are_asyncios_and_still_never_end_early(monkeypatch):
    def no_timerfd():
        raise AttributeError("undefined symbol: timerfd_create")  # what ctypes says off Linux

    monkeypatch.setattr(deadline_sleep, "TimerFd", no_timerfd)
    sleeper = DeadlineSleeper()
    ended = asyncio.run(sleep_all(sleeper, LENGTHS_MS))
    assert not sleeper.precise
    assert all(end >= deadline for _, deadline, end in ended)
    assert len(ended) == len(LENGTHS_MS)


def test_a_cancelled_sleep_raises_in_its_task_and_the_others_still_wake():
    sleeper = DeadlineSleeper()

    async def scenario():
        try:
            early = asyncio.ensure_future(sleeper.sleep(0.002))  # the timer is armed for this one
            later = asyncio.ensure_future(sleeper.sleep(0.004))
            await asyncio.sleep(0)
            early.cancel()
            await later
            with pytest.raises(asyncio.CancelledError):
                await early
            return later.done()
        finally:
            sleeper.close()

    assert asyncio.run(scenario())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_close_cancels_what_still_sleeps_and_leaves_no_file_descriptor_open():
    sleeper = DeadlineSleeper()

    async def scenario():
        before = open_fds()
        sleeping = asyncio.ensure_future(sleeper.sleep(60))
        await asyncio.sleep(0)
        opened = open_fds() - before
        sleeper.close()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        return opened, open_fds() - before

    opened, left_open = asyncio.run(scenario())
    assert (opened, left_open) == (1, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_a_timerfd_armed_for_a_moment_past_is_readable_at_once_and_for_a_moment_ahead_not_before_it():
    timer = TimerFd()
    try:
        timer.arm(time.monotonic() - 1)
        assert select.select([timer.fd], [], [], 5)[0] == [timer.fd]
        timer.clear()
        assert select.select([timer.fd], [], [], 0)[0] == []  # cleared: not readable until it fires again
        deadline = time.monotonic() + 0.005
        timer.arm(deadline)
        assert select.select([timer.fd], [], [], 5)[0] == [timer.fd]
        assert time.monotonic() >= deadline
    finally:
        timer.close()
