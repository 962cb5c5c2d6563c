"""Redis behind a network that misbehaves, between the app's pooled connections and a real redis-server:
a frozen and thawed container whose idle connections a NAT gateway reset, and a Redis that is slow
(answers within the socket timeout) or stalled (answers past it).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib import envelope
from testing.tcp_proxy import TcpProxy
from tests.support.gateway_driver import GatewayDriver, app_on

SOCKET_TIMEOUT_SECONDS = 2.0  # REDIS_SOCKET_TIMEOUT_SECONDS's default
# A command is tried at most 3 times (the client's two retries): each waits at most the socket
# timeout, and the backoff between them sums to at most 1 s (cap 0.5 s).
WORST_REDIS_CALL_SECONDS = 3 * SOCKET_TIMEOUT_SECONDS + 2 * 0.5


@pytest.fixture
def link(private_redis_server) -> TcpProxy:
    with TcpProxy(("127.0.0.1", private_redis_server.port)) as proxy:
        yield proxy


@pytest.fixture
def gateway(monkeypatch, link, management_api):
    for app in app_on(monkeypatch, link.url(), management_api):
        yield GatewayDriver(app, management_api)


@pytest.fixture
def admin(private_redis_server):
    """The test's own client of the server, past the proxy: one connection, so one HELLO of its own."""
    with private_redis_server.admin() as client:
        client.ping()
        yield client


def attempts_seen(admin) -> int:
    """What the server was asked to do so far, as the app asks it: script runs (every registry call is
    one) and connection handshakes (HELLO: a new connection, as a retry makes)."""
    stats = admin.info("commandstats")
    return sum(
        stats.get(kind, {}).get("calls", 0) for kind in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_hello")
    )


def warm_up(gateway) -> tuple:
    """Two clients, and a container that has run each handler once (its scripts are loaded)."""
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    leaver, _ = gateway.connect()
    gateway.send(alice, {"type": 1, "data": "quick"})
    gateway.disconnect(leaver)
    return alice, bob


def test_a_thawed_container_whose_idle_connections_were_reset_still_delivers_its_first_publish(
    gateway, management_api, link, json_log
):
    # GIVEN a warm container holding pooled Redis connections
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    assert gateway.send(alice, {"type": 1, "data": "warm"}) == {"statusCode": 200}
    assert link.open_connections() >= 1
    # WHEN it is frozen long enough for the NAT gateway to reset every idle flow (RST)
    assert link.reset_idle() == link.accepted
    # THEN its first publish after the thaw reaches everyone, and its sender is told nothing
    assert gateway.send(alice, {"type": 2, "data": "thawed", "echo": True}) == {"statusCode": 200}
    assert [m["data"] for m in management_api.received(bob.connection_id)] == ["warm", "thawed"]
    assert [m["data"] for m in management_api.received(alice.connection_id)] == ["thawed"]
    assert [line for line in json_log() if line["level"] in ("ERROR", "WARNING")] == []


def test_a_slow_redis_within_the_socket_timeout_slows_handlers_but_sends_nothing_twice(
    gateway, management_api, link, admin
):
    # GIVEN a warm container
    alice, bob = warm_up(gateway)
    # WHEN Redis answers each command only after 1.5 s (under the 2 s socket timeout)
    link.delay_answers(1.5)
    before = attempts_seen(admin)
    for call in (
        lambda: gateway.send(alice, {"type": 2, "data": "slow"}),
        lambda: gateway.connect()[1],
        lambda: gateway.disconnect(bob),
    ):
        started = time.monotonic()
        outcome = call()
        # THEN each handler succeeds, as slowly as its one round trip, far inside its deadline
        assert (outcome, time.monotonic() - started < 1.5 + 1) == ({"statusCode": 200}, True)
    # AND nothing was tried twice: one script run each, no new connection
    assert attempts_seen(admin) - before == 3
    assert [m["data"] for m in management_api.received(bob.connection_id)] == ["quick", "slow"]


def test_a_stalled_redis_fails_handlers_within_their_deadlines_without_a_retry_storm(
    gateway, management_api, link, admin
):
    # GIVEN a warm container
    alice, bob = warm_up(gateway)
    # WHEN Redis stops answering (each answer held past the socket timeout)
    link.delay_answers(60)
    before = attempts_seen(admin)
    accepted_before = link.accepted
    # AND a publish, a connect and a disconnect arrive at once
    with ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        calls = [
            pool.submit(gateway.send, alice, {"type": 2, "data": "stalled"}),
            pool.submit(lambda: gateway.connect()[1]),
            pool.submit(gateway.disconnect, bob),
        ]
        outcomes = [call.result()["statusCode"] for call in calls]
        elapsed = time.monotonic() - started
    # THEN each fails as the registry being unavailable, within its three bounded attempts
    assert outcomes == [503] * 3
    assert elapsed < WORST_REDIS_CALL_SECONDS + 1
    (reply,) = management_api.received(alice.connection_id)
    assert reply["error"]["code"] == envelope.REGISTRY_UNAVAILABLE
    # AND Redis saw at most three attempts of each, on at most three connections each
    assert attempts_seen(admin) - before <= 3 * 3
    assert link.accepted - accepted_before <= 3 * 3
    assert [m["data"] for m in management_api.received(bob.connection_id)] == ["quick"]

    # WHEN Redis answers again THEN the same container works at once
    link.delay_answers(0)
    carol, response = gateway.connect()
    assert response == {"statusCode": 200}
    assert gateway.send(alice, {"type": 3, "data": "back"}) == {"statusCode": 200}
    assert management_api.received(carol.connection_id)[0]["data"] == "back"


def test_a_publish_whose_answer_was_lost_is_tried_again_and_kept_once(gateway, management_api, link):
    # GIVEN a warm container, history on (the default), and a member of room-1 that saw one message
    alice, _ = warm_up(gateway)
    member, _ = gateway.connect(query_string="channels=room-1")
    gateway.send(alice, {"type": 1, "data": "before", "channel": "room-1"})
    (before,) = management_api.wait_for(member.connection_id, 1)
    # WHEN Redis runs the next publish's script but its answer is lost on the way back
    link.lose_next_answers(1)
    assert gateway.send(alice, {"type": 2, "data": "lost answer", "channel": "room-1"}) == {"statusCode": 200}
    # THEN the client's retry publishes it: the member receives it once, at the next offset
    delivered = management_api.wait_for(member.connection_id, 2)[1]
    assert (delivered["data"], delivered["offset"]) == ("lost answer", before["offset"] + 1)
    # AND the stream kept it once: a client that had seen "before" recovers exactly that one message
    late, _ = gateway.connect()
    since = {"offset": before["offset"], "epoch": before["epoch"]}
    gateway.send(late, {"action": "subscribe", "channel": "room-1", "since": since})
    ack, *replayed = management_api.wait_for(late.connection_id, 2)
    assert (ack["recovered"], ack["offset"]) == (True, before["offset"] + 1)
    assert replayed == [delivered]
