"""Channels through the handlers: events as API Gateway sends them, a real redis-server, a real HTTP
Management API. What subscribers, non-subscribers and senders each receive.
"""

from __future__ import annotations

import json
import os

import pytest
import redis
from chalice.test import Client

from chalicelib import envelope
from chalicelib.registry import registry_key
from testing.identity_provider import secret_token

# Chalice's test client says, for every request, that it lets IAM routes through (API Gateway checks them).
pytestmark = pytest.mark.filterwarnings("ignore:IAMAuthorizer is not a supported in local mode")


def test_the_reference_message_without_a_channel_still_reaches_everyone(gateway, management_api):
    alice, _ = gateway.connect()
    member, _ = gateway.connect(query_string="channels=room-1")
    gateway.send(alice, {"echo": False, "type": 99, "data": "to all"})
    (message,) = management_api.wait_for(member.connection_id, 1)
    # the reference's fields, and the position in the stream of messages to everyone (history is on)
    assert message == {
        "type": 99,
        "data": "to all",
        "received": message["received"],
        "offset": 1,
        "epoch": message["epoch"],
    }


def test_a_channel_publish_reaches_its_members_only(gateway, management_api):
    # GIVEN bob and carol in room-1 (one at connect, one by subscribing) and dave elsewhere
    alice, _ = gateway.connect()
    bob, _ = gateway.connect(query_string="channels=room-1,room-2")
    carol, _ = gateway.connect()
    dave, _ = gateway.connect(query_string="channels=room-2")
    assert gateway.send(carol, {"action": "subscribe", "channel": "room-1"}) == {"statusCode": 200}
    (ack,) = management_api.wait_for(carol.connection_id, 1)
    assert ack == {"action": "subscribed", "channel": "room-1", "offset": 0, "epoch": ack["epoch"]}
    # WHEN alice, not a member, publishes to room-1
    gateway.send(alice, {"type": 1, "data": "hi room", "channel": "room-1"})
    # THEN bob and carol get it, marked with the channel; dave and alice do not
    for member in (bob, carol):
        message = management_api.wait_for(member.connection_id, 1 if member is bob else 2)[-1]
        assert message["channel"] == "room-1" and message["data"] == "hi room"
    assert management_api.received(dave.connection_id) == []
    assert management_api.received(alice.connection_id) == []


def test_a_member_gets_its_own_channel_message_only_with_echo(gateway, management_api):
    bob, _ = gateway.connect(query_string="channels=room-1")
    carol, _ = gateway.connect(query_string="channels=room-1")
    gateway.send(bob, {"type": 1, "channel": "room-1"})
    gateway.send(bob, {"type": 2, "channel": "room-1", "echo": True})
    assert [m["type"] for m in management_api.wait_for(carol.connection_id, 2)] == [1, 2]
    assert [m["type"] for m in management_api.wait_for(bob.connection_id, 1)] == [2]


def test_unsubscribe_stops_delivery_and_is_acknowledged(gateway, management_api):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect(query_string="channels=room-1")
    gateway.send(bob, {"action": "unsubscribe", "channel": "room-1"})
    assert management_api.wait_for(bob.connection_id, 1) == [{"action": "unsubscribed", "channel": "room-1"}]
    gateway.send(alice, {"type": 1, "channel": "room-1"})
    gateway.send(alice, {"type": 2, "echo": True})
    management_api.wait_for(alice.connection_id, 1)
    assert [m.get("action", m.get("type")) for m in management_api.received(bob.connection_id)] == [
        "unsubscribed",
        2,
    ]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"action": "subscribe", "channel": "has space"}, envelope.INVALID_CHANNEL),
        ({"action": "subscribe", "channel": "x" * 65}, envelope.INVALID_CHANNEL),
        ({"action": "subscribe", "channel": "room-*"}, envelope.INVALID_CHANNEL),
        ({"action": "subscribe"}, envelope.INVALID_CHANNEL),
        ({"type": 1, "channel": 7}, envelope.INVALID_CHANNEL),
        ({"action": "dance"}, envelope.UNKNOWN_ACTION),
    ],
)
def test_a_bad_channel_request_gets_one_error(gateway, management_api, message, code):
    alice, _ = gateway.connect()
    assert gateway.send(alice, message) == {"statusCode": 400}
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == code


