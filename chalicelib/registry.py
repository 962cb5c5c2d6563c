"""The connection registry: the only module that knows how connections are kept in Redis.

Data model, with one shard (the default) all keys under one cluster hash tag ``{PREFIX}`` (one slot,
so one script sees them all):

    {PREFIX}:connections   hash: connection id -> "connectedAt" or "connectedAt:principal key"
    {PREFIX}:ch:<channel>  hash: member connection id -> "connectedAt" (one per channel)
    {PREFIX}:conn:<id>     hash: "c:<channel>" -> 1 for each channel joined, and the token's channel
                           patterns ("#s" subscribe, "#p" publish); expires with the connection
    {PREFIX}:rate:<id>     hash: the sender's token bucket (tokens, at); expires once full again
    {PREFIX}:posts         hash: the whole API's post budget (tokens, at)

Every event is a single round trip (one script, or one command):

    connect      EVALSHA connect   (HSET + EXPIRE + prune a random sample of stale fields; the
                                    permissions; the ?channels= memberships)
    disconnect   EVALSHA leave     (HDEL from the registry and from every channel joined)
    publish      EVALSHA message   (re-assert the sender, take from its bucket and from the post
                                    budget, HGETALL of the audience; or refuse and read nothing)
    ping, subscribe, unsubscribe   EVALSHA message (the same script, another mode; no read)
    afterwards   HDEL of the gone and stale ids, only when there are any

With one shard, all keys share one slot, so a publish's limits and its audience are decided in one
script. An audience larger than the inline max (queued fan-out) is counted, not read: the script
answers ``Queued`` and the queue's workers read it, a shard at a time (``read_shard``).

With ``shards`` > 1 (``REGISTRY_SHARDS``), a connection id's CRC-32 picks its shard ``k``, and every key
about it (its entry, its channel memberships, its hash, its rate) has the tag ``{PREFIX:k}``: one slot
per shard, so connect, disconnect, ping, subscribe and unsubscribe are still one script. The post
budget stays at ``{PREFIX}:posts``. A publish is then: the sender's checks (the message script, mode
``check``), the audience's size (HLEN of each shard's key, one pipeline), the budget (the budget
script), the read (HGETALL of each shard with members, one pipeline).

``$disconnect`` is best effort, so an entry can outlive its connection. API Gateway closes every
connection at 2 hours (``max_age_seconds``), so an entry (in the registry or in a channel) at least
that old is never a recipient; it is removed by the next publish to it, by the random sampling on
connect, and with the whole key when nothing has joined it for ``max_age_seconds``.

The principal key is an 8-byte BLAKE2b digest of the token's ``sub`` (11 characters): a Cognito
``sub`` is a 36-character UUID, which would make an entry 1.7 times a bare set's; the digest keeps it
at 1.3 and still names the user for anything that acts per user (compute it from a ``sub``).

Redis can lose its data (a cache node replaced without a replica, a failover that drops the last
writes). Every message and ping a connection sends re-registers it if it is missing (HSETNX: an
existing entry, and its principal, are left alone) and says so (``lost``), so a live connection is
back in the registry within one keepalive period; its channels and permissions are gone with the
data, which is why the reply tells the client to reconnect.

Both buckets grant when they hold ``min(cost, capacity)`` tokens and then take the whole cost: a
publish to more recipients than the budget's one-second capacity still goes out, and leaves a debt
that later publishes wait for, so the average stays at ``MAX_POSTS_PER_SECOND``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from chalicelib.auth import Permissions
from chalicelib.redis_auth import credential_provider
from chalicelib.settings import Settings

# API Gateway ids are 16 characters of base64 ("ZJ8cWdV9iYcCIkg="); allow any plain token.
_CONNECTION_ID = re.compile(r"^[A-Za-z0-9+/=_-]{1,128}$")
# Fields examined for staleness on every connect: enough to keep stale entries a minority.
_PRUNE_SAMPLE_SIZE = 3
# Redis connections one container may hold; more concurrent callers wait (up to the socket timeout)
# instead of failing. Lambda runs one invocation per container; the local gateway runs many at once.
_POOL_SIZE = 64

# Channel patterns: a name, or a prefix ending in '*'; a list of them is one string, newline-separated.
_ALLOWED_LUA = """
local function allowed(patterns, name)
  for p in string.gmatch(patterns or '', '[^\\n]+') do
    if p == name or (string.sub(p, -1) == '*' and string.sub(name, 1, #p - 1) == string.sub(p, 1, -2)) then
      return true
    end
  end
  return false
end
"""

# A token bucket's level now: full when it has no state (new, or expired once full again).
_LEVEL_LUA = """
local function level(key, rate, capacity, now)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or at == nil then return capacity end
  return math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
end
local function settle(key, tokens, now, ttl_ms)
  redis.call('HSET', key, 'tokens', tokens, 'at', now)
  redis.call('PEXPIRE', key, ttl_ms)
end
"""

# KEYS: registry, the connection's hash, then one key per channel joined at connect.
# ARGV: id, value, max age (s), stale cutoff (s), prune sample, expire-at (s), enforce (1/0),
#       subscribe patterns, publish patterns, max channels, then the channel names.
# Returns {0}, or {3, channel} (not allowed), or {4} (too many): nothing written then.
_CONNECT_SCRIPT = (
    _ALLOWED_LUA
    + """
local first_channel = 11
local enforce = ARGV[7] == '1'
if #ARGV - first_channel + 1 > tonumber(ARGV[10]) then return {4} end
if enforce then
  for i = first_channel, #ARGV do
    if not allowed(ARGV[8], ARGV[i]) then return {3, ARGV[i]} end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local sample = redis.call('HRANDFIELD', KEYS[1], ARGV[5], 'WITHVALUES')
for i = 1, #sample, 2 do
  if (tonumber(string.match(sample[i + 1], '^%d+')) or 0) <= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], sample[i])
  end
