"""A primary failover as ElastiCache Multi-AZ does it: the primary dies, its replica is promoted and the
primary endpoint's DNS name moves to it (here: a TCP proxy that switches), existing connections cut.

The same app process goes on: during the outage each client is told ``registry_unavailable`` once;
once the replica is promoted, a publish reaches every live client exactly once, new clients are
admitted and nothing registered before is lost.
"""

from __future__ import annotations

import time

import pytest

from chalicelib import envelope
from testing.redis_server import RedisServer, start_replica, wait_until_replicated
from testing.tcp_proxy import TcpProxy
from tests.support.gateway_driver import GatewayDriver, app_on

# The promise: within this long after the promotion, publishing works again for everyone.
RECOVERY_SECONDS = 15


@pytest.fixture
def primary(tmp_path) -> RedisServer:
    server = RedisServer(tmp_path / "primary")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replica(tmp_path, primary) -> RedisServer:
    server = start_replica(primary, tmp_path / "replica")
    yield server
    server.stop()


@pytest.fixture
def endpoint(primary) -> TcpProxy:
    """The replication group's primary endpoint: a name that points at the primary until a failover."""
    with TcpProxy(("127.0.0.1", primary.port)) as proxy:
        yield proxy


@pytest.fixture
def gateway(monkeypatch, endpoint, management_api):
    for app in app_on(monkeypatch, endpoint.url(), management_api):
        yield GatewayDriver(app, management_api)


def fail_over(primary: RedisServer, replica: RedisServer, endpoint: TcpProxy) -> None:
    """The replica becomes the primary and the endpoint points at it; every old connection is cut."""
    with replica.admin() as client:
        client.execute_command("REPLICAOF", "NO", "ONE")
    endpoint.switch(("127.0.0.1", replica.port))
    endpoint.cut_all()


def test_after_a_primary_failover_a_publish_reaches_everyone_exactly_once(
    gateway, management_api, primary, replica, endpoint, json_log
):
    # GIVEN clients registered through the primary endpoint, one of them in a channel
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    dave, response = gateway.connect(query_string="channels=room-1")
    assert response == {"statusCode": 200}
    assert gateway.send(alice, {"type": 1, "data": "before"}) == {"statusCode": 200}
    # AND the replica has every write (as ElastiCache's replication normally has, give or take)
    wait_until_replicated(primary)

    # WHEN the primary dies
    primary.kill()

    # THEN meanwhile a publish is refused with one clear error to its sender, and delivers nothing
    assert gateway.send(alice, {"type": 1, "data": "lost?"}) == {"statusCode": 503}
    (refusal,) = management_api.wait_for(alice.connection_id, 1)
    assert refusal["error"]["code"] == envelope.REGISTRY_UNAVAILABLE
    # AND a new client is refused at its handshake with 503, so it never joins a broken registry
    assert gateway.connect()[1]["statusCode"] == 503

    # WHEN the replica is promoted and the endpoint moves to it
    fail_over(primary, replica, endpoint)
    promoted = time.monotonic()

    # THEN, within the promise, a publish reaches every client registered before the failover
    assert gateway.send(alice, {"type": 2, "data": "after", "echo": True}) == {"statusCode": 200}
    # AND a channel's membership survived
    assert gateway.send(bob, {"type": 3, "channel": "room-1", "data": "room"}) == {"statusCode": 200}
    # AND a new client is admitted and reached
    erin, response = gateway.connect()
    assert response == {"statusCode": 200}
    assert gateway.send(erin, {"type": 4, "data": "new", "echo": True}) == {"statusCode": 200}
    assert time.monotonic() - promoted < RECOVERY_SECONDS

    # AND each got each message exactly once (every post was answered before its handler returned)
    assert gateway.received(alice) == [envelope.REGISTRY_UNAVAILABLE, "after", "new"]
    assert gateway.received(bob) == ["before", "after", "new"]
    assert gateway.received(dave) == ["before", "after", "room", "new"]
    assert gateway.received(erin) == ["new"]
    # AND what the service logged is its own lines, with the refusals named
    failures = [line for line in json_log() if line["level"] == "ERROR"]
    assert {line["exception_name"] for line in failures} == {"RegistryUnavailable"}
