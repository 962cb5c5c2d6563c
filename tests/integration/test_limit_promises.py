"""The promises the limits make, each proven where an adversarial review found it broken: queued
broadcasts admitted against a budget of their own, inline publishes keeping a share the queue's workers
cannot take, every message a connection sends metered (refused ones too, and the replies they cost),
a message in flight across ``$disconnect`` never bringing its connection back, one clock for every
bucket (Redis's), and an optional per-user rate. fakeredis and a real redis-server alike.
"""

from __future__ import annotations

import time

import pytest

from chalicelib.registry import (
    ConnectionClosed,
    ConnectionRegistry,
    Limits,
    OverCapacity,
    Queued,
    RateLimited,
)
from tests.integration.test_registry_shards import connection_ids

NOW_MS = int(time.time()) * 1000


class SteppedClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def registry_on(redis_client, *, bucket_clock=SteppedClock, **options) -> ConnectionRegistry:
    """A registry whose buckets run on a clock of the test's (one that only moves when told), or on
    Redis's with ``bucket_clock=None``."""
    return ConnectionRegistry(
        redis_client,
        prefix="promises",
        max_age_seconds=7200,
        bucket_clock=bucket_clock and bucket_clock(),
        **options,
    )


def audience(registry: ConnectionRegistry, count: int, **add_options) -> list[str]:
    ids = connection_ids(count)
    for connection_id in ids:
        registry.add(connection_id, NOW_MS, **add_options)
    return ids


@pytest.mark.parametrize("shards", [1, 4])
def test_a_queued_broadcast_is_admitted_against_the_queue_budget(redis_client, shards):
    # GIVEN a queue (audiences above 2 are queued), 10 posts a second, and a backlog of one second
    registry = registry_on(
        redis_client,
        inline_max=2,
        shards=shards,
        limits=Limits(max_posts_per_second=10, queue_backlog_seconds=1),
    )
    ids = audience(registry, 5)
    # WHEN broadcasts to 5 are queued THEN two fit the backlog (10 posts) and the third waits its turn
    assert isinstance(registry.begin_backend_publish(), Queued)
    assert isinstance(registry.begin_publish(ids[0], NOW_MS, include_sender=True), Queued)
    with pytest.raises(OverCapacity) as refused:
        registry.begin_backend_publish()
    assert refused.value.retry_after == 0.5, "5 posts' worth at 10 a second"


def test_the_queues_workers_never_take_the_inline_reserve(redis_client):
    # GIVEN 100 posts a second, of which a quarter second (25) is kept for inline publishes
    registry = registry_on(redis_client, limits=Limits(max_posts_per_second=100))
    ids = audience(registry, 6)
    # WHEN the workers lease all they can
    granted, _ = registry.lease_posts(100)
    assert granted == 75
    assert registry.lease_posts(10)[0] == 0, "the reserve is not theirs"
    # THEN a small inline publish still goes out at once
    assert len(registry.begin_publish(ids[0], NOW_MS, include_sender=False).live) == 6


def test_a_large_inline_publish_needs_only_the_reserve_and_then_the_workers_wait(redis_client):
    registry = registry_on(redis_client, limits=Limits(max_posts_per_second=100))
    audience(registry, 60)
    registry.lease_posts(100)  # the workers drain the bucket down to the reserve (25)
    # WHEN an inline publish to 60 comes THEN it goes (it leaves a debt) and the workers wait for it
    assert len(registry.begin_backend_publish().live) == 60
    granted, wait = registry.lease_posts(10)
    assert granted == 0
    assert wait == pytest.approx(0.7), "from -35 back to the reserve and one chunk: 70 posts"


def test_every_message_takes_from_the_senders_bucket_even_when_refused(redis_client):
    # GIVEN a sender with a burst of 3 that is refused a channel (its token allows none)
    registry = registry_on(
        redis_client,
        enforce_channel_permissions=True,
        limits=Limits(publish_rate_per_second=1, publish_burst=3),
    )
    (sender,) = audience(registry, 1)
    firsts = []
    for _ in range(3):
        with pytest.raises(Exception) as refused:
            registry.subscribe(sender, NOW_MS, "room-1")
        firsts.append(refused.value.first)
    # THEN each is answered (it is within the sender's rate) and took a token: then the rate refuses
    assert firsts == [True, True, True]
    with pytest.raises(RateLimited) as over:
        registry.touch(sender, NOW_MS)
    assert over.value.first is True
    with pytest.raises(RateLimited) as again:
        registry.subscribe(sender, NOW_MS, "room-1")
    assert again.value.first is False, "past the rate, only the first refusal in a row is answered"