end
if enforce then redis.call('HSET', KEYS[2], '#s', ARGV[8], '#p', ARGV[9]) end
local connected_at = string.match(ARGV[2], '^%d+')  -- a membership keeps no principal
for i = first_channel, #ARGV do
  local channel_key = KEYS[3 + i - first_channel]
  redis.call('HSET', channel_key, ARGV[1], connected_at)
  redis.call('EXPIRE', channel_key, ARGV[3])
  redis.call('HSET', KEYS[2], 'c:' .. ARGV[i], 1)
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIREAT', KEYS[2], ARGV[6]) end
return {0}
"""
)

# KEYS: registry, the connection's hash. ARGV: id, the channel keys' prefix.
# The channel keys are read from the connection's hash: they share its hash tag, hence its slot.
_LEAVE_SCRIPT = """
redis.call('HDEL', KEYS[1], ARGV[1])
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 2) == 'c:' then
    redis.call('HDEL', ARGV[2] .. string.sub(field, 3), ARGV[1])
  end
end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: registry, sender's bucket, post budget, sender's hash, the audience (registry or channel).
# ARGV: 1 sender ('' for a backend publish: no sender, no rate), 2 value, 3 max age (s), 4 now (ms),
#       5 rate/s, 6 burst, 7 posts/s, 8 mode (publish, ping, subscribe, unsubscribe), 9 channel ('' for
#       every connection), 10 echo (1/0), 11 enforce permissions (1/0), 12 max channels, 13 expire-at (s),
#       14 inline max (0: no queue, every audience is read and delivered inline).
# Modes: publish, check (a sharded publish's sender checks: rate and channel, no budget, no read),
# ping, subscribe, unsubscribe.
# Returns {0, lost, entries...} for a publish, {5, lost, cost} for one whose audience is larger than
# the inline max (queued: nothing read, no budget taken), {0, lost} otherwise; {1, wait ms, first} when the
# sender is over its rate, {2, wait ms, first} when the post budget cannot cover the publish (first:
# the first refusal since the sender's last granted message, the only one answered), {3, channel} when the
# channel is not allowed, {4} when the sender is in too many channels. Refusals write nothing else.
_MESSAGE_SCRIPT = (
    _ALLOWED_LUA
    + _LEVEL_LUA
    + """
local sender, mode, channel = ARGV[1], ARGV[8], ARGV[9]
local lost = 0
if sender ~= '' and redis.call('HSETNX', KEYS[1], sender, ARGV[2]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  lost = 1
end
local now = tonumber(ARGV[4])
local function refuse(kind, tokens, need, rate)
  local wait = math.ceil((need - tokens) * 1000 / rate)
  if sender == '' then return {kind, wait, 1} end
  local first = redis.call('HSETNX', KEYS[2], 'told', 1)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], wait + 1000) end
  return {kind, wait, first}
end
local rate, burst, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local enforce = ARGV[11] == '1'
local sender_tokens, posts_tokens, cost
if sender ~= '' and rate > 0 then
  sender_tokens = level(KEYS[2], rate, burst, now)
  if sender_tokens < 1 then return refuse(1, sender_tokens, 1, rate) end
end
local inline_max, queued = tonumber(ARGV[14]), false
if mode == 'publish' or mode == 'check' then
  if channel ~= '' and sender ~= '' and enforce and not allowed(redis.call('HGET', KEYS[4], '#p'), channel) then
    return {3, channel}
  end
end
if mode == 'publish' and (budget > 0 or inline_max > 0) then
  cost = redis.call('HLEN', KEYS[5])
  if ARGV[10] ~= '1' and sender ~= '' and redis.call('HEXISTS', KEYS[5], sender) == 1 then cost = cost - 1 end
  if inline_max > 0 and cost > inline_max then
    queued = true  -- the workers take from the post budget as they post
  elseif budget > 0 then
    posts_tokens = level(KEYS[3], budget, budget, now)
    local need = math.min(cost, budget)
    if posts_tokens < need then return refuse(2, posts_tokens, need, budget) end
  end
elseif mode == 'subscribe' then
  if enforce and not allowed(redis.call('HGET', KEYS[4], '#s'), channel) then return {3, channel} end
  if redis.call('HEXISTS', KEYS[4], 'c:' .. channel) == 0 then
    local joined = redis.call('HLEN', KEYS[4]) - redis.call('HEXISTS', KEYS[4], '#s') - redis.call('HEXISTS', KEYS[4], '#p')
    if joined >= tonumber(ARGV[12]) then return {4} end
  end
end
if sender ~= '' then redis.call('HDEL', KEYS[2], 'told') end
if sender_tokens then settle(KEYS[2], sender_tokens - 1, now, math.ceil(burst * 1000 / rate) + 1000) end
if posts_tokens then
  settle(KEYS[3], posts_tokens - cost, now, math.ceil(math.max(cost, budget) * 1000 / budget) + 1000)
end
if mode == 'subscribe' then
  redis.call('HSET', KEYS[5], sender, ARGV[2])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[4], 'c:' .. channel, 1)
  redis.call('EXPIREAT', KEYS[4], ARGV[13])
elseif mode == 'unsubscribe' then
  redis.call('HDEL', KEYS[5], sender)
  redis.call('HDEL', KEYS[4], 'c:' .. channel)
end
if mode ~= 'publish' then return {0, lost} end
if queued then return {5, lost, cost} end
local reply = redis.call('HGETALL', KEYS[5])
table.insert(reply, 1, lost)
table.insert(reply, 1, 0)
return reply
"""
)


