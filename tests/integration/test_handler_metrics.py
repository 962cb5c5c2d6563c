"""Each invocation of the real handlers writes one CloudWatch EMF document on stdout, which is what
Lambda ships to the function's log group and CloudWatch turns into the dashboard's metrics: events
shaped as API Gateway sends them, a real redis-server, a real HTTP Management API.
"""

from __future__ import annotations

import socket
from urllib.parse import urlencode

import pytest

from chalicelib import metrics
from testing.identity_provider import secret_token
from tests.support.emf import emf_documents
from tests.support.gateway_driver import (
    CONNECT_FUNCTION,
    DISCONNECT_FUNCTION,
    MESSAGE_FUNCTION,
    GatewayDriver,
    app_on,
)


def invocation_document(capsys) -> dict:
    """The one EMF document the invocations since the last call wrote (failing if not exactly one)."""
    (document,) = emf_documents(capsys.readouterr().out)
    return document


def test_connect_publish_and_disconnect_each_write_one_document_of_their_own(gateway, management_api, capsys):
    # GIVEN three connections
    alice, bob, carol = (gateway.connect()[0] for _ in range(3))
    connected = emf_documents(capsys.readouterr().out)
    assert [(d["FunctionName"], d["Connected"]) for d in connected] == [(CONNECT_FUNCTION, 1)] * 3
    # WHEN alice publishes to the other two
    assert gateway.send(alice, {"type": 1}) == {"statusCode": 200}
    management_api.wait_for(bob.connection_id, 1)
    management_api.wait_for(carol.connection_id, 1)
    # THEN the message function says so: one publish, delivered to both, nobody gone or failed
    published = invocation_document(capsys)
    assert published["FunctionName"] == MESSAGE_FUNCTION
    assert {name: published[name] for name in ("Published", "Recipients", "Delivered", "Gone", "Failed")} == {
        "Published": 1,
        "Recipients": 2,
        "Delivered": 2,
        "Gone": 0,
        "Failed": 0,
    }
    assert published["FanoutDuration"] >= 0
    (directive,) = published["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == metrics.NAMESPACE_DEFAULT
    assert directive["Dimensions"] == [["FunctionName"]]
    # WHEN carol leaves THEN the disconnect function counts it
    gateway.disconnect(carol)
    left = invocation_document(capsys)
    assert (left["FunctionName"], left["Disconnected"]) == (DISCONNECT_FUNCTION, 1)


def test_a_recipient_that_left_is_counted_gone(gateway, management_api, capsys):
    alice, bob = gateway.connect()[0], gateway.connect()[0]
    management_api.close(bob.connection_id)  # gone without its $disconnect
    capsys.readouterr()
    gateway.send(alice, {"type": 1})
    document = invocation_document(capsys)
    assert (document["Recipients"], document["Delivered"], document["Gone"]) == (1, 0, 1)


def test_the_namespace_is_the_stages_setting(monkeypatch, gateway, capsys):
    monkeypatch.setenv("METRICS_NAMESPACE", "Chat/Staging")
    gateway.connect()
    (directive,) = invocation_document(capsys)["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Chat/Staging"


@pytest.mark.parametrize(
    ("headers", "query", "status", "reason"),
    [
        ({}, {}, 401, metrics.NO_TOKEN),
        ({"Authorization": "Bearer " + secret_token(secret="x" * 32)}, {}, 401, metrics.BAD_TOKEN),
        ({"Authorization": "Bearer " + secret_token(exp=1)}, {}, 401, metrics.BAD_TOKEN),
        ({"Authorization": "Bearer " + secret_token(), "Origin": "https://evil.example"}, {}, 403, metrics.ORIGIN),
        ({"Authorization": "Bearer " + secret_token()}, {"channels": "room-1"}, 403, metrics.CHANNEL_FORBIDDEN),
        ({"Authorization": "Bearer " + secret_token()}, {"channels": "no spaces"}, 400, metrics.BAD_REQUEST),
    ],
)  # fmt: skip
def test_a_refused_handshake_is_counted_with_its_reason(
    jwt_stage, gateway, capsys, headers, query, status, reason
):
    _, response = gateway.connect(headers=headers, query_string=urlencode(query))
    assert response["statusCode"] == status
    document = invocation_document(capsys)
    assert (document["FunctionName"], document["Reason"], document["ConnectRefused"]) == (
        CONNECT_FUNCTION,
        reason,
        1,
    )
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["FunctionName", "Reason"]]
    assert "Connected" not in document


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_handshake_refused_because_redis_is_down_says_redis_down(monkeypatch, management_api, capsys):
    # GIVEN a stage whose Redis refuses every connection
    for app in app_on(
        monkeypatch,
        f"redis://127.0.0.1:{_closed_port()}/0",
        management_api,
        REDIS_SOCKET_TIMEOUT_SECONDS="0.5",
    ):
        _, response = GatewayDriver(app, management_api).connect()
        assert response["statusCode"] == 503
        document = invocation_document(capsys)
        assert (document["Reason"], document["ConnectRefused"]) == (metrics.REDIS_DOWN, 1)


def test_a_flood_is_counted_rate_limited_once_a_message(monkeypatch, gateway, capsys):
    monkeypatch.setenv("PUBLISH_RATE_PER_SECOND", "0.01")
    monkeypatch.setenv("PUBLISH_BURST", "2")
    alice, _ = gateway.connect()
    gateway.connect()
    capsys.readouterr()
    statuses = [gateway.send(alice, {"type": n})["statusCode"] for n in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    documents = emf_documents(capsys.readouterr().out)
    assert [d.get("Published", 0) for d in documents] == [1, 1, 0, 0, 0]
    assert [d.get("RateLimited", 0) for d in documents] == [0, 0, 1, 1, 1]
    assert all(d["FunctionName"] == MESSAGE_FUNCTION for d in documents)


def test_a_publish_over_the_post_budget_is_counted_over_capacity(monkeypatch, gateway, capsys):
    monkeypatch.setenv("MAX_POSTS_PER_SECOND", "2")
    alice, _ = gateway.connect()
    for _ in range(4):
        gateway.connect()
    capsys.readouterr()
    assert gateway.send(alice, {"type": 1}) == {"statusCode": 200}
    assert gateway.send(alice, {"type": 2}) == {"statusCode": 503}
    first, second = emf_documents(capsys.readouterr().out)
    assert (first["Delivered"], first.get("OverCapacity")) == (4, None)
    assert (second["OverCapacity"], second.get("Published")) == (1, None)


def test_a_ping_records_nothing_and_writes_no_document(gateway, capsys):
    alice, _ = gateway.connect()
    capsys.readouterr()
    gateway.send(alice, {"action": "ping"})
    assert emf_documents(capsys.readouterr().out) == []


def test_a_recovery_counts_the_messages_it_replayed(gateway, management_api, capsys):
    publisher, _ = gateway.connect()
    watcher, _ = gateway.connect(query_string="channels=room-1")
    for n in range(3):
        gateway.send(publisher, {"type": n, "channel": "room-1"})
    first = management_api.wait_for(watcher.connection_id, 3)[0]
    back, _ = gateway.connect()
    capsys.readouterr()
    since = {"offset": first["offset"], "epoch": first["epoch"]}
    gateway.send(back, {"action": "subscribe", "channel": "room-1", "since": since})
    assert invocation_document(capsys)["Replayed"] == 2
