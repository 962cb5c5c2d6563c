"""The connection registry: the only module that knows how connections are kept in Redis.

Data model, all keys under one cluster hash tag ``{PREFIX}`` (one slot, so one script sees them all):

    {PREFIX}:connections   hash: connection id -> "connectedAt" or "connectedAt:principal key"
    {PREFIX}:rate:<id>     hash: the sender's token bucket (tokens, at); expires once full again
    {PREFIX}:posts         hash: the whole API's post budget (tokens, at)

Every event is a single round trip:

    connect      EVALSHA register  (HSET + EXPIRE + prune a random sample of stale fields)
    disconnect   HDEL
    publish      EVALSHA publish   (re-assert the sender, take from its bucket and from the post
                                    budget, HGETALL; or refuse and read nothing)
    ping         EVALSHA publish   (re-assert the sender, take from its bucket; no read)
    afterwards   one HDEL of the gone and stale ids, only when there are any

``$disconnect`` is best effort, so an entry can outlive its connection. API Gateway closes every
connection at 2 hours (``max_age_seconds``), so an entry at least that old is never a recipient;
it is removed by the next publish, by the random sampling on connect, and with the whole key when
no connection has arrived for ``max_age_seconds``. The hash therefore stays near the number of live
connections, whatever the traffic.

The principal key is an 8-byte BLAKE2b digest of the token's ``sub`` (11 characters): a Cognito
``sub`` is a 36-character UUID, which would make an entry 1.7 times a bare set's; the digest keeps it
at 1.3 and still names the user for anything that acts per user (compute it from a ``sub``).

Redis can lose its data (a cache node replaced without a replica, a failover that drops the last
writes). Every message and ping a connection sends re-registers it if it is missing (HSETNX: an
existing entry, and its principal, are left alone), so a live connection is back in the registry
within one keepalive period; one that re-registers this way has lost its principal.

Both buckets grant when they hold ``min(cost, capacity)`` tokens and then take the whole cost: a
publish to more recipients than the budget's one-second capacity still goes out, and leaves a debt
that later publishes wait for, so the average stays at ``MAX_POSTS_PER_SECOND``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from chalicelib.redis_auth import credential_provider
from chalicelib.settings import Settings

# API Gateway ids are 16 characters of base64 ("ZJ8cWdV9iYcCIkg="); allow any plain token.
_CONNECTION_ID = re.compile(r"^[A-Za-z0-9+/=_-]{1,128}$")
# Fields examined for staleness on every connect: enough to keep stale entries a minority.
_PRUNE_SAMPLE_SIZE = 3
# Redis connections one container may hold; more concurrent callers wait (up to the socket timeout)
# instead of failing. Lambda runs one invocation per container; the local gateway runs many at once.
_POOL_SIZE = 64

_REGISTER_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local sample = redis.call('HRANDFIELD', KEYS[1], ARGV[5], 'WITHVALUES')
for i = 1, #sample, 2 do
  if tonumber(string.match(sample[i + 1], '^%d+')) <= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], sample[i])
  end
end
return 1
"""

# KEYS: registry, sender's bucket, post budget.
# ARGV: sender, connectedAt (s), max age (s), now (ms), rate/s, burst, posts/s, recipients left out
#       of the registry's size (1 without echo), read the registry (1) or only touch (0).
# Returns {0, entries...} when granted; {1, wait ms, first} when the sender is over its rate and
# {2, wait ms, first} when the post budget cannot cover the publish, where first is 1 for the first
# refusal since the sender's last granted message (only that one is answered: a flood of refused
# messages must not become a flood of error replies).
_PUBLISH_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local now = tonumber(ARGV[4])
local function level(key, rate, capacity)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or at == nil then return capacity end
  return math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
end
local function refuse(kind, tokens, need, rate)
  local wait = math.ceil((need - tokens) * 1000 / rate)
  local first = redis.call('HSETNX', KEYS[2], 'told', 1)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], wait + 1000) end
  return {kind, wait, first}
end
local rate, burst, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local sender_tokens, posts_tokens, cost
if rate > 0 then
  sender_tokens = level(KEYS[2], rate, burst)
  if sender_tokens < 1 then return refuse(1, sender_tokens, 1, rate) end
end
local read = ARGV[9] == '1'
if read and budget > 0 then
  cost = math.max(0, redis.call('HLEN', KEYS[1]) - tonumber(ARGV[8]))
  posts_tokens = level(KEYS[3], budget, budget)
  local need = math.min(cost, budget)
  if posts_tokens < need then return refuse(2, posts_tokens, need, budget) end