# KEYS: the post budget. ARGV: now (ms), posts/s, count, mode.
# take: all of ``count`` if the bucket holds min(count, capacity), leaving a debt; else {2, wait ms, 1}.
# lease: min(count, capacity) when the bucket holds that many, never a debt; else {0, 0, wait ms until
# it does} (a whole chunk at once: one round trip per chunk, not one per token as the bucket refills).
_BUDGET_SCRIPT = (
    _LEVEL_LUA
    + """
local now, budget, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = level(KEYS[1], budget, budget, now)
local granted = count
if ARGV[4] == 'take' then
  if tokens < math.min(count, budget) then
    return {2, math.ceil((math.min(count, budget) - tokens) * 1000 / budget), 1}
  end
else
  granted = math.min(count, budget)
  if tokens < granted then return {0, 0, math.ceil((granted - tokens) * 1000 / budget)} end
end
settle(KEYS[1], tokens - granted, now, math.ceil(math.max(granted, budget) * 1000 / budget) + 1000)
return {0, granted, 0}
"""
)


class RegistryUnavailable(Exception):
    """Redis could not be reached or answered with an error; the registry is unchanged."""


class InvalidConnectionId(ValueError):
    """A connection id that API Gateway would never issue; refused before it reaches Redis."""


class OverLimit(Exception):
    """A publish refused by a limit; nothing was read or taken. ``retry_after`` is in seconds.

    ``first`` is true for the first refusal since the sender's last granted message.
    """

    def __init__(self, retry_after: float, *, first: bool = True) -> None:
        super().__init__(f"retry after {retry_after:.3f} s")
        self.retry_after = retry_after
        self.first = first


