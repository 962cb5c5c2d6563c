"""A Redis outage fails cleanly and the same process recovers once Redis is back."""

import pytest

from chalicelib import envelope
from testing.redis_server import RedisServer
from tests.support.gateway_driver import GatewayDriver, app_on


@pytest.fixture
def durable_redis(tmp_path) -> RedisServer:
    """A server that keeps its data across a restart, as an ElastiCache replica does across a failover."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway(monkeypatch, durable_redis, management_api):
    for app in app_on(monkeypatch, durable_redis.url, management_api, REDIS_SOCKET_TIMEOUT_SECONDS="0.5"):
        yield GatewayDriver(app, management_api)


def test_an_outage_fails_cleanly_and_the_same_process_recovers(
    gateway, management_api, durable_redis, json_log
):
    # GIVEN two registered clients
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()

    # WHEN Redis goes down
    durable_redis.stop()

    # THEN a new connection is refused (non-2xx), so the client never joins a broken registry
    carol, response = gateway.connect()
    assert response["statusCode"] == 503
    (failure,) = [line for line in json_log() if line["connection_id"] == carol.connection_id]
    assert failure["level"] == "ERROR"
    assert failure["message"] == "connect failed: registry unavailable"
    assert failure["exception_name"] == "RegistryUnavailable"
    # AND a publish tells its sender why, once, and delivers nothing
    assert gateway.send(alice, {"type": 1, "data": "lost?"}) == {"statusCode": 503}
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == envelope.REGISTRY_UNAVAILABLE
    assert management_api.received(bob.connection_id) == []
    # AND a disconnect fails without raising
    assert gateway.disconnect(bob)["statusCode"] == 503

    # WHEN Redis is back
    durable_redis.start()

    # THEN everything works again, in the same process, with the registry as it was
    carol, response = gateway.connect()
    assert response == {"statusCode": 200}
    assert gateway.send(alice, {"type": 2, "data": "back"}) == {"statusCode": 200}
    assert management_api.wait_for(carol.connection_id, 1)[0]["data"] == "back"