end
redis.call('HDEL', KEYS[2], 'told')
if rate > 0 then
  redis.call('HSET', KEYS[2], 'tokens', sender_tokens - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
if posts_tokens then
  redis.call('HSET', KEYS[3], 'tokens', posts_tokens - cost, 'at', now)
  redis.call('PEXPIRE', KEYS[3], math.ceil(math.max(cost, budget) * 1000 / budget) + 1000)
end
if not read then return {0} end
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, 0)
return reply
"""


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


_REFUSALS = {1: RateLimited, 2: OverCapacity}


@dataclass(frozen=True)
class Limits:
    """Per-connection token bucket and the whole API's post budget; 0 switches one off."""

    publish_rate_per_second: float = 0
    publish_burst: int = 1
    max_posts_per_second: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The registry as one publish sees it."""

    live: list[str]
    stale: list[str]


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
    # timeout) rather than fail with "Too many connections".
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=_POOL_SIZE,
        timeout=settings.redis_socket_timeout_seconds,
        health_check_interval=30,
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._key = registry_key(prefix)
        self._max_age_seconds = max_age_seconds
        self._limits = limits
        self._clock = clock
        self._register = client.register_script(_REGISTER_SCRIPT)
        self._publish = client.register_script(_PUBLISH_SCRIPT)

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
        )

    def add(self, connection_id: str, connected_at_ms: int, principal: str | None = None) -> None:
        """Register a connection; ``connected_at_ms`` is API Gateway's ``connectedAt``."""
        _check(connection_id)
        seconds = connected_at_ms // 1000
        value = f"{seconds}:{principal_key(principal)}" if principal else str(seconds)
        with _unavailable_on_error():
            self._register(
                keys=[self._key],
                args=[
                    connection_id,
                    value,
                    self._max_age_seconds,
                    self._stale_cutoff(),
                    _PRUNE_SAMPLE_SIZE,
                ],
            )

    def remove(self, connection_id: str) -> None:
        _check(connection_id)
        with _unavailable_on_error():
            self._client.hdel(self._key, connection_id)

    def begin_publish(self, sender: str, connected_at_ms: int, *, include_sender: bool) -> Snapshot:
        """One round trip: re-register the sender, apply both limits, read every registered connection.

        Raise ``RateLimited`` or ``OverCapacity`` (nothing read, nothing taken) when a limit refuses.
        """
        reply = self._run_publish_script(
            sender, connected_at_ms, left_out=0 if include_sender else 1, read=True
        )
        cutoff = self._stale_cutoff()
        live, stale = [], []
        for index in range(1, len(reply), 2):
            (stale if _seconds(reply[index + 1]) <= cutoff else live).append(reply[index])
        return Snapshot(live=live, stale=stale)

    def touch(self, sender: str, connected_at_ms: int) -> None:
        """A keepalive: re-register the sender if Redis lost it, counting against its rate."""
        self._run_publish_script(sender, connected_at_ms, left_out=0, read=False)

    def _run_publish_script(self, sender: str, connected_at_ms: int, *, left_out: int, read: bool) -> list:
        _check(sender)
        limits = self._limits
        with _unavailable_on_error():
            reply = self._publish(
                keys=[self._key, f"{{{self._prefix}}}:rate:{sender}", f"{{{self._prefix}}}:posts"],
                args=[
                    sender,
                    connected_at_ms // 1000,
                    self._max_age_seconds,
                    int(self._clock() * 1000),
                    limits.publish_rate_per_second,
                    limits.publish_burst,
                    limits.max_posts_per_second,
                    left_out,
                    1 if read else 0,
                ],
            )
        outcome = int(reply[0])
        if outcome in _REFUSALS:
            raise _REFUSALS[outcome](int(reply[1]) / 1000, first=int(reply[2]) == 1)
        return reply

    def forget(self, connection_ids: Iterable[str]) -> None:
        """Remove connections that are gone or stale, in one command; nothing to do costs nothing."""
        ids = list(connection_ids)
        if not ids:
            return
        with _unavailable_on_error():
            self._client.hdel(self._key, *ids)

    def _stale_cutoff(self) -> int:
        """An entry connected at or before this second has reached the maximum age."""
        return int(self._clock()) - self._max_age_seconds


def principal_key(principal: str) -> str:
    """What the registry keeps of a principal (``sub``): short, fixed-size, and the same for every token."""
    digest = hashlib.blake2b(principal.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def registry_key(prefix: str) -> str:
    """The registry hash; the braces are a hash tag, so cluster mode keeps every key on one slot."""
    return "{" + prefix + "}:connections"


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