class RateLimited(OverLimit):
    """The sender is over ``PUBLISH_RATE_PER_SECOND`` / ``PUBLISH_BURST``."""


class OverCapacity(OverLimit):
    """The whole API's post budget (``MAX_POSTS_PER_SECOND``) cannot cover this publish now."""


class ChannelRefused(Exception):
    """A subscribe or a channel publish refused; nothing was written."""


class ChannelForbidden(ChannelRefused):
    """The connection's token does not allow this channel."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"not allowed: {channel}")
        self.channel = channel


class TooManyChannels(ChannelRefused):
    """The connection is already in ``CHANNELS_PER_CONNECTION`` channels."""


_REFUSALS = {1: RateLimited, 2: OverCapacity}


@dataclass(frozen=True)
class Limits:
    """Per-connection token bucket and the whole API's post budget; 0 switches one off."""

    publish_rate_per_second: float = 0
    publish_burst: int = 1
    max_posts_per_second: int = 0


_QUEUED = 5  # the message script's answer for an audience larger than the inline max
_LEASES_PER_SECOND = 20  # see ``ConnectionRegistry.post_lease_chunk``


@dataclass(frozen=True)
class Queued:
    """A publish too large to deliver inline: nothing was read and no post budget taken.

    ``sizes``: the audience's entries in each shard that has any (one job each); ``lost`` as in
    ``Snapshot``. The workers read their shard and take the budget as they post.
    """

    sizes: dict[int, int]
    lost: bool = False

    @property
    def recipients(self) -> int:
        return sum(self.sizes.values())


@dataclass(frozen=True)
class Snapshot:
    """The audience as one publish sees it; ``lost``: Redis had lost the sender (it is back now)."""

    live: list[str]
    stale: list[str]
    lost: bool = False


def redis_client(settings: Settings, session: Any = None) -> redis.Redis | RedisCluster:
    """One client per container, with timeouts and retry with backoff on connection errors.

    ``session`` (boto3) signs ElastiCache IAM tokens when ``REDIS_AUTH=iam``; unused otherwise.
    """
    options = {
        "credential_provider": credential_provider(settings, session),
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    # A blocking pool: callers beyond its size wait for a free connection (at most the socket
    # timeout) rather than fail with "Too many connections". No health_check_interval: redis-py's
    # check PINGs inside a new connection's handshake under a retry of its own, nested in the
    # connect's retry, so a stalled Redis cost 9 timeouts (18 s) instead of 3; a connection reset
    # while idle (a frozen container's, by a NAT gateway) is found at checkout and replaced anyway,
    # and the check's monotonic clock does not advance while Lambda is frozen.
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=_POOL_SIZE,
        timeout=settings.redis_socket_timeout_seconds,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **options,
    )
    return redis.Redis(connection_pool=pool)


