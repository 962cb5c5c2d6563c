"""The Redis client one container keeps: timeouts, retry with backoff, the pool's policy, and the one
translation of every Redis failure into ``RegistryUnavailable``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from chalicelib.redis_auth import credential_provider
from chalicelib.registry.outcomes import RegistryUnavailable
from chalicelib.settings import Settings

# Redis connections one container may hold; more concurrent callers wait (up to the socket timeout)
# instead of failing. Lambda runs one invocation per container; the local gateway runs many at once.
_POOL_SIZE = 64


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


@contextmanager
def unavailable_on_error() -> Iterator[None]:
    """Turn every Redis failure into ``RegistryUnavailable``, keeping the cause for the logs."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as error:
        raise RegistryUnavailable(f"Redis failed: {error}") from error
