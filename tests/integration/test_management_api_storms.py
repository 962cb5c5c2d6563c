"""A 429 storm at the Management API (API Gateway throttling the account's posts): retries stay
bounded, nothing is posted after the publish's deadline, and the delivery report counts what was not
delivered. The storm is a fault schedule of the stand-in, longer than the publish's deadline."""

from __future__ import annotations

import inspect
import time
from collections import Counter

import pytest

from chalicelib.fanout import Fanout
from testing.management_api import Storm
from tests.integration.test_channels import backend_publish

DEADLINE_SECONDS = 1.5
MAX_ATTEMPTS = inspect.signature(Fanout).parameters["max_attempts"].default
# A post starts before the deadline; it reaches the server within this much more.
ON_THE_WIRE_SECONDS = 0.05


@pytest.fixture
def short_deadline(monkeypatch, app_module):
    monkeypatch.setenv("PUBLISH_DEADLINE_SECONDS", str(DEADLINE_SECONDS))
    return app_module


def publish_during(storm: Storm, management_api, app_module) -> tuple[dict, float]:
    """Start the storm and publish to everyone from a backend: the delivery report, and the time
    taken just before the publish began."""
    management_api.faults = storm
    started = time.monotonic()
    status, report = backend_publish(app_module, {"type": 1, "data": "storm"})
    assert status == 200
    return report, started


def test_a_storm_on_half_the_posts_delivers_everything_once_with_bounded_retries(
    gateway, management_api, short_deadline
):
    # GIVEN 20 clients WHEN a storm answers 429 to every other post of each connection, for 10 s
    clients = [gateway.connect()[0] for _ in range(20)]
    report, started = publish_during(Storm(seconds=10, every=2), management_api, short_deadline)
    # THEN each recipient got the message exactly once, on its second post
    assert report == {"recipients": 20, "delivered": 20, "gone": 0, "failed": 0}
    for client in clients:
        assert [m["data"] for m in management_api.received(client.connection_id)] == ["storm"]
    assert Counter(cid for cid, _, _ in management_api.post_log) == {c.connection_id: 2 for c in clients}
    # AND nothing reached the server after the deadline
    assert max(at for _, at, _ in management_api.post_log) < started + DEADLINE_SECONDS + ON_THE_WIRE_SECONDS


def test_recipients_throttled_past_the_deadline_are_counted_as_failed_and_never_posted_to_late(
    gateway, management_api, short_deadline
):
    # GIVEN 20 clients WHEN a storm answers 429 to every post to half of them, for 10 s
    clients = [gateway.connect()[0] for _ in range(20)]
    throttled = frozenset(c.connection_id for c in clients[::2])
    storm = Storm(seconds=10, every=1, only=throttled)
    report, started = publish_during(storm, management_api, short_deadline)
    # THEN the report counts the throttled half as failed and the other half as delivered
    assert report == {"recipients": 20, "delivered": 10, "gone": 0, "failed": 10}
    for client in clients:
        expected = [] if client.connection_id in throttled else ["storm"]
        assert [m["data"] for m in management_api.received(client.connection_id)] == expected
    # AND each throttled recipient was tried a bounded number of times, none after the deadline
    attempts = Counter(cid for cid, _, status in management_api.post_log if status == 429)
    assert set(attempts) == throttled
    assert max(attempts.values()) <= MAX_ATTEMPTS
    assert max(at for _, at, _ in management_api.post_log) < started + DEADLINE_SECONDS + ON_THE_WIRE_SECONDS


def test_a_storm_ends_on_its_own_clock():
    # GIVEN a 10 s storm on every post, on a clock the test moves
    now = [0.0]
    storm = Storm(seconds=10, every=1, clock=lambda: now[0])
    # THEN it throttles from its first post until 10 s later, and never after
    assert storm("a", 1) == 429
    now[0] = 9.9
    assert storm("a", 2) == 429
    now[0] = 10.0
    assert storm("a", 3) is None
    # AND every=2 throttles a connection's 1st, 3rd, ... post only
    storm = Storm(seconds=10, every=2, clock=lambda: 0.0)
    assert [storm("b", n) for n in (1, 2, 3, 4)] == [429, None, 429, None]
