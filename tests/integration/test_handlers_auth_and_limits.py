"""The handlers with authentication and limits on: events shaped as API Gateway sends them, a real
redis-server, a real HTTP Management API. What a client sees: the handshake's status and subprotocol,
one error reply per refusal, a pong, and a registry that heals after Redis loses its data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from chalicelib import envelope
from chalicelib.registry import principal_key, registry_key
from testing.identity_provider import AUDIENCE, ISSUER, SECRET, secret_token
from tests.support.gateway_driver import GatewayDriver, app_on


def connect_with(gateway: GatewayDriver, headers: dict | None = None, query: dict | None = None):
    return gateway.connect(headers=headers, query_string=urlencode(query or {}))


def test_a_valid_token_lets_a_browser_in_with_the_subprotocol_selected(jwt_stage, gateway):
    token = secret_token(sub="alice")
    _, response = connect_with(gateway, {"Sec-WebSocket-Protocol": f"wsbroadcast, bearer.{token}"})
    assert response == {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "wsbroadcast"}}


def test_a_token_in_the_authorization_header_or_the_query_string_is_accepted(jwt_stage, gateway):
    _, by_header = connect_with(gateway, {"Authorization": f"Bearer {secret_token()}"})
    _, by_query = connect_with(gateway, query={"token": secret_token()})
    assert by_header == by_query == {"statusCode": 200}


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({}, 401, "token is required"),
        ({"Authorization": "Bearer " + secret_token(secret="x" * 32)}, 401, "Signature verification failed"),
        ({"Authorization": "Bearer " + secret_token(exp=1)}, 401, "expired"),
        ({"Authorization": "Bearer " + secret_token(), "Origin": "https://evil.example"}, 403, "origin"),
    ],
)
def test_a_refused_handshake_has_its_status_a_reason_and_a_log_line_without_the_token(
    jwt_stage, gateway, json_log, headers, status, words
):
    connection, response = connect_with(gateway, headers)
    assert response["statusCode"] == status
    assert words in response["body"]
    (line,) = [line for line in json_log() if line["connection_id"] == connection.connection_id]
    assert line["message"] == "connect refused"
    assert line["status"] == status
    token = headers.get("Authorization", "Bearer none").split()[1]
    assert token not in str(line), "a token must never be logged"
    # AND a refused client never joins: a publish reaches nobody new
    assert gateway.management_api.posts == 0


def test_the_principal_is_kept_with_the_connection(jwt_stage, gateway, redis_server):
    connection, _ = connect_with(gateway, {"Authorization": f"Bearer {secret_token(sub='alice')}"})
    stored = redis.Redis.from_url(redis_server.url, decode_responses=True).hget(
        registry_key(os.environ["REDIS_KEY_PREFIX"]), connection.connection_id
    )
    assert stored.endswith(":" + principal_key("alice"))


def test_a_sender_over_its_rate_gets_one_error_saying_when_to_send_again(
    monkeypatch, gateway, management_api
):
    monkeypatch.setenv("PUBLISH_RATE_PER_SECOND", "0.01")
    monkeypatch.setenv("PUBLISH_BURST", "2")
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    assert gateway.send(alice, {"type": 1}) == {"statusCode": 200}
    assert gateway.send(alice, {"type": 2}) == {"statusCode": 200}
    # WHEN alice keeps sending past her burst
    for n in range(3, 6):
        assert gateway.send(alice, {"type": n}) == {"statusCode": 429}
    # THEN she got exactly one error, with when she may send again; bob got only the first two
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == envelope.RATE_LIMITED
    assert 0 < reply["error"]["retryAfterMs"] <= 100_000
    assert [message["type"] for message in management_api.wait_for(bob.connection_id, 2)] == [1, 2]
    assert management_api.posts == 3


def test_a_publish_the_post_budget_cannot_cover_is_refused_with_over_capacity(
    monkeypatch, gateway, management_api
):
    monkeypatch.setenv("MAX_POSTS_PER_SECOND", "2")
    alice, _ = gateway.connect()
    for _ in range(4):
        gateway.connect()
    # 4 recipients: the first publish empties the bucket into debt, the next one waits for it
    assert gateway.send(alice, {"type": 1}) == {"statusCode": 200}
    assert gateway.send(alice, {"type": 2}) == {"statusCode": 503}
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == envelope.OVER_CAPACITY
    assert reply["error"]["retryAfterMs"] > 0


def test_a_ping_is_answered_to_its_sender_alone(gateway, management_api):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    response = gateway.send(alice, {"action": "ping"}, request_time_ms=1_795_654_176_002)
    assert response == {"statusCode": 200}
    assert management_api.wait_for(alice.connection_id, 1) == [{"action": "pong", "received": 1_795_654_176}]
    assert management_api.received(bob.connection_id) == []


@pytest.fixture
def volatile_gateway(monkeypatch, private_redis_server, management_api):
    """The app on a redis-server that loses everything when restarted (no persistence, no replica)."""
    for app in app_on(
        monkeypatch, private_redis_server.url, management_api, REDIS_SOCKET_TIMEOUT_SECONDS="0.5"
    ):
        yield GatewayDriver(app, management_api)


def test_after_redis_loses_its_data_a_silent_listener_heals_with_its_keepalive(
    volatile_gateway, management_api, private_redis_server
):
    gateway = volatile_gateway
    # GIVEN a sender and a listener that never sends anything but keepalives
    sender, _ = gateway.connect()
    listener, _ = gateway.connect()
    # WHEN Redis restarts empty
    private_redis_server.stop()
    private_redis_server.start()
    # THEN the sender's own publish puts the sender back, but nobody else is known yet
    assert gateway.send(sender, {"type": 1, "echo": True}) == {"statusCode": 200}
    assert management_api.wait_for(sender.connection_id, 1)[0]["type"] == 1
    assert management_api.received(listener.connection_id) == []
    # WHEN the listener sends its keepalive THEN the next publish reaches it
    gateway.send(listener, {"action": "ping"})
    management_api.wait_for(listener.connection_id, 1)
    gateway.send(sender, {"type": 2})
    assert management_api.wait_for(listener.connection_id, 2)[1]["type"] == 2


def test_a_mass_disconnect_leaves_the_registry_exact(gateway, redis_server):
    # GIVEN 300 connections, and more handlers at once than the container's Redis pool holds (as the
    # local gateway runs them: Lambda runs one per container)
    connections = [gateway.connect()[0] for _ in range(300)]
    key = registry_key(os.environ["REDIS_KEY_PREFIX"])
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert client.hlen(key) == 300
    # WHEN they all disconnect at once, 128 handlers in flight, while Redis holds writes for a moment
    # (so that every handler holds its Redis connection at the same time)
    client.execute_command("CLIENT", "PAUSE", 500, "WRITE")
    with ThreadPoolExecutor(max_workers=128) as pool:
        statuses = list(pool.map(lambda c: gateway.disconnect(c)["statusCode"], connections))
    # THEN every $disconnect succeeded (callers waited for a free connection) and nothing is left
    assert statuses == [200] * 300
    assert client.hlen(key) == 0


def test_only_a_token_check_imports_token_verification(redis_server):
    # The message and disconnect functions' cold starts must not pay for token verification.
    script = """
import sys
import app
app.broadcaster()
before = {"jwt", "cryptography.x509", "chalicelib.tokens"} & set(sys.modules)
assert not before, f"imported before any token: {before}"
from testing.apigw import Connection
from testing.lambda_context import LambdaContext
from testing.identity_provider import AUDIENCE, ISSUER, SECRET, secret_token
event = Connection().connect_event(headers=[("Authorization", "Bearer " + secret_token())])
assert app.connect(event, LambdaContext())["statusCode"] == 200
assert "chalicelib.tokens" in sys.modules
"""
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
    }
    subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        timeout=60,
    )
