"""``ConnectionRegistry``: the registry's operations, each one script in one slot (or, sharded, a
few side by side); the data model is in this package's docstring."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from chalicelib.auth import Permissions
from chalicelib.registry import scripts
from chalicelib.registry.client import redis_client, unavailable_on_error
from chalicelib.registry.keys import Keys, check_connection_id, principal_key
from chalicelib.registry.outcomes import (
    HANDSHAKE_WINDOW_SECONDS,
    CallerRefusal,
    ChannelForbidden,
    ConnectionClosed,
    History,
    Joined,
    Limits,
    OverCapacity,
    Presence,
    Queued,
    RateLimited,
    Recovery,
    Snapshot,
    TooManyChannels,
)
from chalicelib.registry.scripts import BudgetMode, MessageMode, Reply
from chalicelib.settings import AuthMode, Settings

# Fields examined for staleness on every connect: enough to keep stale entries a minority.
_PRUNE_SAMPLE_SIZE = 3
# A worker leases a twentieth of a second's budget at once (``post_lease_chunk``).
_LEASES_PER_SECOND = 20
# A stream's position outlives its history: a client holding an offset across a quiet spell learns
# ``recovered: true`` with nothing missed, rather than a new epoch.
_POSITION_TTL_SECONDS = 24 * 3600
# How long $disconnect's tombstone keeps a late message from registering its connection again: a message
# API Gateway received before the close reaches its handler within the 29 s integration timeout.
_TOMBSTONE_SECONDS = 60
_NO_LIMITS, _NO_HISTORY = Limits(), History()
_OVER_LIMITS = {Reply.OVER_RATE: RateLimited, Reply.OVER_BUDGET: OverCapacity}


class ConnectionRegistry:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        max_age_seconds: int,
        limits: Limits = _NO_LIMITS,
        enforce_channel_permissions: bool = False,
        channels_per_connection: int = 20,
        shards: int = 1,
        inline_max: int = 0,
        history: History = _NO_HISTORY,
        clock: Callable[[], float] = time.time,
        bucket_clock: Callable[[], float] | None = None,
    ) -> None:
        """``shards``: how many shards hold the connections (``REGISTRY_SHARDS``); ``inline_max``: the
        largest audience a publish reads itself (0: every audience, there is no queue). ``clock``: this
        container's, for connections' ages (API Gateway's ``connectedAt`` is in seconds); the token buckets
        run on Redis's clock, shared by every container, unless a test steps ``bucket_clock``. ``history``:
        how much of each stream is kept (off by default: no offsets, no replays)."""
        self._client = client
        self._prefix = prefix
        self._max_age_seconds = max_age_seconds
        self._limits = limits
        self._enforce = enforce_channel_permissions
        self._channels_per_connection = channels_per_connection
        self._shards = shards
        self._inline_max = inline_max
        self._history = history
        self._clock = clock
        self._bucket_clock = bucket_clock
        self._keys = Keys(prefix, shards)
        self._connect = client.register_script(scripts.source("connect"))
        self._leave = client.register_script(scripts.source("leave"))
        self._message = client.register_script(
            scripts.source("message", scripts.named_locals(scripts.MessageKeys, scripts.MessageArgs))
        )
        self._budget = client.register_script(
            scripts.source("budget", scripts.named_locals(scripts.BudgetKeys, scripts.BudgetArgs))
        )
        self._recover = client.register_script(scripts.source("recover"))

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> ConnectionRegistry:
        return cls(
            redis_client(settings, session),
            prefix=settings.redis_key_prefix,
            max_age_seconds=settings.connection_max_age_seconds,
            limits=Limits(
                publish_rate_per_second=settings.publish_rate_per_second,
                publish_burst=settings.publish_burst,
                max_posts_per_second=settings.max_posts_per_second,
                publish_rate_per_user=settings.publish_rate_per_user,
                queue_backlog_seconds=settings.fanout_queue_backlog_seconds,
            ),
            enforce_channel_permissions=settings.auth.mode == AuthMode.JWT,
            channels_per_connection=settings.channels_per_connection,
            shards=settings.registry_shards,
            inline_max=settings.fanout_inline_max if settings.fanout_queue_url else 0,
            history=History(
                size=settings.history_size,
                ttl_seconds=settings.history_ttl_seconds,
                presence_max=settings.presence_max,
            ),
        )

    @property
    def max_age_seconds(self) -> int:
        """API Gateway's longest connection: an entry, or a queued job, at least this old reaches nobody."""
        return self._max_age_seconds

    @property
    def inline_max(self) -> int:
        """The largest audience a publish reads itself, and so what one job delivers (0: no queue)."""
        return self._inline_max

    @property
    def post_lease_chunk(self) -> int:
        """Posts a worker leases at once: a twentieth of a second of the budget, so the budget costs a
        worker one round trip per 50 ms of posting."""
        return max(1, self._limits.max_posts_per_second // _LEASES_PER_SECOND)

    def add(
        self,
        connection_id: str,
        connected_at_ms: int,
        principal: str | None = None,
        permissions: Permissions | None = None,
        channels: Sequence[str] = (),
    ) -> None:
        """Register a connection (``connected_at_ms`` is API Gateway's ``connectedAt``), with what its
        token lets it do with channels and the channels it asked for at connect, all in its shard.

        Raise ``ChannelForbidden`` or ``TooManyChannels`` (nothing written) when those are refused.
        """
        check_connection_id(connection_id)
        shard = self.shard_of(connection_id)
        seconds = connected_at_ms // 1000
        value = f"{seconds}:{principal_key(principal)}" if principal else str(seconds)
        permissions = permissions or Permissions()
        with unavailable_on_error():
            reply = self._connect(
                keys=[
                    self._keys.registry(shard),
                    self._keys.connection(connection_id),
                    *(self._keys.channel(channel, shard) for channel in channels),
                ],
                args=[
                    connection_id,
                    value,
                    self._max_age_seconds,
                    self._stale_cutoff(),
                    _PRUNE_SAMPLE_SIZE,
                    seconds + self._max_age_seconds,
                    1 if self._enforce else 0,
                    "\n".join(permissions.subscribe),
                    "\n".join(permissions.publish),
                    self._channels_per_connection,
                    principal or "",
                    *channels,
                ],
            )
        self._raise_refusal(reply)

    def remove(self, connection_id: str) -> None:
        """Forget a connection and its memberships, in one round trip."""
        check_connection_id(connection_id)
        shard = self.shard_of(connection_id)
        with unavailable_on_error():
            self._leave(
                keys=[self._keys.registry(shard), self._keys.connection(connection_id)],
                args=[connection_id, self._keys.channel("", shard), _TOMBSTONE_SECONDS],
            )

    def begin_publish(
        self,
        sender: str,
        connected_at_ms: int,
        *,
        include_sender: bool,
        channel: str | None = None,
        payload: bytes = b"{}",
    ) -> Snapshot | Queued:
        """Re-register the sender, check the channel, apply the limits, keep ``payload`` in its
        stream's history (giving it its offset: ``suffix``), read the audience (every connection, or the
        channel's members); one round trip with one shard. An audience larger than the inline max is not
        read: ``Queued`` says how large it is, shard by shard.

        Raise ``RateLimited``, ``OverCapacity`` or ``ChannelForbidden`` when refused (nothing read; the
        sender's token taken), ``ConnectionClosed`` when its ``$disconnect`` has run.
        """
        if self._shards == 1:
            reply = self._run_message(
                "publish", sender, connected_at_ms, channel=channel, echo=include_sender, payload=payload
            )
            return self._one_shard_publish(reply)

        def sender_checks() -> None:
            self._run_message(MessageMode.CHECK, sender, connected_at_ms, channel=channel)

        return self._sharded_publish(channel, payload, sender_checks)

    def begin_backend_publish(self, channel: str | None = None, payload: bytes = b"{}") -> Snapshot | Queued:
        """A publish with no sender (``POST /publish``): the post budget, history, then the audience."""
        if self._shards == 1:
            return self._one_shard_publish(
                self._run_message(MessageMode.PUBLISH, "", 0, channel=channel, echo=True, payload=payload)
            )
        return self._sharded_publish(channel, payload, None)

    def touch(self, sender: str, connected_at_ms: int) -> bool:
        """A keepalive: re-register the sender if Redis lost it (then True), counting against its rate."""
        return self._run_message(MessageMode.PING, sender, connected_at_ms)[1] == 1

    def subscribe(
        self, sender: str, connected_at_ms: int, channel: str, since: tuple[int, str] | None = None
    ) -> Joined:
        """Join a channel (allowed by the token, within the per-connection count), and find its stream's
        position and, given ``since`` (offset, epoch), what the sender missed; one round trip with one
        shard. ``lost``: Redis had lost the sender."""
        return self._join(MessageMode.SUBSCRIBE, sender, connected_at_ms, channel, since)

    def resume(self, sender: str, connected_at_ms: int, since: tuple[int, str]) -> Joined:
        """What the sender missed of the messages to everyone since ``since``; a message like any other."""
        return self._join(MessageMode.RESUME, sender, connected_at_ms, None, since)

    def presence(self, sender: str, connected_at_ms: int, channel: str) -> Presence:
        """Who is in a channel (the token must allow subscribing to it); a message like any other."""
        reply = self._run_message(MessageMode.PRESENCE, sender, connected_at_ms, channel=channel)
        if self._shards == 1:
            entries = list(zip(reply[2::2], reply[3::2], strict=True))
        else:
            with unavailable_on_error():
                pipeline = self._client.pipeline(transaction=False)
                for shard in range(self._shards):
                    pipeline.hgetall(self._keys.channel(channel, shard))
                entries = [entry for part in pipeline.execute() for entry in part.items()]
        cutoff = self._stale_cutoff()
        users: dict[str | None, int] = {}
        for _, value in entries:
            if _seconds(value) > cutoff:
                user = value.partition(":")[2] or None
                users[user] = users.get(user, 0) + 1
        ranked = sorted(users.items(), key=lambda member: (-member[1], member[0] or ""))
        return Presence(
            count=sum(users.values()), members=ranked[: self._history.presence_max], lost=int(reply[1]) == 1
        )

    def _join(
        self,
        mode: MessageMode,
        sender: str,
        connected_at_ms: int,
        channel: str | None,
        since: tuple[int, str] | None,
    ) -> Joined:
        reply = self._run_message(mode, sender, connected_at_ms, channel=channel, since=since)
        lost = int(reply[1]) == 1
        if not self._history.size:
            return Joined(lost=lost)
        if self._shards > 1:
            with unavailable_on_error():
                reply = [0, 0, *self._run_recover(channel, since or (-1, ""))]
        recovered, offset, epoch, *replay = reply[2:]
        return Joined(
            lost=lost,
            recovery=Recovery(
                offset=int(offset),
                epoch=epoch,
                recovered=None if int(recovered) < 0 else int(recovered) == 1,
                replay=[message.encode() for message in replay],
            ),
        )

    def unsubscribe(self, sender: str, connected_at_ms: int, channel: str) -> bool:
        return self._run_message(MessageMode.UNSUBSCRIBE, sender, connected_at_ms, channel=channel)[1] == 1

    def refuse(self, sender: str, connected_at_ms: int) -> None:
        """A message refused before it reached the registry (it did not parse): it takes the sender's
        token like any other, and its error reply a post from the budget.

        Raise ``RateLimited`` when the sender is over its rate, ``ConnectionClosed`` as ``begin_publish``.
        """
        with contextlib.suppress(CallerRefusal):
            self._run_message(MessageMode.REFUSE, sender, connected_at_ms)

    def read_shard(self, shard: int, channel: str | None = None) -> Snapshot:
        """One shard's part of an audience (a queued job's), in one command."""
        with unavailable_on_error():
            entries = self._client.hgetall(self._keys.audience(channel, shard))
        return self._snapshot(list(entries), list(entries.values()))

    def lease_posts(self, count: int) -> tuple[int, float]:
        """Take ``count`` posts from the whole API's budget, at most what it holds beyond the inline
        reserve, never into debt: (granted, 0), or (0, seconds until they are there). The queue's workers
        pace themselves with it."""
        if self._limits.max_posts_per_second <= 0:
            return count, 0.0
        with unavailable_on_error():
            _, granted, wait_ms = self._run_budget(count, BudgetMode.LEASE)
        return int(granted), int(wait_ms) / 1000

    def forget(self, connection_ids: Iterable[str], channel: str | None = None) -> None:
        """Remove connections that are gone or stale (from the channel published to, too), one
        command per shard, in one round trip; nothing to do costs nothing. Their other memberships go
        when found stale or gone."""
        by_shard: dict[int, list[str]] = {}
        for connection_id in connection_ids:
            by_shard.setdefault(self.shard_of(connection_id), []).append(connection_id)
        if not by_shard:
            return
        with unavailable_on_error():
            if channel is None and len(by_shard) == 1:
                ((shard, ids),) = by_shard.items()
                self._client.hdel(self._keys.registry(shard), *ids)
                return
            pipeline = self._client.pipeline(transaction=False)
            for shard, ids in by_shard.items():
                pipeline.hdel(self._keys.registry(shard), *ids)
                if channel is not None:
                    pipeline.hdel(self._keys.channel(channel, shard), *ids)
            pipeline.execute()

    def registry_keys(self) -> list[str]:
        """Every shard's registry hash (for operators, tests and benchmarks)."""
        return [self._keys.registry(shard) for shard in range(self._shards)]

    def shard_of(self, connection_id: str) -> int:
        """The shard that holds a connection, its memberships and its rates: stable for a given count."""
        return self._keys.shard_of(connection_id)

    def _one_shard_publish(self, reply: list) -> Snapshot | Queued:
        # reply[1], whether the sender had been lost, is for the replies a publish does not have
        if int(reply[0]) == Reply.QUEUED:
            return Queued(sizes={0: int(reply[2])}, suffix=reply[3])
        return self._snapshot(reply[3][0::2], reply[3][1::2], suffix=reply[2])

    def _sharded_publish(
        self, channel: str | None, payload: bytes, sender_checks: Callable[[], None] | None
    ) -> Snapshot | Queued:
        """Two round trips, each of two requests side by side in different slots: the sender's checks
        (``sender_checks``: its script in its shard; None for a backend publish) with the audience's size
        (one HLEN per shard, one pipeline); then the admission (the budget and the stream's append, one
        script in the unsharded slot) with the read of every shard that has members (one pipeline),
        unless the publish is queued. A refused sender reads nothing; a publish the budget refuses has
        read its audience for nothing (at most the inline max)."""
        sizes_of = functools.partial(self._sizes, channel)
        sizes = self._side_by_side(sender_checks, sizes_of)[1] if sender_checks else sizes_of()
        cost = sum(sizes.values())  # the sender counts, echo or not: one post at most
        queued = bool(self._inline_max) and cost > self._inline_max

        def admit() -> list:
            if self._limits.max_posts_per_second <= 0 and not self._history.size:
                return [Reply.GRANTED, cost, 0, ""]
            with unavailable_on_error():
                reply = self._run_budget(
                    cost, BudgetMode.QUEUE if queued else BudgetMode.TAKE, channel=channel, payload=payload
                )
            self._raise_refusal(reply)
            return reply

        if queued:
            return Queued(sizes=sizes, suffix=admit()[3])
        reply, entries = self._side_by_side(admit, functools.partial(self._read, channel, sizes))
        return self._snapshot(*entries, suffix=reply[3])

    def _sizes(self, channel: str | None) -> dict[int, int]:
        """The audience's size in each shard that has members, in one pipeline."""
        with unavailable_on_error():
            pipeline = self._client.pipeline(transaction=False)
            for shard in range(self._shards):
                pipeline.hlen(self._keys.audience(channel, shard))
            return {shard: size for shard, size in enumerate(pipeline.execute()) if size}

    def _read(self, channel: str | None, sizes: dict[int, int]) -> tuple[list[str], list[str]]:
        """The audience's ids and their entries' values in the shards that have members, in one pipeline."""
        ids: list[str] = []
        values: list[str] = []
        if not sizes:
            return ids, values
        with unavailable_on_error():
            pipeline = self._client.pipeline(transaction=False)
            for shard in sizes:
                pipeline.hgetall(self._keys.audience(channel, shard))
            for shard_entries in pipeline.execute():
                ids += shard_entries
                values += shard_entries.values()
        return ids, values

    def _side_by_side(self, here: Callable[[], Any], there: Callable[[], Any]) -> tuple[Any, Any]:
        """Two requests to different slots at once: one round trip's wait, not two. ``there`` runs on the
        registry's own thread; when either raises, both have finished first (``here``'s error wins)."""
        future = self._other_slot.submit(there)
        try:
            mine = here()
        finally:
            futures.wait([future])
        return mine, future.result()

    @functools.cached_property
    def _other_slot(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")

    def _run_recover(self, channel: str | None, since: tuple[int, str]) -> list:
        """A sharded subscribe's or resume's recovery, in the stream's (unsharded) slot."""
        return self._recover(
            keys=[self._keys.history(channel), self._keys.position(channel), self._keys.posts()],
            args=[_POSITION_TTL_SECONDS, *since, self._limits.max_posts_per_second, self._bucket_now_ms()],
        )

    def _run_budget(
        self, count: int, mode: BudgetMode, *, channel: str | None = None, payload: bytes = b""
    ) -> list:
        """The budgets' script: ``take`` (an inline publish's cost), ``queue`` (a queued one's), each with
        the stream's append, or ``lease`` (a worker's chunk)."""
        limits, history, keys = self._limits, self._history, self._keys
        appends = mode != BudgetMode.LEASE and history.size > 0
        return self._budget(
            keys=scripts.keys_of(
                scripts.BudgetKeys(
                    posts_key=keys.posts(),
                    queue_key=keys.queued(),
                    history_key=keys.history(channel),
                    position_key=keys.position(channel),
                    # A new id per append: the client's retries of this one call send the same.
                    appended_key=keys.appended(uuid.uuid4().hex if appends else "none"),
                )
            ),
            args=scripts.args_of(
                scripts.BudgetArgs(
                    budget=limits.max_posts_per_second,
                    count=count,
                    mode=mode,
                    reserve=limits.inline_reserve,
                    backlog=limits.queue_backlog,
                    test_now=self._bucket_now_ms(),
                    history_size=history.size if appends else 0,
                    history_ttl=history.ttl_seconds,
                    position_ttl=_POSITION_TTL_SECONDS,
                    payload=payload,
                )
            ),
        )

    def _run_message(
        self,
        mode: MessageMode,
        sender: str,
        connected_at_ms: int,
        *,
        channel: str | None = None,
        echo: bool = False,
        payload: bytes = b"",
        since: tuple[int, str] | None = None,
    ) -> list:
        if sender:
            check_connection_id(sender)
        shard = self.shard_of(sender)
        limits = self._limits
        seconds = connected_at_ms // 1000
        one_shard = self._shards == 1
        # resume recovers the messages to everyone; the others, the stream of the channel they name
        stream = None if mode == MessageMode.RESUME else channel
        since_offset, since_epoch = since or (-1, "")
        keys = self._keys
        # Sharded, the budgets and the streams are not this script's (they are in another slot): their
        # keys here are keys of the sender's slot that it never writes.
        unused = functools.partial(keys.in_shard, shard=shard)
        appends = one_shard and mode == MessageMode.PUBLISH and self._history.size > 0
        with unavailable_on_error():
            reply = self._message(
                keys=scripts.keys_of(
                    scripts.MessageKeys(
                        registry=keys.registry(shard),
                        sender_bucket=keys.rate(sender),
                        posts_key=keys.posts() if one_shard else unused("posts"),
                        own_hash=keys.connection(sender),
                        audience=keys.audience(channel, shard),
                        queue_key=keys.queued() if one_shard else unused("queued"),
                        history_key=keys.history(stream) if one_shard else unused("history"),
                        position_key=keys.position(stream) if one_shard else unused("position"),
                        appended_key=keys.appended(uuid.uuid4().hex) if appends else unused("appended"),
                    )
                ),
                args=scripts.args_of(
                    scripts.MessageArgs(
                        sender=sender,
                        value=str(seconds),
                        max_age=self._max_age_seconds,
                        rate=limits.publish_rate_per_second,
                        burst=limits.publish_burst,
                        budget=limits.max_posts_per_second,
                        mode=mode,
                        channel=channel or "",
                        echo=echo,
                        enforce=self._enforce,
                        max_channels=self._channels_per_connection,
                        expire_at=seconds + self._max_age_seconds,
                        inline_max=self._inline_max,
                        user_rate=limits.publish_rate_per_user,
                        backlog=limits.queue_backlog,
                        reserve=limits.inline_reserve,
                        pays_replies=one_shard,
                        user_prefix=keys.user_prefix(shard),
                        test_now=self._bucket_now_ms(),
                        history_size=self._history.size if one_shard else 0,
                        history_ttl=self._history.ttl_seconds,
                        position_ttl=_POSITION_TTL_SECONDS,
                        payload=payload if one_shard and self._history.size else b"",
                        since_offset=since_offset,
                        since_epoch=since_epoch,
                    )
                ),
            )
        self._raise_refusal(reply)
        return reply

    def _snapshot(self, ids: list[str], values: list[str], *, suffix: str = "") -> Snapshot:
        """The audience from its entries (``values[i]`` is ``ids[i]``'s: its connectedAt, perhaps
        ``:principal`` after it), each live or stale, and the young among the live."""
        cutoff = self._stale_cutoff()
        young_since = int(self._clock()) - HANDSHAKE_WINDOW_SECONDS
        # The usual audience, all live and none young, without a Python step per entry: the scripts
        # write connectedAt as 10 digits (seconds until the year 2286), which order as text as they do
        # as numbers, with ':' (below ';') before a principal. A value of another shape (written by
        # hand) is classified by the loop below, unless it is all digits of another length.
        if values and f"{cutoff};" < min(values) and max(values) < str(young_since):
            return Snapshot(live=ids, stale=[], young=frozenset(), suffix=suffix)
        live, stale, young = [], [], []
        for connection_id, value in zip(ids, values, strict=True):
            connected_at = _seconds(value)
            (stale if connected_at <= cutoff else live).append(connection_id)
            if connected_at >= young_since:
                young.append(connection_id)
        return Snapshot(live=live, stale=stale, young=frozenset(young), suffix=suffix)

    def _raise_refusal(self, reply: list) -> None:
        """Turn a script's refusal into the exception that says why."""
        outcome = Reply(int(reply[0]))
        if outcome in (Reply.GRANTED, Reply.QUEUED):
            return
        if outcome == Reply.CLOSED:
            raise ConnectionClosed("the connection's $disconnect has run")
        first = int(reply[2]) == 1
        if outcome in _OVER_LIMITS:
            raise _OVER_LIMITS[outcome](int(reply[1]) / 1000, first=first)
        if outcome == Reply.FORBIDDEN:
            raise ChannelForbidden(reply[3], first=first)
        if outcome == Reply.TOO_MANY:
            raise TooManyChannels(f"at most {self._channels_per_connection} channels", first=first)
        raise CallerRefusal("refused by the caller", first=first)

    def _bucket_now_ms(self) -> int:
        """The buckets' time: -1, Redis's own (TIME), unless a test steps a clock of its own."""
        return -1 if self._bucket_clock is None else int(self._bucket_clock() * 1000)

    def _stale_cutoff(self) -> int:
        """An entry connected at or before this second has reached the maximum age."""
        return int(self._clock()) - self._max_age_seconds


def _seconds(value: str) -> int:
    """A stored connectedAt; an unreadable one (written by hand) counts as stale, not as a crash."""
    try:
        return int(value.partition(":")[0])
    except ValueError:
        return 0
