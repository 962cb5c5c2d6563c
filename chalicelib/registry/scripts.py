"""The registry's Lua scripts, one file each in ``lua/``, and what they are called with.

A script names the libraries it uses (``-- uses: allowed, buckets``); ``source`` puts them before it.
The two scripts called with many arguments, the message script and the budget script, take their KEYS
and ARGV from the named tuples below: the fields' order is the order they are sent in, and the same
fields become the script's named locals (``named_locals``), so neither side counts positions by hand.
Their answers start with a ``Reply``.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from pathlib import Path
from typing import NamedTuple

_LUA = Path(__file__).with_name("lua")
_LIBRARIES = ("allowed", "buckets", "streams")


class Reply(IntEnum):
    """The first element of a script's answer."""

    GRANTED = 0
    OVER_RATE = 1  # the sender's bucket, or its user's
    OVER_BUDGET = 2  # the post budget, or the queue's
    FORBIDDEN = 3  # the channel, by the token's patterns
    TOO_MANY = 4  # channels for one connection
    QUEUED = 5  # an audience past the inline max: counted and admitted, not read
    CLOSED = 6  # the sender's $disconnect has run
    REFUSED = 7  # the caller refused the message (mode refuse): its token is taken


class MessageMode(StrEnum):
    """What the message script does for its caller (its ARGV ``mode``)."""

    PUBLISH = "publish"
    CHECK = "check"  # a sharded publish's sender checks: its budget and audience are read apart
    PING = "ping"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    RESUME = "resume"
    PRESENCE = "presence"
    REFUSE = "refuse"  # a message that failed to parse: only the sender's token is taken


class BudgetMode(StrEnum):
    """What the budget script does (its ARGV ``mode``)."""

    TAKE = "take"  # an inline publish's posts
    QUEUE = "queue"  # a queued broadcast, against the queue's budget
    LEASE = "lease"  # a worker's posts, beyond the inline reserve


class MessageKeys(NamedTuple):
    registry: str
    sender_bucket: str
    posts_key: str  # sharded: a key of the sender's slot that is never written (so for the last four)
    own_hash: str
    audience: str
    queue_key: str
    history_key: str
    position_key: str
    appended_key: str  # a publish's mark that its message is kept (streams.lua's append)


class MessageArgs(NamedTuple):
    sender: str  # '' for a backend publish: no sender, no rate
    value: str  # the sender's entry, were it to be registered again
    max_age: int
    rate: float
    burst: int
    budget: int  # posts a second
    mode: MessageMode
    channel: str  # '' for every connection
    echo: bool
    enforce: bool  # channel permissions
    max_channels: int
    expire_at: int  # the sender's hash expires with its connection
    inline_max: int  # 0: no queue
    user_rate: float
    backlog: float  # the queue's budget's capacity, in posts
    reserve: int  # the inline reserve, in posts
    pays_replies: bool  # the post budget is this script's (one shard): replies are paid from it
    user_prefix: str  # + the sender's principal key: its user's bucket
    test_now: int  # a test's clock (ms); -1: Redis's
    history_size: int  # 0 sharded: the budget script keeps history there
    history_ttl: int
    position_ttl: int
    payload: bytes
    since_offset: int  # -1: no since
    since_epoch: str


class BudgetKeys(NamedTuple):
    posts_key: str
    queue_key: str
    history_key: str
    position_key: str
    appended_key: str


class BudgetArgs(NamedTuple):
    budget: int
    count: int
    mode: BudgetMode
    reserve: int
    backlog: float
    test_now: int
    history_size: int
    history_ttl: int
    position_ttl: int
    payload: bytes


def named_locals(keys: type[NamedTuple], args: type[NamedTuple]) -> str:
    """Lua locals named as the tuples' fields, from KEYS and ARGV in their order."""
    names = [f"local {name} = KEYS[{n}]" for n, name in enumerate(keys._fields, 1)]
    for n, name in enumerate(args._fields, 1):
        value = f"ARGV[{n}]"
        kind = _annotation(args, name)
        if kind in ("int", "float"):
            value = f"tonumber({value})"
        elif kind == "bool":
            value = f"{value} == '1'"
        names.append(f"local {name} = {value}")
    return "\n".join(names) + "\n"


def _annotation(record: type[NamedTuple], name: str) -> str:
    """A field's annotation as written (a ``ForwardRef`` under postponed annotations)."""
    annotation = record.__annotations__[name]
    return getattr(annotation, "__forward_arg__", getattr(annotation, "__name__", str(annotation)))


def source(name: str, header: str = "") -> str:
    """A script's text: the libraries it uses, ``header``, then the script."""
    text = (_LUA / f"{name}.lua").read_text()
    first = text.partition("\n-- uses: ")[2].partition("\n")[0] if "\n-- uses: " in text else ""
    uses = [library for library in _LIBRARIES if library in first.split(", ")]
    return "".join((_LUA / f"{library}.lua").read_text() for library in uses) + header + text


def keys_of(keys: NamedTuple) -> list[str]:
    return list(keys)


def args_of(args: NamedTuple) -> list:
    """ARGV as Redis takes it: booleans as 1 and 0."""
    return [int(value) if isinstance(value, bool) else value for value in args]
