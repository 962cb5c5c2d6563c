"""The per-connection rate and the whole API's post budget, at their exact boundaries (a stepped clock in
place of Redis's),
and the registry healing itself from the messages its connections send. fakeredis and redis-server alike.
"""

from __future__ import annotations

import time

import pytest

from chalicelib.registry import (
    ConnectionRegistry,
    Limits,
    OverCapacity,
    RateLimited,
    principal_key,
    registry_key,
)

# The real time: Redis expires a connection's own hash at connectedAt + max age by its own clock.
NOW = float(int(time.time()))
SENDER = "SSSSSSSSSSSSSSS="


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry_with(redis_client, clock, **limits) -> ConnectionRegistry:
    registry = ConnectionRegistry(
        redis_client,
        prefix="limits",
        max_age_seconds=7200,
        limits=Limits(**limits),
        clock=clock,
        bucket_clock=clock,
    )
    registry.add(SENDER, int(NOW * 1000))
    return registry


def publish(registry, *, echo=False):
    return registry.begin_publish(SENDER, int(NOW * 1000), include_sender=echo)


def test_a_sender_gets_its_burst_then_one_message_per_interval(redis_client, clock):
    registry = registry_with(redis_client, clock, publish_rate_per_second=2, publish_burst=3)
    for _ in range(3):
        publish(registry)
    # WHEN the burst is spent THEN the next message is refused, saying when to send again
    with pytest.raises(RateLimited) as refused:
        publish(registry)
    assert refused.value.retry_after == 0.5
    assert refused.value.first is True
    # AND only the first refusal is to be answered: a flood of refusals is not a flood of replies
    with pytest.raises(RateLimited) as again:
        publish(registry)
    assert again.value.first is False
    # WHEN 1 ms short of the interval THEN still refused; at the interval THEN one more goes through
    clock.now = NOW + 0.499
    with pytest.raises(RateLimited):
        publish(registry)
    clock.now = NOW + 0.5
    publish(registry)
    with pytest.raises(RateLimited) as after_grant:
        publish(registry)
    assert after_grant.value.first is True, "a granted message resets the one-reply rule"


def test_the_budget_takes_one_post_per_recipient(redis_client, clock):
    # GIVEN five recipients besides the sender and a budget of 10 posts a second (inline reserve: 2)
    registry = registry_with(redis_client, clock, max_posts_per_second=10)
    for index in range(5):
        registry.add(f"R{index:014d}=", int(NOW * 1000))
    publish(registry)
    publish(registry)
    # WHEN the budget is spent THEN the next publish is refused until the reserve's 2 posts are back,
    # and the one its error reply took
    with pytest.raises(OverCapacity) as refused:
        publish(registry)
    assert refused.value.retry_after == 0.3
    clock.now = NOW + 0.299
    with pytest.raises(OverCapacity):
        publish(registry)
    clock.now = NOW + 0.3
    assert len(publish(registry).live) == 6


def test_echo_costs_one_more_post(redis_client, clock):
    registry = registry_with(redis_client, clock, max_posts_per_second=2)
    registry.add("RRRRRRRRRRRRRRR=", int(NOW * 1000))
    publish(registry, echo=True)  # 2 posts
    with pytest.raises(OverCapacity):
        publish(registry)  # 1 more


def test_a_publish_larger_than_the_budget_goes_out_and_leaves_a_debt(redis_client, clock):
    # GIVEN 6 recipients and a budget of 3 posts a second (no reserve: a publish needs one post)
    registry = registry_with(redis_client, clock, max_posts_per_second=3)
    for index in range(6):
        registry.add(f"R{index:014d}=", int(NOW * 1000))
    # WHEN one publish needs more than a second's budget THEN it still goes out
    publish(registry)
    # AND the debt (3 - 6 = -3) is paid back before the next: 3 + 1 posts, and 1 for the refusal's error
    # reply, at 3 a second
    with pytest.raises(OverCapacity) as refused:
        publish(registry)
    assert refused.value.retry_after == 1.667
    clock.now = NOW + 1.667
    publish(registry)


