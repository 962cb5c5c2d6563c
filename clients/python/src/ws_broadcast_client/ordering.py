"""Exactly once, in order, per stream: the client's reorder and dedupe logic, sans I/O.

Each stream (a channel, or ``None`` for the messages to everyone) has a position: the offset of the
last message yielded, in an epoch. A message at ``position + 1`` is yielded at once, and so is every
held message that follows it; one at or below the position, or already held, is a duplicate and is
dropped; one further on is held, because queued broadcasts can arrive out of order. A stream that has
held a message for ``hold`` seconds without its predecessor arriving is *due*: the caller recovers it
from the service's history (a subscribe or resume with ``since`` = the position), and the replay fills
the hole. When the service cannot recover (``recovered: false``), what is held is yielded in order and
every hole becomes a ``Gap``, never a silent loss.

Time is passed in (``now``, any monotonic clock in seconds), and the caller sends what ``due`` and
``resume_points`` return: this module never reads a clock nor touches a socket, so every interleaving
can be tested (tests/test_ordering.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ws_broadcast_client.wire import Gap, Message

Output = Message | Gap


@dataclass(frozen=True)
class Recover:
    """Ask the service for stream ``channel``'s messages after ``offset`` in ``epoch``."""

    channel: str | None
    offset: int
    epoch: str


@dataclass
class _Stream:
    channel: str | None
    epoch: str | None = None
    position: int | None = None
    held: dict[int, Message] = field(default_factory=dict)
    held_since: float | None = None  # when the wait for the first missing offset began
    recovering: bool = False

    def release(self, now: float) -> list[Output]:
        """The held messages that now follow the position, in order."""
        released: list[Output] = []
        while self.position is not None and (message := self.held.pop(self.position + 1, None)):
            released.append(message)
            self.position += 1
        if not self.held:
            self.held_since = None
        elif released:
            self.held_since = now  # a new first hole: its wait starts now
        return released

    def give_up(self) -> list[Output]:
        """Everything held, in order, with a ``Gap`` for each hole before it."""
        out: list[Output] = []
        for offset in sorted(self.held):
            if self.position is not None and offset > self.position + 1:
                out.append(Gap(self.channel, self.position + 1, offset - 1))
            out.append(self.held[offset])
            self.position = offset
        self.held.clear()
        self.held_since = None
        return out

    def move_to(self, offset: int, epoch: str) -> list[Output]:
        """The service cannot recover: go on from ``offset``, reporting what may be lost."""
        out = self.give_up()
        if self.position is not None and (epoch != self.epoch or offset > self.position):
            out.append(Gap(self.channel, self.position + 1, offset))
        if self.position is None or epoch != self.epoch or offset > self.position:
            self.position = offset
        self.epoch = epoch
        return out


class Reorderer:
    """Per-stream order and dedupe; ``hold``: how long to wait for a missing message before
    recovering it."""

    def __init__(self, hold: float = 1.0) -> None:
        self.hold = hold
        self._streams: dict[str | None, _Stream] = {}

    def _stream(self, channel: str | None) -> _Stream:
        return self._streams.setdefault(channel, _Stream(channel))

    def delivered(self, message: Message, now: float) -> list[Output]:
        """A message arrived: what to yield now (maybe nothing, maybe several)."""
        if message.offset is None or message.epoch is None:
            return [message]  # no history: nothing to order by
        stream = self._stream(message.channel)
        out: list[Output] = []
        if stream.position is None:
            # No acknowledgement gave a position (the messages to everyone have none): start here.
            stream.position, stream.epoch = message.offset - 1, message.epoch
        elif message.epoch != stream.epoch:
            out = stream.move_to(message.offset - 1, message.epoch)
        if message.offset <= stream.position or message.offset in stream.held:
            return out
        stream.held[message.offset] = message
        if stream.held_since is None:
            stream.held_since = now
        return out + stream.release(now)

    def acknowledged(
        self, channel: str | None, offset: int | None, epoch: str | None, recovered: bool | None, now: float
    ) -> list[Output]:
        """A ``subscribed``/``resumed`` ack with the stream's latest ``offset`` and ``epoch``."""
        if offset is None or epoch is None:
            return []  # the service keeps no history
        stream = self._stream(channel)
        stream.recovering = False
        if recovered is True:
            # The replay follows; restart the wait, so that it has time to arrive.
            stream.held_since = now if stream.held else None
            return []
        if recovered is False:
            return stream.move_to(offset, epoch)
        if stream.position is None:
            # A first subscribe: what was published before it is not ours.
            stream.position, stream.epoch = offset, epoch
            for early in [o for o in stream.held if o <= offset]:
                del stream.held[early]
            return stream.release(now)
        return []

    def due(self, now: float) -> list[Recover]:
        """Streams that waited ``hold`` seconds for a missing message: recover each (once)."""
        due = []
        for stream in self._streams.values():
            # the same sum as deadline(): a caller woken at the deadline finds the stream due
            if stream.recovering or stream.held_since is None or now < stream.held_since + self.hold:
                continue
            stream.recovering = True
            due.append(Recover(stream.channel, stream.position, stream.epoch))
        return due

    def deadline(self) -> float | None:
        """When the next stream becomes due (None: none is waiting)."""
        waits = [
            s.held_since + self.hold
            for s in self._streams.values()
            if s.held_since is not None and not s.recovering
        ]
        return min(waits, default=None)

    def restart(self, now: float) -> None:
        """A new connection: no recovery is in flight any more, and what is held waits afresh."""
        for stream in self._streams.values():
            stream.recovering = False
            if stream.held:
                stream.held_since = now

    def point(self, channel: str | None) -> Recover | None:
        """Where stream ``channel`` stands (None: nowhere yet), to subscribe or resume with ``since``."""
        stream = self._streams.get(channel)
        if stream is None or stream.position is None:
            return None
        return Recover(channel, stream.position, stream.epoch)

    def forget(self, channel: str | None) -> list[Output]:
        """The stream is left (unsubscribed): yield what it held, and keep no position."""
        stream = self._streams.pop(channel, None)
        return stream.give_up() if stream else []
