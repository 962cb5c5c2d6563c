"""The connection registry: the only module that knows how connections are kept in Redis.

Data model: one hash per deployment, ``{PREFIX}:connections``, field = connection id, value = the
connection's ``connectedAt`` in whole unix seconds. The braces are a cluster hash tag. One key
means every event is a single command on a single slot:

    connect      EVALSHA register  (HSET + EXPIRE + prune a random sample of stale fields)
    disconnect   HDEL
    publish      HGETALL, then one HDEL of the gone and stale ids only when there are any

``$disconnect`` is best effort, so an entry can outlive its connection. API Gateway closes every
connection at 2 hours (``max_age_seconds``), so an entry at least that old is never a recipient;
it is removed by the next publish, by the random sampling on connect, and with the whole key when
no connection has arrived for ``max_age_seconds``. The hash therefore stays near the number of live
connections, whatever the traffic.
"""

from __future__ import annotations

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

_REGISTER_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local sample = redis.call('HRANDFIELD', KEYS[1], ARGV[5], 'WITHVALUES')
for i = 1, #sample, 2 do
  if tonumber(sample[i + 1]) <= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], sample[i])
  end
end
return 1
"""


class RegistryUnavailable(Exception):
    """Redis could not be reached or answered with an error; the registry is unchanged."""


class InvalidConnectionId(ValueError):
    """A connection id that API Gateway would never issue; refused before it reaches Redis."""


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
    return redis.Redis.from_url(
        settings.redis_url,
        health_check_interval=30,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **options,
    )


class ConnectionRegistry:
    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str,
        max_age_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._key = key
        self._max_age_seconds = max_age_seconds
        self._clock = clock
        self._register = client.register_script(_REGISTER_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> ConnectionRegistry:
        return cls(
            redis_client(settings, session),
            key=settings.registry_key,
            max_age_seconds=settings.connection_max_age_seconds,
        )

    def add(self, connection_id: str, connected_at_ms: int) -> None:
        """Register a connection; ``connected_at_ms`` is API Gateway's ``connectedAt``."""
        _check(connection_id)
        with _unavailable_on_error():
            self._register(
                keys=[self._key],
                args=[
                    connection_id,
                    connected_at_ms // 1000,
                    self._max_age_seconds,
                    self._stale_cutoff(),
                    _PRUNE_SAMPLE_SIZE,
                ],
            )

    def remove(self, connection_id: str) -> None:
        _check(connection_id)
        with _unavailable_on_error():
            self._client.hdel(self._key, connection_id)

    def snapshot(self) -> Snapshot:
        """Every registered connection, split into live recipients and stale entries to forget."""
        with _unavailable_on_error():
            entries = self._client.hgetall(self._key)
        cutoff = self._stale_cutoff()
        live, stale = [], []
        for connection_id, connected_at in entries.items():
            (stale if _seconds(connected_at) <= cutoff else live).append(connection_id)
        return Snapshot(live=live, stale=stale)

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


def _check(connection_id: str) -> None:
    if not isinstance(connection_id, str) or not _CONNECTION_ID.match(connection_id):
        raise InvalidConnectionId(f"not an API Gateway connection id: {connection_id!r}")


def _seconds(value: str) -> int:
    """A stored connectedAt; an unreadable one (written by hand) counts as stale, not as a crash."""
    try:
        return int(value)
    except ValueError:
        return 0


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn every Redis failure into ``RegistryUnavailable``, keeping the cause for the logs."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as error:
        raise RegistryUnavailable(f"Redis failed: {error}") from error