def test_a_publish_refused_for_capacity_still_takes_the_senders_token(redis_client, clock):
    registry = registry_with(
        redis_client, clock, publish_rate_per_second=1, publish_burst=1, max_posts_per_second=1
    )
    for index in range(3):
        registry.add(f"R{index:014d}=", int(NOW * 1000))
    registry_key_budget = "{limits}:posts"
    redis_client.hset(registry_key_budget, mapping={"tokens": -10, "at": int(NOW * 1000)})
    with pytest.raises(OverCapacity):
        publish(registry)
    # Every message takes a token, so a retrying flood is held to the sender's rate.
    with pytest.raises(RateLimited):
        registry.touch(SENDER, int(NOW * 1000))


def test_limits_switched_off_let_everything_through(redis_client, clock):
    registry = registry_with(redis_client, clock, publish_rate_per_second=0, max_posts_per_second=0)
    for _ in range(100):
        publish(registry)
    assert redis_client.exists("{limits}:posts", f"{{limits}}:rate:{SENDER}") == 0


def test_limit_state_expires_once_it_would_be_full_again(redis_client, clock):
    registry = registry_with(
        redis_client, clock, publish_rate_per_second=2, publish_burst=4, max_posts_per_second=100
    )
    publish(registry)
    assert 0 < redis_client.pttl(f"{{limits}}:rate:{SENDER}") <= 2000 + 1000
    assert 0 < redis_client.pttl("{limits}:posts") <= 1000 + 1000


def test_a_keepalive_counts_against_the_rate(redis_client, clock):
    registry = registry_with(redis_client, clock, publish_rate_per_second=1, publish_burst=2)
    registry.touch(SENDER, int(NOW * 1000))
    registry.touch(SENDER, int(NOW * 1000))
    with pytest.raises(RateLimited):
        registry.touch(SENDER, int(NOW * 1000))


def test_a_sender_lost_by_redis_is_registered_again_by_its_next_message(redis_client, clock):
    registry = registry_with(redis_client, clock)
    registry.add("LLLLLLLLLLLLLLL=", int(NOW * 1000), principal="listener")
    # WHEN Redis loses its data
    redis_client.flushall()
    # THEN the listener's keepalive and the sender's publish put both back, with their connectedAt
    registry.touch("LLLLLLLLLLLLLLL=", int(NOW * 1000))
    assert sorted(publish(registry).live) == ["LLLLLLLLLLLLLLL=", SENDER]
    assert redis_client.hget(registry_key("limits"), SENDER) == str(int(NOW))
    # AND the registry expires as a registry written by connects does
    assert 0 < redis_client.ttl(registry_key("limits")) <= 7200


def test_re_registering_keeps_an_existing_entry_and_its_principal(redis_client, clock):
    registry = registry_with(redis_client, clock)
    registry.add("LLLLLLLLLLLLLLL=", int(NOW * 1000), principal="listener")
    registry.touch("LLLLLLLLLLLLLLL=", int(NOW * 1000) + 5000)
    assert (
        redis_client.hget(registry_key("limits"), "LLLLLLLLLLLLLLL=")
        == f"{int(NOW)}:{principal_key('listener')}"
    )


def test_a_membership_keeps_when_its_connection_connected_and_who_it_is(redis_client, clock):
    # The principal's digest stays in the registry's entry alone; a membership keeps the token's sub,
    # which presence lists, and a connection without a token keeps only when it connected.
    registry = registry_with(redis_client, clock)
    registry.add("LLLLLLLLLLLLLLL=", int(NOW * 1000), principal="listener", channels=("room-1",))
    registry.subscribe("LLLLLLLLLLLLLLL=", int(NOW * 1000), "room-2")
    registry.subscribe(SENDER, int(NOW * 1000), "room-2")
    for channel in ("room-1", "room-2"):
        assert redis_client.hget(f"{{limits}}:ch:{channel}", "LLLLLLLLLLLLLLL=") == f"{int(NOW)}:listener"
    assert redis_client.hget("{limits}:ch:room-2", SENDER) == str(int(NOW))