def test_a_bad_channel_list_at_connect_is_refused_with_400(gateway):
    _, response = gateway.connect(query_string="channels=ok,not%20ok")
    assert response["statusCode"] == 400
    assert "channel" in response["body"]


def test_a_connection_joins_at_most_channels_per_connection(monkeypatch, gateway, management_api):
    monkeypatch.setenv("CHANNELS_PER_CONNECTION", "2")
    _, refused = gateway.connect(query_string="channels=a,b,c")
    assert refused["statusCode"] == 400
    alice, _ = gateway.connect(query_string="channels=a,b")
    gateway.send(alice, {"action": "subscribe", "channel": "a"})  # already in: fine
    assert gateway.send(alice, {"action": "subscribe", "channel": "c"}) == {"statusCode": 400}
    replies = management_api.wait_for(alice.connection_id, 2)
    assert {key: replies[0][key] for key in ("action", "channel")} == {"action": "subscribed", "channel": "a"}
    assert replies[1]["error"]["code"] == envelope.TOO_MANY_CHANNELS


def test_disconnect_leaves_every_channel(gateway, redis_server):
    bob, _ = gateway.connect(query_string="channels=room-1,room-2")
    gateway.disconnect(bob)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    prefix = os.environ["REDIS_KEY_PREFIX"]
    assert client.keys(f"{{{prefix}}}:*") == [] or all(
        bob.connection_id not in client.hkeys(key)
        for key in client.keys(f"{{{prefix}}}:*")
        if client.type(key) == "hash"
    )
    # Only a short-lived tombstone stays, so a late message cannot bring bob back
    tombstone = f"{{{prefix}}}:conn:{bob.connection_id}"
    assert client.hgetall(tombstone) == {"#gone": "1"} and 0 < client.ttl(tombstone) <= 60
    assert not client.hexists(registry_key(prefix), bob.connection_id)


def bearer(**claims) -> dict:
    return {"Authorization": f"Bearer {secret_token(**claims)}"}


def test_the_token_says_which_channels_a_connection_may_use(jwt_stage, gateway, management_api):
    may = {"subscribe": ["room-*"], "publish": ["room-1"]}
    alice, _ = gateway.connect(headers=bearer(channels=may))
    bob, _ = gateway.connect(headers=bearer(channels={"subscribe": ["*"]}))
    gateway.send(bob, {"action": "subscribe", "channel": "room-1"})
    # Allowed: subscribe to room-9 (room-*), publish to room-1
    assert gateway.send(alice, {"action": "subscribe", "channel": "room-9"}) == {"statusCode": 200}
    assert gateway.send(alice, {"type": 1, "channel": "room-1"}) == {"statusCode": 200}
    assert management_api.wait_for(bob.connection_id, 2)[1]["channel"] == "room-1"
    # Refused: subscribe to lobby, publish to room-9
    assert gateway.send(alice, {"action": "subscribe", "channel": "lobby"}) == {"statusCode": 403}
    assert gateway.send(alice, {"type": 2, "channel": "room-9"}) == {"statusCode": 403}
    codes = [m["error"]["code"] for m in management_api.wait_for(alice.connection_id, 3) if "error" in m]
    assert codes == [envelope.CHANNEL_FORBIDDEN, envelope.CHANNEL_FORBIDDEN]
    # A token without the claim may use no channel, but still publishes to everyone
    carol, _ = gateway.connect(headers=bearer())
    assert gateway.send(carol, {"action": "subscribe", "channel": "room-1"}) == {"statusCode": 403}
    assert gateway.send(carol, {"type": 3}) == {"statusCode": 200}


def test_channels_at_connect_are_checked_against_the_token(jwt_stage, gateway):
    may = {"subscribe": ["room-1"]}
    _, allowed = gateway.connect(headers=bearer(channels=may), query_string="channels=room-1")
    _, refused = gateway.connect(headers=bearer(channels=may), query_string="channels=room-1,room-2")
    assert allowed["statusCode"] == 200
    assert refused["statusCode"] == 403
    assert "room-2" in refused["body"]


