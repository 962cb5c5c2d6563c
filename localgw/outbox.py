"""A connection's outbound buffer: what the gateway has accepted for a client that has not read it yet.

API Gateway answers a Management API post without waiting for the client to drain its socket, so one
client that stops reading slows nobody else. The local gateway does the same: a post is queued in the
connection's outbox and answered at once, and one writer per connection drains the outbox to the socket
in order. The outbox holds at most ``limit`` bytes; a frame that would go past it is refused, and the
gateway then closes that connection (1008), as a server must rather than buffer without bound.

Past the outbox, the socket's transport holds at most aiohttp's high-water mark plus the one frame the
writer is sending (the writer waits for it to drain before it takes the next one).
"""

from __future__ import annotations

import asyncio
from collections import deque

# Eight messages of API Gateway's largest size (128 KB) waiting for one client.
DEFAULT_LIMIT_BYTES = 1024 * 1024


def size_of(frame: str | bytes) -> int:
    return len(frame.encode() if isinstance(frame, str) else frame)


class Outbox:
    """A FIFO of frames bounded in bytes; ``queued_bytes`` never exceeds ``limit``."""

    def __init__(self, limit: int = DEFAULT_LIMIT_BYTES) -> None:
        self.limit = limit
        self.queued_bytes = 0
        self._frames: deque[tuple[str | bytes, int]] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: str | bytes) -> bool:
        """Queue a frame; False (and nothing queued) when it would take the outbox past its limit."""
        size = size_of(frame)
        if self.queued_bytes + size > self.limit:
            return False
        self._frames.append((frame, size))
        self.queued_bytes += size
        self._ready.set()
        return True

    async def next(self) -> str | bytes:
        """The oldest frame, once there is one; it stays queued (and counted) until ``sent``."""
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        return self._frames[0][0]

    def sent(self) -> None:
        _, size = self._frames.popleft()
        self.queued_bytes -= size


__all__ = ["DEFAULT_LIMIT_BYTES", "Outbox", "size_of"]
