"""The use cases without Chalice and without HTTP: a ``Broadcaster`` on fakeredis, a real fan-out, and
an in-memory Management API that records what each connection would receive. What ``app.py`` wires,
tested where it lives (the handlers' tests drive the same code through API Gateway's events).
"""

from __future__ import annotations

import json

import fakeredis
import pytest

from chalicelib import metrics
from chalicelib.auth import AuthUnavailable, Gatekeeper, Unauthorized
from chalicelib.broadcast import Broadcaster
from chalicelib.fanout import Fanout
from chalicelib.gateway_event import GatewayEvent
from chalicelib.management_api import Gone
from chalicelib.registry import ConnectionRegistry, Limits
from testing.apigw import Connection, now_ms
from tests.support.emf import emf_documents


class InMemoryApi:
    """Stands in for one endpoint's ``ManagementApi``: posts land in per-connection inboxes."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.inbox: dict[str, list[dict]] = {}

    def post(self, connection_id: str, data: bytes, *, deadline: float | None = None) -> None:
        failure = self.post_many([connection_id], data, deadline)[0]
        if failure is not None:
            raise failure

    def post_many(self, connection_ids, data: bytes, deadline) -> list:
        outcomes = []
        for connection_id in connection_ids:
            if connection_id in self.open:
                self.inbox.setdefault(connection_id, []).append(json.loads(data))
                outcomes.append(None)
            else:
                outcomes.append(Gone(connection_id, 410, "gone"))
        return outcomes

    def for_event(self, api_id: str, stage: str) -> InMemoryApi:
        return self


class TokenPerName:
    """Accepts ``Bearer <name>`` as the principal ``name``, with the channel rights of ``rights``."""

    def __init__(self, rights: dict[str, dict]) -> None:
        self.rights = rights

    def verify(self, token: str) -> dict:
        if token not in self.rights:
            raise Unauthorized("unknown")
        return {"sub": token, "channels": self.rights[token]}


@pytest.fixture
def api() -> InMemoryApi:
    return InMemoryApi()


def make_broadcaster(api, *, verifier=None, limits: Limits | None = None, sleep=None) -> Broadcaster:
    registry = ConnectionRegistry(
        fakeredis.FakeRedis(decode_responses=True),
        prefix="unit",
        max_age_seconds=7200,
        limits=limits or Limits(),
        enforce_channel_permissions=verifier is not None,
    )
    return Broadcaster(
        registry,
        api,
        Fanout(8),
        Gatekeeper(verifier),
        publish_deadline_seconds=5,
        websocket_api=("a", "api"),
        **({"sleep": sleep} if sleep else {}),
    )


def join(
    broadcaster, api, *, headers=(), query_string="", connection: Connection | None = None
) -> Connection:
    connection = connection or Connection()
    event = GatewayEvent.from_dict(connection.connect_event(headers=list(headers), query_string=query_string))
    response = broadcaster.connect(event)
    assert response["statusCode"] == 200, response
    api.open.add(connection.connection_id)
    return connection


def say(broadcaster, connection: Connection, message: dict) -> int:
    event = GatewayEvent.from_dict(connection.message_event(json.dumps(message)))
    return broadcaster.publish(event, remaining_seconds=10)["statusCode"]


def test_a_publish_reaches_everyone_but_its_sender(api):
    broadcaster = make_broadcaster(api)
    alice, bob, carol = (join(broadcaster, api) for _ in range(3))
    assert say(broadcaster, alice, {"type": 99, "data": "hi"}) == 200
    assert [m["data"] for m in api.inbox[bob.connection_id]] == ["hi"]
    assert [m["data"] for m in api.inbox[carol.connection_id]] == ["hi"]
    assert alice.connection_id not in api.inbox


def test_a_gone_connection_is_forgotten_and_not_posted_to_again(api):
    broadcaster = make_broadcaster(api)
    alice = join(broadcaster, api)
    bob = join(broadcaster, api, connection=Connection(connected_at_ms=now_ms() - 60_000))
    api.open.discard(bob.connection_id)
    say(broadcaster, alice, {"type": 1, "echo": True})
    api.open.add(bob.connection_id)  # were bob still registered, the next publish would reach him
    say(broadcaster, alice, {"type": 2, "echo": True})
    assert bob.connection_id not in api.inbox


def test_channels_permissions_and_acknowledgements(api):
    rights = {"writer": {"publish": ["news"]}, "reader": {"subscribe": ["news"]}}
    broadcaster = make_broadcaster(api, verifier=TokenPerName(rights))
    writer = join(broadcaster, api, headers=[("Authorization", "Bearer writer")])
    reader = join(
        broadcaster, api, headers=[("Authorization", "Bearer reader")], query_string="channels=news"
    )
    assert say(broadcaster, writer, {"type": 1, "channel": "news"}) == 200
    assert api.inbox[reader.connection_id] == [
        {
            "type": 1,
            "data": None,
            "received": api.inbox[reader.connection_id][0]["received"],
            "channel": "news",
        }
    ]
    assert say(broadcaster, reader, {"type": 2, "channel": "news"}) == 403
    assert say(broadcaster, writer, {"action": "subscribe", "channel": "news"}) == 403
    assert [m["error"]["code"] for m in api.inbox[writer.connection_id]] == ["channel_forbidden"]


def test_a_refused_handshake_registers_nothing(api):
    broadcaster = make_broadcaster(api, verifier=TokenPerName({}))
    event = GatewayEvent.from_dict(Connection().connect_event(headers=[("Authorization", "Bearer nobody")]))
    assert broadcaster.connect(event)["statusCode"] == 401
    alice = join(make_broadcaster(api), api)
    assert say(broadcaster, alice, {"type": 1}) == 200


def test_the_backend_publish_reports_what_it_did(api):
    broadcaster = make_broadcaster(api)
    bob, gone = (
        join(broadcaster, api, query_string="channels=orders"),
        join(broadcaster, api, query_string="channels=orders"),
    )
    api.open.discard(gone.connection_id)
    status, report = broadcaster.publish_from_backend(json.dumps({"type": 5, "channel": "orders"}), 10)
    assert (status, report) == (200, {"recipients": 2, "delivered": 1, "gone": 1, "failed": 0})
    assert api.inbox[bob.connection_id][0]["channel"] == "orders"


def recorded(invocation) -> dict:
    """The one EMF document ``invocation()`` records, as its handler would write it."""
    lines: list[str] = []
    with metrics.recording("WsBroadcast", "fn", lines.append):
        invocation()
    (document,) = emf_documents("".join(lines))
    return document


def test_the_backend_publish_is_counted_like_a_publish(api):
    broadcaster = make_broadcaster(api)
    join(broadcaster, api)
    document = recorded(lambda: broadcaster.publish_from_backend(json.dumps({"type": 5}), 10))
    assert (document["Published"], document["Recipients"], document["Delivered"]) == (1, 1, 1)


class KeysOutage:
    def verify(self, token: str) -> dict:
        raise AuthUnavailable("the service cannot fetch its signing keys; retry shortly")


def test_a_handshake_refused_for_want_of_keys_is_counted_keys_unavailable(api):
    broadcaster = make_broadcaster(api, verifier=KeysOutage())
    event = GatewayEvent.from_dict(Connection().connect_event(headers=[("Authorization", "Bearer t")]))
    document = recorded(lambda: broadcaster.connect(event))
    assert (document["Reason"], document["ConnectRefused"]) == (metrics.KEYS_UNAVAILABLE, 1)


def test_limits_answer_once_then_stay_quiet(api):
    broadcaster = make_broadcaster(api, limits=Limits(publish_rate_per_second=0.001, publish_burst=1))
    alice = join(broadcaster, api)
    assert [say(broadcaster, alice, {"type": n, "echo": True}) for n in range(4)] == [200, 429, 429, 429]
    codes = [m.get("error", {}).get("code") for m in api.inbox[alice.connection_id]]
    assert codes == [None, "rate_limited"]


def test_a_410_in_the_handshake_window_neither_prunes_the_connection_nor_loses_its_reply(api):
    # GIVEN bob, whose $connect has just returned, but whom API Gateway does not take posts for yet
    opened = []
    broadcaster = make_broadcaster(api, sleep=lambda seconds: opened.append(api.open.add(bob.connection_id)))
    alice = join(broadcaster, api)
    bob = join(broadcaster, api)
    api.open.discard(bob.connection_id)
    # WHEN alice publishes THEN bob's 410 does not remove him: he is in his handshake window
    say(broadcaster, alice, {"type": 1})
    # AND bob's first ping is answered once API Gateway takes posts for him (tried again, with backoff)
    assert say(broadcaster, bob, {"action": "ping"}) == 200
    assert len(opened) == 1 and api.inbox[bob.connection_id][0]["action"] == "pong"
    say(broadcaster, alice, {"type": 2})
    assert [m["type"] for m in api.inbox[bob.connection_id][1:]] == [2]