def test_a_malformed_channels_claim_refuses_the_token(jwt_stage, gateway):
    _, response = gateway.connect(headers=bearer(channels={"subscribe": "room-1"}))
    assert response["statusCode"] == 401


def test_after_redis_loses_its_data_replies_tell_the_client_to_reconnect(
    gateway, management_api, redis_server
):
    alice, _ = gateway.connect(query_string="channels=room-1")
    prefix = os.environ["REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(f"{{{prefix}}}:*"):
        client.delete(key)
    gateway.send(alice, {"action": "ping"})
    gateway.send(alice, {"action": "ping"})
    first, second = management_api.wait_for(alice.connection_id, 2)
    assert first["lost"] is True, "the first reply after the loss says so"
    assert "lost" not in second


@pytest.mark.parametrize(
    ("request_", "answer"),
    [
        ({"action": "presence", "channel": "room-1"}, "presence"),
        ({"action": "resume", "since": {"offset": 0, "epoch": "old"}}, "resumed"),
        ({"action": "unsubscribe", "channel": "room-1"}, "unsubscribed"),
    ],
)
def test_every_reply_to_a_request_says_when_redis_had_lost_the_asker(
    gateway, management_api, redis_server, request_, answer
):
    """A publish has no reply: a client that only publishes learns it at its next request or ping."""
    alice, _ = gateway.connect(query_string="channels=room-1")
    prefix = os.environ["REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(f"{{{prefix}}}:*"):
        client.delete(key)
    gateway.send(alice, request_)
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["action"] == answer
    assert reply["lost"] is True


def backend_publish(app_module, body) -> tuple[int, dict]:
    """POST /publish through Chalice's own local HTTP gateway (the IAM authorizer is API Gateway's)."""
    with Client(app_module.app) as client:
        response = client.http.post(
            "/publish",
            headers={"Content-Type": "application/json"},
            body=body if isinstance(body, str) else json.dumps(body),
        )
    return response.status_code, json.loads(response.body)


def test_a_backend_publishes_to_a_channel_and_gets_the_delivery_report(gateway, management_api, app_module):
    bob, _ = gateway.connect(query_string="channels=orders")
    gone, _ = gateway.connect(query_string="channels=orders")
    outsider, _ = gateway.connect()
    management_api.close(gone.connection_id)
    status, report = backend_publish(app_module, {"type": 7, "data": {"id": 1}, "channel": "orders"})
    assert status == 200
    assert report == {"recipients": 2, "delivered": 1, "gone": 1, "failed": 0}
    (message,) = management_api.wait_for(bob.connection_id, 1)
    assert message["channel"] == "orders" and message["data"] == {"id": 1}
    assert management_api.received(outsider.connection_id) == []


def test_a_backend_publish_without_a_channel_reaches_everyone(gateway, management_api, app_module):
    alice, _ = gateway.connect()
    status, report = backend_publish(app_module, {"type": 1})
    assert (status, report["delivered"]) == (200, 1)
    assert management_api.wait_for(alice.connection_id, 1)[0]["type"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, envelope.INVALID_JSON),
        ({"data": 1}, 400, envelope.MISSING_TYPE),
        ({"type": 1, "channel": "a b"}, 400, envelope.INVALID_CHANNEL),
        ({"action": "ping"}, 400, envelope.UNKNOWN_ACTION),
        ({"type": 1, "data": "x" * 131_072}, 413, envelope.MESSAGE_TOO_LARGE),
    ],
)
def test_a_bad_backend_publish_gets_the_same_error_codes(app_module, body, status, code):
    answered, reply = backend_publish(app_module, body)
    assert (answered, reply["error"]["code"]) == (status, code)


def test_a_backend_publish_is_held_to_the_post_budget(monkeypatch, gateway, app_module):
    monkeypatch.setenv("MAX_POSTS_PER_SECOND", "1")
    for _ in range(3):
        gateway.connect()
    assert backend_publish(app_module, {"type": 1})[0] == 200
    status, body = backend_publish(app_module, {"type": 2})
    assert status == 503
    assert body["error"]["code"] == envelope.OVER_CAPACITY