class ConnectionRegistry:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        max_age_seconds: int,
        limits: Limits = Limits(),
        enforce_channel_permissions: bool = False,
        channels_per_connection: int = 20,
        shards: int = 1,
        inline_max: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``shards``: how many shards hold the connections (``REGISTRY_SHARDS``); ``inline_max``: the
        largest audience a publish reads itself (0: every audience, there is no queue)."""
        self._client = client
        self._prefix = prefix
        self._max_age_seconds = max_age_seconds
        self._limits = limits
        self._enforce = enforce_channel_permissions
        self._channels_per_connection = channels_per_connection
        self._shards = shards
        self._inline_max = inline_max
        self._clock = clock
        self._connect = client.register_script(_CONNECT_SCRIPT)
        self._leave = client.register_script(_LEAVE_SCRIPT)
        self._message = client.register_script(_MESSAGE_SCRIPT)
        self._budget = client.register_script(_BUDGET_SCRIPT)

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
            ),
            enforce_channel_permissions=settings.auth.mode == "jwt",
            channels_per_connection=settings.channels_per_connection,
            shards=settings.registry_shards,
            inline_max=settings.fanout_inline_max if settings.fanout_queue_url else 0,
        )

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
        _check(connection_id)
        shard = self.shard_of(connection_id)
        seconds = connected_at_ms // 1000
        value = f"{seconds}:{principal_key(principal)}" if principal else str(seconds)
        permissions = permissions or Permissions()
        with _unavailable_on_error():
            reply = self._connect(
                keys=[
                    self._registry_key(shard),
                    self._connection_key(connection_id),
                    *(self._channel_key(channel, shard) for channel in channels),
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
                    *channels,
                ],
            )
        self._raise_refusal(reply)

    def remove(self, connection_id: str) -> None:
        """Forget a connection and its memberships, in one round trip."""
        _check(connection_id)
        shard = self.shard_of(connection_id)
        with _unavailable_on_error():
            self._leave(
                keys=[self._registry_key(shard), self._connection_key(connection_id)],
                args=[connection_id, self._channel_key("", shard)],
            )

    def begin_publish(
        self, sender: str, connected_at_ms: int, *, include_sender: bool, channel: str | None = None
    ) -> Snapshot | Queued:
        """Re-register the sender, check the channel, apply both limits, read the audience (every
        connection, or the channel's members); one round trip with one shard. An audience larger than
        the inline max is not read: ``Queued`` says how large it is, shard by shard.

        Raise ``RateLimited``, ``OverCapacity`` or ``ChannelForbidden`` when refused: nothing read or taken.
        """
        if self._shards == 1:
            reply = self._run_message(
                "publish", sender, connected_at_ms, channel=channel, echo=include_sender
            )
            return self._one_shard_publish(reply)
        lost = self._run_message("check", sender, connected_at_ms, channel=channel)[1] == 1
        return self._sharded_publish(channel, lost=lost)

    def begin_backend_publish(self, channel: str | None = None) -> Snapshot | Queued:
        """A publish with no sender (``POST /publish``): the post budget, then the audience."""
        if self._shards == 1:
            return self._one_shard_publish(self._run_message("publish", "", 0, channel=channel, echo=True))
        return self._sharded_publish(channel, lost=False)

    def touch(self, sender: str, connected_at_ms: int) -> bool:
        """A keepalive: re-register the sender if Redis lost it (then True), counting against its rate."""
        return self._run_message("ping", sender, connected_at_ms)[1] == 1

    def subscribe(self, sender: str, connected_at_ms: int, channel: str) -> bool:
        """Join a channel (allowed by the token, within the per-connection count); True if Redis had lost the sender."""
        return self._run_message("subscribe", sender, connected_at_ms, channel=channel)[1] == 1

    def unsubscribe(self, sender: str, connected_at_ms: int, channel: str) -> bool:
        return self._run_message("unsubscribe", sender, connected_at_ms, channel=channel)[1] == 1

    def read_shard(self, shard: int, channel: str | None = None) -> Snapshot:
        """One shard's part of an audience (a queued job's), in one command."""
        with _unavailable_on_error():
            entries = self._client.hgetall(self._audience_key(channel, shard))
        return self._snapshot(entries.items())

    def lease_posts(self, count: int) -> tuple[int, float]:
        """Take ``count`` posts (at most a second's worth) from the whole API's budget, never into debt:
        (granted, 0), or (0, seconds until they are there). The queue's workers pace themselves with it."""
        if self._limits.max_posts_per_second <= 0:
            return count, 0.0
        with _unavailable_on_error():
            _, granted, wait_ms = self._run_budget(count, "lease")
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
        with _unavailable_on_error():
            if channel is None and len(by_shard) == 1:
                ((shard, ids),) = by_shard.items()
                self._client.hdel(self._registry_key(shard), *ids)
                return
            pipeline = self._client.pipeline(transaction=False)
            for shard, ids in by_shard.items():
                pipeline.hdel(self._registry_key(shard), *ids)
                if channel is not None:
                    pipeline.hdel(self._channel_key(channel, shard), *ids)
            pipeline.execute()

    def registry_keys(self) -> list[str]:
        """Every shard's registry hash (for operators, tests and benchmarks)."""
        return [self._registry_key(shard) for shard in range(self._shards)]

    def shard_of(self, connection_id: str) -> int:
        """The shard that holds a connection, its memberships and its rate: stable for a given count."""
        return zlib.crc32(connection_id.encode()) % self._shards

    def _one_shard_publish(self, reply: list) -> Snapshot | Queued:
        if int(reply[0]) == _QUEUED:
            return Queued(sizes={0: int(reply[2])}, lost=int(reply[1]) == 1)
        return self._snapshot(zip(reply[2::2], reply[3::2], strict=True), lost=int(reply[1]) == 1)

    def _sharded_publish(self, channel: str | None, *, lost: bool) -> Snapshot | Queued:
        """The audience's size, one HLEN per shard in one pipeline; then either ``Queued``, or the post
        budget and the read of every shard that has members, in one pipeline."""
        with _unavailable_on_error():
            pipeline = self._client.pipeline(transaction=False)
            for shard in range(self._shards):
                pipeline.hlen(self._audience_key(channel, shard))
            sizes = {shard: size for shard, size in enumerate(pipeline.execute()) if size}
        cost = sum(sizes.values())  # the sender counts, echo or not: one post at most
        if self._inline_max and cost > self._inline_max:
            return Queued(sizes=sizes, lost=lost)
        with _unavailable_on_error():
            if self._limits.max_posts_per_second > 0 and cost:
                self._raise_refusal(self._run_budget(cost, "take"))
            pipeline = self._client.pipeline(transaction=False)
            for shard in sizes:
                pipeline.hgetall(self._audience_key(channel, shard))
            entries = [entry for shard_entries in pipeline.execute() for entry in shard_entries.items()]
        return self._snapshot(entries, lost=lost)

    def _run_budget(self, count: int, mode: str) -> list:
        """The post budget's script: ``take`` (an inline publish's cost) or ``lease`` (a worker's chunk)."""
        budget = self._limits.max_posts_per_second
        return self._budget(keys=[self._posts_key()], args=[int(self._clock() * 1000), budget, count, mode])

    def _run_message(
        self, mode: str, sender: str, connected_at_ms: int, *, channel: str | None = None, echo: bool = False
    ) -> list:
        if sender:
            _check(sender)
        shard = self.shard_of(sender)
        limits = self._limits
        seconds = connected_at_ms // 1000
        with _unavailable_on_error():
            reply = self._message(
                keys=[
                    self._registry_key(shard),
                    self._hash_tagged(f"rate:{sender}", shard),
                    # With shards, every key of one script is in the sender's slot: the budget is not
                    # used in this script then (mode check), so its key there is never written.
                    self._posts_key() if self._shards == 1 else self._hash_tagged("posts", shard),
                    self._connection_key(sender),
                    self._audience_key(channel, shard),
                ],
                args=[
                    sender,
                    seconds,
                    self._max_age_seconds,
                    int(self._clock() * 1000),
                    limits.publish_rate_per_second,
                    limits.publish_burst,
                    limits.max_posts_per_second,
                    mode,
                    channel or "",
                    1 if echo else 0,
                    1 if self._enforce else 0,
                    self._channels_per_connection,
                    seconds + self._max_age_seconds,
                    self._inline_max,
                ],
            )
        self._raise_refusal(reply)
        return reply

    def _snapshot(self, entries: Iterable[tuple[str, str]], *, lost: bool = False) -> Snapshot:
        cutoff = self._stale_cutoff()
        live, stale = [], []
        for connection_id, value in entries:
            (stale if _seconds(value) <= cutoff else live).append(connection_id)
        return Snapshot(live=live, stale=stale, lost=lost)

    def _raise_refusal(self, reply: list) -> None:
        """Turn a script's refusal (its first element is 1 to 4) into the exception that says why."""
        outcome = int(reply[0])
        if outcome in _REFUSALS:
            raise _REFUSALS[outcome](int(reply[1]) / 1000, first=int(reply[2]) == 1)
        if outcome == 3:
            raise ChannelForbidden(reply[1])
        if outcome == 4:
            raise TooManyChannels(f"at most {self._channels_per_connection} channels")

    def _hash_tagged(self, name: str, shard: int) -> str:
        """A key in one shard's slot; with one shard, the keys are those of an unsharded registry."""
        tag = self._prefix if self._shards == 1 else f"{self._prefix}:{shard}"
        return _hash_tagged(tag, name)

    def _registry_key(self, shard: int) -> str:
        return self._hash_tagged("connections", shard)

    def _posts_key(self) -> str:
        return _hash_tagged(self._prefix, "posts")

    def _connection_key(self, connection_id: str) -> str:
        return self._hash_tagged(f"conn:{connection_id}", self.shard_of(connection_id))

    def _channel_key(self, channel: str, shard: int) -> str:
        return self._hash_tagged(f"ch:{channel}", shard)

    def _audience_key(self, channel: str | None, shard: int) -> str:
        return self._registry_key(shard) if channel is None else self._channel_key(channel, shard)

    def _stale_cutoff(self) -> int:
        """An entry connected at or before this second has reached the maximum age."""
        return int(self._clock()) - self._max_age_seconds


def principal_key(principal: str) -> str:
    """What the registry keeps of a principal (``sub``): short, fixed-size, and the same for every token."""
    digest = hashlib.blake2b(principal.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def registry_key(prefix: str) -> str:
    """The registry hash; the braces are a hash tag, so cluster mode keeps every key on one slot."""
    return _hash_tagged(prefix, "connections")


def _hash_tagged(prefix: str, name: str) -> str:
    return f"{{{prefix}}}:{name}"


def _check(connection_id: str) -> None:
    if not isinstance(connection_id, str) or not _CONNECTION_ID.match(connection_id):
        raise InvalidConnectionId(f"not an API Gateway connection id: {connection_id!r}")


def _seconds(value: str) -> int:
    """A stored connectedAt; an unreadable one (written by hand) counts as stale, not as a crash."""
    try:
        return int(value.partition(":")[0])
    except ValueError:
        return 0


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn every Redis failure into ``RegistryUnavailable``, keeping the cause for the logs."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as error:
        raise RegistryUnavailable(f"Redis failed: {error}") from error
