"""Shared fixtures. AWS is never called: boto3 gets dummy credentials and a local endpoint."""

from __future__ import annotations

import io
import json
import logging
import os

import fakeredis
import pytest
import redis

from chalicelib.log import JsonFormatter, logger
from testing.aws import use_dummy_aws
from testing.management_api import ManagementApiServer
from testing.redis_server import RedisServer

# Dummy credentials, and no shared config or instance metadata: nothing can reach real AWS.
use_dummy_aws()
# The app refuses to start without an explicit AUTH_MODE; tests of authentication set jwt.
os.environ["AUTH_MODE"] = "none"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One real redis-server for the session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis_server(tmp_path) -> RedisServer:
    """A real redis-server of the test's own, which the test may stop and start again."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["fakeredis", "redis-server"])
def redis_client(request) -> redis.Redis:
    """The same test against fakeredis and a real redis-server."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(decode_responses=True)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def management_api() -> ManagementApiServer:
    with ManagementApiServer(stage="api") as server:
        yield server


@pytest.fixture
def json_log():
    """The JSON lines the service logs, as Lambda would ship them to CloudWatch."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
