"""What the registry answers: its exceptions (each a ``ServiceError`` with its status, code and text;
each refusal of a message saying whether to answer it), its settings objects (``Limits``,
``History``) and its outcomes (``Snapshot``, ``Queued``, ``Joined``, ``Recovery``, ``Presence``). Plain
data: no Redis here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

from chalicelib import envelope
from chalicelib.errors import ServiceError
from chalicelib.settings import (
    FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT,
    HISTORY_TTL_SECONDS_DEFAULT,
    PRESENCE_MAX_DEFAULT,
)


class RegistryUnavailable(ServiceError):
    """Redis could not be reached or answered with an error; the registry is unchanged."""

    status, code = HTTPStatus.SERVICE_UNAVAILABLE, envelope.REGISTRY_UNAVAILABLE
    text = "the service cannot reach its connection registry; send the message again shortly"


class InvalidConnectionId(ServiceError, ValueError):
    """A connection id that API Gateway would never issue; refused before it reaches Redis."""

    text = "not an API Gateway connection id"


class Refusal(ServiceError):
    """A message the registry refused; nothing was read or written but the sender's token.

    ``first``: whether to answer it. A refusal within the sender's rate always is; a refusal for a limit
    only when it is the first since the sender's last answered message, so a flood is not a flood of
    error replies (each reply is a post).
    """

    def __init__(self, detail: str, *, first: bool = True) -> None:
        super().__init__(detail)
        self.first = first


class OverLimit(Refusal):
    """A publish refused by a limit. ``retry_after`` is in seconds; ``text`` says how long to wait."""

    def __init__(self, retry_after: float, *, first: bool = True) -> None:
        super().__init__(f"retry after {retry_after:.3f} s", first=first)
        self.retry_after = retry_after

    @property
    def retry_after_ms(self) -> int:
        return max(1, round(self.retry_after * 1000))

    @property
    def text(self) -> str:
        return f"{self.limit_text}; send again in {self.retry_after_ms} ms"


class RateLimited(OverLimit):
    """The sender is over ``PUBLISH_RATE_PER_SECOND`` / ``PUBLISH_BURST``, or its user over
    ``PUBLISH_RATE_PER_USER``."""

    status, code = HTTPStatus.TOO_MANY_REQUESTS, envelope.RATE_LIMITED
    limit_text = "you are sending faster than this service allows; nothing was published"


class OverCapacity(OverLimit):
    """The whole API's post budget (``MAX_POSTS_PER_SECOND``), or the queue's backlog, cannot cover this
    publish now."""

    status, code = HTTPStatus.SERVICE_UNAVAILABLE, envelope.OVER_CAPACITY
    limit_text = "the service is at its delivery capacity; nothing was published"


class ChannelRefused(Refusal):
    """A subscribe or a channel publish refused."""


class ChannelForbidden(ChannelRefused):
    """The connection's token does not allow this channel."""

    status, code = HTTPStatus.FORBIDDEN, envelope.CHANNEL_FORBIDDEN

    def __init__(self, channel: str, *, first: bool = True) -> None:
        super().__init__(f"not allowed: {channel}", first=first)
        self.channel = channel

    @property
    def text(self) -> str:
        return f'your token does not allow the channel {self.channel} (its "channels" claim)'


class TooManyChannels(ChannelRefused):
    """The connection is already in ``CHANNELS_PER_CONNECTION`` channels."""

    code = envelope.TOO_MANY_CHANNELS
    text = "this would put the connection in more channels than CHANNELS_PER_CONNECTION allows"


class CallerRefusal(Refusal):
    """The message script's answer to mode ``refuse``: the token is taken; ``first`` says whether to answer."""


class ConnectionClosed(ServiceError):
    """The sender's ``$disconnect`` has run: its message arrived late and is dropped, nothing written
    and nothing answered."""

    status = HTTPStatus.GONE


# Inline publishes keep this much of a second's post budget (whole posts): the queue's workers lease only
# beyond it, and an inline publish goes out once the budget holds its cost or the reserve, whichever is
# less (at least one post), perhaps leaving a debt that later publishes and the workers wait for.
INLINE_RESERVE_SECONDS = 0.25
# A 410 for a connection younger than this does not remove it, and a reply to it is tried again: API
# Gateway may answer 410 while the connection's handshake is finishing, just after $connect returned.
HANDSHAKE_WINDOW_SECONDS = 5


class History(NamedTuple):
    """How much of each stream is kept: ``size`` messages (0: no history, no offsets), the whole stream
    expiring ``ttl_seconds`` after its last publish; and how many users a presence answer lists."""

    size: int = 0
    ttl_seconds: int = HISTORY_TTL_SECONDS_DEFAULT
    presence_max: int = PRESENCE_MAX_DEFAULT


class Limits(NamedTuple):
    """Per-connection and per-user token buckets, the whole API's post budget, and how far ahead of it
    the queue may admit broadcasts; a rate or budget of 0 switches it off."""

    publish_rate_per_second: float = 0
    publish_burst: int = 1
    max_posts_per_second: int = 0
    publish_rate_per_user: float = 0
    queue_backlog_seconds: float = FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT

    @property
    def inline_reserve(self) -> int:
        return int(self.max_posts_per_second * INLINE_RESERVE_SECONDS)

    @property
    def queue_backlog(self) -> float:
        """Posts the queue may hold admitted but not yet delivered (its budget's capacity)."""
        return self.max_posts_per_second * self.queue_backlog_seconds


class Queued(NamedTuple):
    """A publish too large to deliver inline: nothing was read, and it was admitted against the queue's
    budget.

    ``sizes``: the audience's entries in each shard that has any (one job each); ``suffix`` as in
    ``Snapshot``. The workers read their shard and take the post budget as they post.
    """

    sizes: dict[int, int]
    suffix: str = ""

    @property
    def recipients(self) -> int:
        return sum(self.sizes.values())


class Snapshot(NamedTuple):
    """The audience as one publish sees it (a sender Redis had lost is registered again by then).

    ``young``: the live members that connected less than ``HANDSHAKE_WINDOW_SECONDS`` ago: a 410 from
    one of them may be API Gateway's handshake still finishing, not a closed connection. ``suffix``:
    what history added to the payload before its closing brace (its offset and epoch; '' without
    history): every recipient gets ``envelope.positioned(payload, suffix)``.
    """

    live: list[str]
    stale: list[str]
    young: frozenset[str] = frozenset()
    suffix: str = ""


class Recovery(NamedTuple):
    """A stream as a subscribe or resume found it: its latest ``offset`` and ``epoch``; ``recovered``:
    None when no ``since`` was given, else whether every message after it is in ``replay`` (oldest
    first, each as it was delivered), all or none."""

    offset: int
    epoch: str
    recovered: bool | None
    replay: list[bytes]


class Joined(NamedTuple):
    """A subscribe's or resume's outcome; ``recovery`` is None with history off."""

    lost: bool
    recovery: Recovery | None = None


class Presence(NamedTuple):
    """A channel's live members: ``count`` connections in all, ``members`` (user: the token's sub, or
    None; connections) for at most ``presence_max`` users, most connections first; ``lost``: Redis had
    lost the asker (it is back now, without its subscriptions)."""

    count: int
    members: list[tuple[str | None, int]]
    lost: bool = False