def test_a_message_that_failed_to_parse_takes_a_token(redis_client):
    registry = registry_on(redis_client, limits=Limits(publish_rate_per_second=1, publish_burst=2))
    (sender,) = audience(registry, 1)
    registry.refuse(sender, NOW_MS)
    registry.refuse(sender, NOW_MS)
    with pytest.raises(RateLimited) as refused:
        registry.refuse(sender, NOW_MS)
    assert refused.value.first is True
    with pytest.raises(RateLimited) as again:
        registry.begin_publish(sender, NOW_MS, include_sender=False)
    assert again.value.first is False


def test_every_reply_is_a_post_and_counts_against_the_budget(redis_client):
    # GIVEN a budget of 4 posts a second (reserve 1) and one listener
    registry = registry_on(redis_client, limits=Limits(max_posts_per_second=4))
    sender, _ = audience(registry, 2)
    # WHEN the sender's pings cost 4 pongs
    for _ in range(4):
        registry.touch(sender, NOW_MS)
    # THEN a publish must wait for the budget
    with pytest.raises(OverCapacity):
        registry.begin_backend_publish()


def test_a_message_in_flight_across_disconnect_does_not_bring_the_connection_back(redis_client):
    registry = registry_on(redis_client)
    late, listener = audience(registry, 2)
    registry.remove(late)
    # WHEN its last ping and subscribe arrive after $disconnect THEN they find it closed
    with pytest.raises(ConnectionClosed):
        registry.touch(late, NOW_MS)
    with pytest.raises(ConnectionClosed):
        registry.subscribe(late, NOW_MS, "room-1")
    # AND it is neither a recipient nor a member, and nothing of it lives on
    assert registry.begin_backend_publish().live == [listener]
    assert registry.begin_backend_publish("room-1").live == []
    assert not redis_client.exists("{promises}:ch:room-1")
    assert redis_client.ttl(f"{{promises}}:conn:{late}") <= 60, "only a short-lived tombstone"


def test_containers_with_skewed_clocks_share_one_budget(redis_client):
    # GIVEN two containers 100 ms apart, 100 posts a second, a publish costing 10, the buckets on Redis's clock
    limits = Limits(max_posts_per_second=100)
    fast = registry_on(redis_client, bucket_clock=None, clock=lambda: time.time() + 0.1, limits=limits)
    slow = registry_on(redis_client, bucket_clock=None, clock=time.time, limits=limits)
    audience(fast, 10)
    started = time.monotonic()
    granted = 0
    for turn in range(100):
        try:
            (fast if turn % 2 else slow).begin_backend_publish()
            granted += 10
        except OverCapacity:
            pass
    elapsed = time.monotonic() - started
    # THEN they grant no more than one bucket's capacity plus what it refilled meanwhile, plus one publish
    assert granted <= 100 + 100 * elapsed + 10, f"{granted} posts in {elapsed:.2f} s"


def test_a_users_connections_share_the_per_user_rate(redis_client):
    registry = registry_on(
        redis_client, limits=Limits(publish_rate_per_second=10, publish_burst=10, publish_rate_per_user=1)
    )
    first, second = audience(registry, 2, principal="alice")
    (other,) = [connection_id for connection_id in connection_ids(3) if connection_id not in (first, second)]
    registry.add(other, NOW_MS, principal="bob")
    # WHEN alice's two connections publish past her burst (PUBLISH_BURST) at 1 a second
    for turn in range(10):
        registry.begin_publish((first, second)[turn % 2], NOW_MS, include_sender=False)
    with pytest.raises(RateLimited):
        registry.begin_publish(first, NOW_MS, include_sender=False)
    # THEN bob is not held back by her
    registry.begin_publish(other, NOW_MS, include_sender=False)


def test_a_flood_of_bad_messages_gets_one_error_and_spends_the_senders_rate(
    monkeypatch, gateway, management_api
):
    # GIVEN a stage allowing a burst of 3 messages, then 1 a second
    monkeypatch.setenv("PUBLISH_RATE_PER_SECOND", "1")
    monkeypatch.setenv("PUBLISH_BURST", "3")
    sender, _ = gateway.connect()
    listener, _ = gateway.connect()
    # WHEN the sender floods it with messages that are not JSON
    statuses = [gateway.send(sender, "not json")["statusCode"] for _ in range(10)]
    # THEN each within its rate is told why, the first past it that it is over its rate, the rest nothing
    assert [reply["error"]["code"] for reply in management_api.received(sender.connection_id)] == [
        "invalid_json",
        "invalid_json",
        "invalid_json",
        "rate_limited",
    ]
    assert statuses == [400] * 3 + [429] * 7
    assert gateway.send(sender, {"type": 1, "data": "after the flood"})["statusCode"] == 429
    assert management_api.received(listener.connection_id) == []
