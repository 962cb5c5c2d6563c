"""The three handlers end to end: real redis-server, real boto3 client, real HTTP Management API."""

import json
import os

import pytest
import redis

from chalicelib import envelope
from chalicelib.management_api import endpoint_url
from chalicelib.registry import registry_key
from chalicelib.settings import Settings, SettingsError
from testing.apigw import Connection, now_ms
from testing.lambda_context import LambdaContext

REFERENCE_MESSAGE = '{ "echo": false, "type": 99, "data": "data to publish" }'


def test_a_message_reaches_every_other_connection_but_not_its_sender(gateway, management_api):
    # GIVEN three connected clients
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    carol, _ = gateway.connect()
    # WHEN alice sends the reference sample's message
    response = gateway.send(alice, REFERENCE_MESSAGE, request_time_ms=1_795_654_176_002)
    # THEN bob and carol get it, stamped with the time API Gateway received it, and alice does not
    assert response == {"statusCode": 200}
    expected = {"type": 99, "data": "data to publish", "received": 1_795_654_176}
    (to_bob,) = management_api.wait_for(bob.connection_id, 1)
    # AND, history being on, its position in the stream of messages to everyone
    assert to_bob == {**expected, "offset": 1, "epoch": to_bob["epoch"]}
    assert management_api.wait_for(carol.connection_id, 1) == [to_bob]
    assert management_api.received(alice.connection_id) == []


def test_echo_true_delivers_to_the_sender_too(gateway, management_api):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    gateway.send(alice, {"echo": True, "type": 7, "data": {"nested": [1, 2.5, None, "é"]}})
    for connection in (alice, bob):
        (message,) = management_api.wait_for(connection.connection_id, 1)
        assert message["type"] == 7
        assert message["data"] == {"nested": [1, 2.5, None, "é"]}


def test_connect_registers_without_posting_and_disconnect_unregisters(gateway, management_api):
    alice, response = gateway.connect()
    assert response == {"statusCode": 200}
    bob, _ = gateway.connect()
    assert management_api.posts == 0, "nothing may be posted to a connection during $connect"
    assert gateway.disconnect(bob) == {"statusCode": 200}
    gateway.send(alice, {"echo": True, "type": 1})
    management_api.wait_for(alice.connection_id, 1)
    assert management_api.posts == 1, "bob left: only alice's echo was posted"


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ("{not json", envelope.INVALID_JSON, 400),
        ("[]", envelope.NOT_AN_OBJECT, 400),
        ('{"data": 1}', envelope.MISSING_TYPE, 400),
        ('{"type": true}', envelope.INVALID_TYPE, 400),
        ('{"type": 1, "echo": "no"}', envelope.INVALID_ECHO, 400),
        (json.dumps({"type": 1, "data": "x" * 131_072}), envelope.MESSAGE_TOO_LARGE, 413),
    ],
)
def test_a_bad_message_gets_one_error_reply_and_is_not_published(gateway, management_api, body, code, status):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    # WHEN alice sends a bad message
    response = gateway.send(alice, body)
    # THEN she alone gets exactly one error reply naming the problem, and bob gets nothing
    assert response == {"statusCode": status}
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]
    assert management_api.received(bob.connection_id) == []
    assert management_api.posts == 1


def test_gone_connections_are_forgotten_after_delivery(gateway, management_api, redis_server):
    # GIVEN bob's connection closed without a $disconnect reaching us (past its handshake window)
    alice, _ = gateway.connect()
    bob, _ = gateway.connect(Connection(connected_at_ms=now_ms() - 60_000))
    carol, _ = gateway.connect()
    management_api.close(bob.connection_id)
    # WHEN alice publishes THEN carol still gets it, and bob is removed from the registry
    gateway.send(alice, {"type": 1})
    management_api.wait_for(carol.connection_id, 1)
    key = registry_key(os.environ["REDIS_KEY_PREFIX"])
    assert set(redis.Redis.from_url(redis_server.url, decode_responses=True).hkeys(key)) == {
        alice.connection_id,
        carol.connection_id,
    }
    # AND the next publish does not post to bob again
    posts_before = management_api.posts
    gateway.send(alice, {"type": 2})
    management_api.wait_for(carol.connection_id, 2)
    assert management_api.posts == posts_before + 1


def test_a_throttled_recipient_still_gets_the_message(gateway, management_api):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    management_api.throttle(bob.connection_id, times=2)
    gateway.send(alice, {"type": 5, "data": "after two 429s"})
    assert management_api.wait_for(bob.connection_id, 1)[0]["data"] == "after two 429s"


def test_one_log_line_per_publish_with_counts_and_ids_on_every_line(gateway, management_api, json_log):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    gone, _ = gateway.connect()
    management_api.close(gone.connection_id)
    gateway.send(alice, {"type": 1})
    management_api.wait_for(bob.connection_id, 1)
    lines = [line for line in json_log() if line["route"] == "$default"]
    assert lines, "the publish logged nothing"
    assert all(line["connection_id"] == alice.connection_id and line["request_id"] for line in lines)
    (summary,) = [line for line in lines if line["message"] == "published"]
    assert summary["recipients"] == 2
    assert summary["delivered"] == 1
    assert summary["gone"] == 1
    assert summary["failed"] == 0
    assert summary["elapsed_ms"] >= 0


def test_a_missing_setting_fails_the_invocation_naming_the_variable(app_module, monkeypatch):
    monkeypatch.delenv("REDIS_URL")
    app_module.configured.cache_clear()
    with pytest.raises(SettingsError, match="REDIS_URL"):
        app_module.connect(Connection().connect_event(), LambdaContext())


def test_the_endpoint_is_derived_from_the_event_as_chalice_does():
    settings = Settings.from_env({"REDIS_URL": "redis://h", "AWS_REGION": "eu-west-1", "AUTH_MODE": "none"})
    assert (
        endpoint_url(settings, "a1b2c3d4e5", "api")
        == "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/api"
    )
    china = Settings.from_env({"REDIS_URL": "redis://h", "AWS_REGION": "cn-north-1", "AUTH_MODE": "none"})
    assert endpoint_url(china, "a1b2c3d4e5", "v1").endswith(".execute-api.cn-north-1.amazonaws.com.cn/v1")
