"""The connection registry, against fakeredis and a real redis-server alike."""

import time

import pytest

from chalicelib.registry import ConnectionRegistry, InvalidConnectionId, principal_key, registry_key

KEY = registry_key("test")
MAX_AGE = 7200
# The real time: Redis expires a connection's own hash at connectedAt + max age by its own clock.
NOW = int(time.time())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def registry(redis_client, clock) -> ConnectionRegistry:
    return ConnectionRegistry(redis_client, prefix="test", max_age_seconds=MAX_AGE, clock=clock)


SENDER = "SSSSSSSSSSSSSSS="


def recipients(registry) -> list[str]:
    """Who a publish from SENDER (registered for the test) would reach, SENDER left out."""
    return sorted(registry.begin_publish(SENDER, NOW * 1000, include_sender=False).live)


def test_connections_come_and_go(registry):
    registry.add("AAAAAAAAAAAAAAA=", NOW * 1000)
    registry.add("BBBBBBBBBBBBBBB=", NOW * 1000)
    assert recipients(registry) == ["AAAAAAAAAAAAAAA=", "BBBBBBBBBBBBBBB=", SENDER]
    registry.remove("AAAAAAAAAAAAAAA=")
    assert recipients(registry) == ["BBBBBBBBBBBBBBB=", SENDER]


def test_removing_an_unknown_connection_is_harmless(registry, redis_client):
    registry.remove("AAAAAAAAAAAAAAA=")
    assert redis_client.exists(KEY) == 0


def test_the_principal_is_kept_with_the_connection(registry, redis_client):
    registry.add("AAAAAAAAAAAAAAA=", NOW * 1000, principal="user-1")
    registry.add("BBBBBBBBBBBBBBB=", NOW * 1000)
    assert redis_client.hgetall(KEY) == {
        "AAAAAAAAAAAAAAA=": f"{NOW}:{principal_key('user-1')}",
        "BBBBBBBBBBBBBBB=": str(NOW),
    }
    assert len(principal_key("d3b07384-d9a0-4c9b-8c3e-6f1b2a7e9c10")) == 11


def test_a_connection_is_never_a_recipient_once_it_reaches_the_maximum_age(registry, clock):
    # GIVEN a connection whose $disconnect never came
    registry.add("AAAAAAAAAAAAAAA=", NOW * 1000)
    # WHEN time passes to one second before the maximum age THEN it is still live
    clock.now = NOW + MAX_AGE - 1
    assert "AAAAAAAAAAAAAAA=" in registry.begin_publish(SENDER, clock.now * 1000, include_sender=False).live
    # WHEN it reaches the maximum age THEN it is stale, not live
    clock.now = NOW + MAX_AGE
    snapshot = registry.begin_publish(SENDER, clock.now * 1000, include_sender=False)
    assert "AAAAAAAAAAAAAAA=" not in snapshot.live
    assert snapshot.stale == ["AAAAAAAAAAAAAAA="]


def test_forget_removes_gone_and_stale_entries(registry, redis_client):
    registry.add("AAAAAAAAAAAAAAA=", NOW * 1000)
    registry.add("BBBBBBBBBBBBBBB=", NOW * 1000)
    registry.forget(["AAAAAAAAAAAAAAA="])
    registry.forget([])
    assert redis_client.hkeys(KEY) == ["BBBBBBBBBBBBBBB="]


def test_stale_entries_are_pruned_by_connects_even_without_publishes(registry, redis_client, clock):
    # GIVEN 200 connections whose $disconnect never came
    for i in range(200):
        registry.add(f"old{i:013d}=", NOW * 1000)
    # WHEN, past their maximum age, 200 new connections arrive and nothing is ever published
    clock.now = NOW + MAX_AGE + 60
    for i in range(200):
        registry.add(f"new{i:013d}=", clock.now * 1000)
    # THEN the sampling on connect has removed most stale entries: the hash stays bounded
    assert redis_client.hlen(KEY) < 200 + 100


def test_the_whole_registry_expires_when_no_connection_arrives_for_the_maximum_age(registry, redis_client):
    registry.add("AAAAAAAAAAAAAAA=", NOW * 1000)
    assert 0 < redis_client.ttl(KEY) <= MAX_AGE


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 129, "semi;colon", "new\nline"])
def test_invalid_connection_ids_never_reach_redis(registry, redis_client, bad_id):
    with pytest.raises(InvalidConnectionId):
        registry.add(bad_id, NOW * 1000)
    with pytest.raises(InvalidConnectionId):
        registry.remove(bad_id)
    assert redis_client.exists(KEY) == 0


def test_an_unreadable_entry_counts_as_stale_not_as_a_crash(registry, redis_client):
    redis_client.hset(KEY, "AAAAAAAAAAAAAAA=", "garbage")
    assert registry.begin_publish(SENDER, NOW * 1000, include_sender=False).stale == ["AAAAAAAAAAAAAAA="]
