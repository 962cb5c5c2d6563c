"""Sleeps that end when their time is up, not up to a millisecond later: the simulated post latency.

asyncio's epoll wait rounds every timeout up to a whole millisecond (``selectors.EpollSelector``), so
``asyncio.sleep(0.020)`` answers a post 20 to 21 ms after it began. A benchmark's fan-out through the
gateway (bench/fanout_latency.py) is 16 such posts one after another on each connection, ours and the
baselines' alike, and the rounding alone added 2 to 3 % to every figure (bench/README.md, "The
gateway's simulated latency"). Here each sleep's deadline goes into one heap and a Linux timerfd, armed
for the earliest, wakes the loop within microseconds of it, as any readable socket does. Where there
is no timerfd (not Linux), the sleep is asyncio's.

Python 3.11's ``os`` has no timerfd (3.13's does), so it is libc's, through ctypes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import math
import os
import time

_CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux, and so the loop's
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000  # O_CLOEXEC's value on every Linux architecture but alpha, sparc and parisc
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """A one-shot CLOCK_MONOTONIC timerfd: readable once the monotonic clock reaches what it is armed for."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime  # AttributeError where libc has none (not Linux)
        self.fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline`` (a ``time.monotonic()`` value), at once if it has passed."""
        nanoseconds = math.ceil(deadline * 1e9)  # up: never before the deadline
        value = _Timespec(nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000)
        if self._settime(
            self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(_Itimerspec(_Timespec(0, 0), value)), None
        ):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        """Take the expiry, so that the fd is not readable until it fires again."""
        with contextlib.suppress(BlockingIOError):  # it was re-armed for later since it fired
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class DeadlineSleeper:
    """``sleep`` as ``asyncio.sleep`` sleeps, ending within microseconds after its deadline and never
    before it. Its timerfd is opened on the first sleep, in that sleep's loop; ``close`` once done."""

    def __init__(self) -> None:
        self._timer: TimerFd | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fallback = False
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []  # a heap, by deadline
        self._order = itertools.count()  # equal deadlines wake in the order they slept

    @property
    def precise(self) -> bool:
        """Whether sleeps end by the timerfd (known once one has slept), not by asyncio's own timer."""
        return self._timer is not None

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        if seconds <= 0 or not self._ready():
            await asyncio.sleep(seconds)
            return
        woken = self._loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), woken))
        if self._sleepers[0][2] is woken:  # the earliest now: the timer is armed for the heap's first
            self._timer.arm(deadline)
        await woken

    def _ready(self) -> bool:
        """Whether the timerfd is there (opened now, on the first sleep); False where it cannot be."""
        if self._timer is None and not self._fallback:
            try:
                self._timer = TimerFd()
            except (AttributeError, OSError):
                self._fallback = True
                return False
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._timer.fd, self._wake)
        return not self._fallback

    def _wake(self) -> None:
        """The timer fired: wake every sleeper whose deadline has come, and arm it for the next."""
        self._timer.clear()
        now = time.monotonic()
        while self._sleepers and self._sleepers[0][0] <= now:
            woken = heapq.heappop(self._sleepers)[2]
            if not woken.done():  # a sleeper cancelled meanwhile
                woken.set_result(None)
        if self._sleepers:
            self._timer.arm(self._sleepers[0][0])

    def close(self) -> None:
        """Close the timerfd; sleepers still waiting are cancelled."""
        for _, _, woken in self._sleepers:
            woken.cancel()
        self._sleepers.clear()
        if self._timer is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._timer.fd)
            self._timer.close()
            self._timer = None


__all__ = ["DeadlineSleeper", "TimerFd"]
