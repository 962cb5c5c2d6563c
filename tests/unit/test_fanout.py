"""Fan-out: concurrent, bounded, never failed by one recipient, 429 retried, within its deadline."""

import threading
import time

import pytest

from chalicelib.fanout import DEADLINE_EXCEEDED, Fanout
from chalicelib.management_api import DeliveryError, Gone, Throttled

PAYLOAD = b'{"type":1,"data":null,"received":0}'


def far_deadline() -> float:
    return time.monotonic() + 30


def test_posts_run_concurrently_up_to_the_worker_count():
    # GIVEN 4 workers and posts that only complete once 4 are in flight together
    all_in_flight = threading.Barrier(4, timeout=10)
    delivered = []

    def post(connection_id, payload):
        all_in_flight.wait()
        delivered.append(connection_id)

    # WHEN 8 recipients are served THEN every post completes: 4 ran at once, twice
    report = Fanout(workers=4).deliver(post, PAYLOAD, [f"c{i}" for i in range(8)], deadline=far_deadline())
    assert report.delivered == 8
    assert sorted(delivered) == sorted(f"c{i}" for i in range(8))


def test_no_more_posts_in_flight_than_workers():
    in_flight, most = 0, 0
    lock = threading.Lock()

    def post(connection_id, payload):
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        with lock:
            in_flight -= 1

    report = Fanout(workers=3).deliver(post, PAYLOAD, [f"c{i}" for i in range(200)], deadline=far_deadline())
    assert report.delivered == 200
    assert most <= 3


def test_one_failure_never_fails_the_others_and_gone_ones_are_reported():
    def post(connection_id, payload):
        if connection_id == "gone":
            raise Gone(connection_id, 410, "GoneException")
        if connection_id == "big":
            raise DeliveryError(connection_id, 413, "PayloadTooLargeException")
        if connection_id == "broken":
            raise DeliveryError(connection_id, None, "EndpointConnectionError")

    report = Fanout(workers=2).deliver(
        post, PAYLOAD, ["a", "gone", "big", "b", "broken"], deadline=far_deadline()
    )
    assert report.recipients == 5
    assert report.delivered == 2
    assert report.gone == ["gone"]
    assert report.failed == {
        "big": "413 PayloadTooLargeException",
        "broken": "no answer EndpointConnectionError",
    }


def test_throttled_posts_are_retried_until_they_pass():
    answers = {"a": 2}

    def post(connection_id, payload):
        if answers[connection_id] > 0:
            answers[connection_id] -= 1
            raise Throttled(connection_id, 429, "LimitExceededException")

    fanout = Fanout(workers=1, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    report = fanout.deliver(post, PAYLOAD, ["a"], deadline=far_deadline())
    assert report.delivered == 1
    assert not report.failed


def test_throttling_that_never_ends_is_counted_as_failed():
    def post(connection_id, payload):
        raise Throttled(connection_id, 429, "LimitExceededException")

    fanout = Fanout(workers=1, max_attempts=3, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    report = fanout.deliver(post, PAYLOAD, ["a"], deadline=far_deadline())
    assert report.failed == {"a": "429 LimitExceededException after 3 attempts"}


def test_the_publish_ends_at_its_deadline_and_counts_the_unfinished():
    # GIVEN posts that hang until the test releases them
    release = threading.Event()

    def post(connection_id, payload):
        release.wait(30)

    try:
        # WHEN the deadline passes THEN deliver returns and every recipient counts as failed by it
        report = Fanout(workers=2).deliver(post, PAYLOAD, ["a", "b", "c"], deadline=time.monotonic() + 0.2)
    finally:
        release.set()
    assert report.delivered == 0
    assert report.failed == {"a": DEADLINE_EXCEEDED, "b": DEADLINE_EXCEEDED, "c": DEADLINE_EXCEEDED}


@pytest.mark.parametrize("recipients", [[], ["only"]])
def test_small_publishes(recipients):
    report = Fanout(workers=8).deliver(lambda c, p: None, PAYLOAD, recipients, deadline=far_deadline())
    assert report.delivered == len(recipients)
