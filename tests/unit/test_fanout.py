"""Fan-out: concurrent, bounded, never failed by one recipient, 429 retried, within its deadline."""

import threading
import time

import pytest

from chalicelib.fanout import POSTS_PER_THREAD, Fanout, Outcome, PostPacer, _outcome, never_posted
from chalicelib.management_api import DeliveryError, Gone

PAYLOAD = b'{"type":1,"data":null,"received":0}'


def far_deadline() -> float:
    return time.monotonic() + 30


def one_by_one(post):
    """A batch poster (the Management API client's contract) from a function posting one id or raising."""

    def post_many(connection_ids, payload, deadline):
        outcomes = []
        for connection_id in connection_ids:
            try:
                post(connection_id, payload)
                outcomes.append(None)
            except DeliveryError as failure:
                outcomes.append(failure)
        return outcomes

    return post_many


def test_batches_are_posted_concurrently_and_add_up_to_the_worker_count():
    # GIVEN 8 workers, carried by 2 threads of 4, and batches that only return once both are in flight
    both_in_flight = threading.Barrier(8 // POSTS_PER_THREAD, timeout=10)
    batches = []

    def post_many(connection_ids, payload, deadline):
        batches.append(list(connection_ids))
        both_in_flight.wait()
        return [None] * len(connection_ids)

    # WHEN 16 recipients are served THEN every batch completes: 2 batches of 4 ran at once, twice
    report = Fanout(posts_in_flight=8).deliver(
        post_many, PAYLOAD, [f"c{i}" for i in range(16)], deadline=far_deadline()
    )
    assert report.delivered == 16
    assert sorted(len(batch) for batch in batches) == [4, 4, 4, 4]
    assert sorted(c for batch in batches for c in batch) == sorted(f"c{i}" for i in range(16))


@pytest.mark.parametrize("posts_in_flight", [1, 3, 10, 64])
def test_exactly_as_many_posts_in_flight_as_asked_never_more(posts_in_flight):
    # GIVEN posts that stay in flight until as many as asked have been in flight at once
    in_flight, most = 0, 0
    changed = threading.Condition()

    def post_many(connection_ids, payload, deadline):
        nonlocal in_flight, most
        with changed:
            in_flight += len(connection_ids)
            most = max(most, in_flight)
            changed.notify_all()
            assert changed.wait_for(lambda: most >= posts_in_flight, timeout=10), "posts never overlapped"
            in_flight -= len(connection_ids)
        return [None] * len(connection_ids)

    # WHEN 300 recipients are served THEN the posts overlapped up to the bound, and never past it
    report = Fanout(posts_in_flight=posts_in_flight).deliver(
        post_many, PAYLOAD, [f"c{i}" for i in range(300)], deadline=far_deadline()
    )
    assert report.delivered == 300
    assert most == posts_in_flight


def test_one_failure_never_fails_the_others_and_gone_ones_are_reported():
    def post(connection_id, payload):
        if connection_id == "gone":
            raise Gone(connection_id, 410, "GoneException")
        if connection_id == "big":
            raise DeliveryError(connection_id, 413, "PayloadTooLargeException")
        if connection_id == "broken":
            raise DeliveryError(connection_id, None, "EndpointConnectionError")

    report = Fanout(posts_in_flight=2).deliver(
        one_by_one(post), PAYLOAD, ["a", "gone", "big", "b", "broken"], deadline=far_deadline()
    )
    assert report.recipients == 5
    assert report.delivered == 2
    assert report.gone == ["gone"]
    assert report.failed == {
        "big": "413 PayloadTooLargeException",
        "broken": "no answer EndpointConnectionError",
    }


def test_throttled_posts_are_retried_alone_until_they_pass():
    answers = {"a": 2, "b": 0}
    batches = []

    def post_many(connection_ids, payload, deadline):
        batches.append(list(connection_ids))
        return one_by_one(throttle_a)(connection_ids, payload, deadline)

    def throttle_a(connection_id, payload):
        if answers[connection_id] > 0:
            answers[connection_id] -= 1
            raise DeliveryError(connection_id, 429, "LimitExceededException", retryable=True)

    fanout = Fanout(posts_in_flight=4, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    report = fanout.deliver(post_many, PAYLOAD, ["a", "b"], deadline=far_deadline())
    assert report.delivered == 2
    assert not report.failed
    assert batches == [["a", "b"], ["a"], ["a"]]


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (DeliveryError("a", 502, "BadGateway", retryable=True), True),
        (DeliveryError("a", 503, "ServiceUnavailable", retryable=True), True),
        (DeliveryError("a", None, "NewConnectionError", retryable=True), True),
        (DeliveryError("a", 500, "InternalServerError"), False),
        (DeliveryError("a", 504, "GatewayTimeout"), False),
        (DeliveryError("a", None, "TimeoutError"), False),
    ],
)
def test_only_failures_that_were_not_delivered_are_posted_again(failure, retried):
    # GIVEN a recipient whose first post fails this way, and whose second would pass
    posts = []

    def post_many(connection_ids, payload, deadline):
        posts.append(list(connection_ids))
        return [failure if len(posts) == 1 else None]

    fanout = Fanout(posts_in_flight=1, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    report = fanout.deliver(post_many, PAYLOAD, ["a"], deadline=far_deadline())
    # THEN only a failure that cannot have been delivered is posted again: never a duplicate
    assert len(posts) == (2 if retried else 1)
    assert report.delivered == (1 if retried else 0)


def test_throttling_that_never_ends_is_counted_as_failed():
    def post(connection_id, payload):
        raise DeliveryError(connection_id, 429, "LimitExceededException", retryable=True)

    fanout = Fanout(posts_in_flight=1, max_attempts=3, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    report = fanout.deliver(one_by_one(post), PAYLOAD, ["a"], deadline=far_deadline())
    assert report.failed == {"a": "429 LimitExceededException after 3 attempts"}


def test_the_publish_ends_at_its_deadline_and_counts_the_unfinished():
    # GIVEN posts that hang until the test releases them
    release = threading.Event()

    def post(connection_id, payload):
        release.wait(30)

    try:
        # WHEN the deadline passes THEN deliver returns and every recipient counts as failed by it
        report = Fanout(posts_in_flight=2).deliver(
            one_by_one(post), PAYLOAD, ["a", "b", "c"], deadline=time.monotonic() + 0.2
        )
    finally:
        release.set()
    assert report.delivered == 0
    # a and b were taken (a was on the wire), c never left the queue: it was certainly not posted
    assert report.failed["a"] == report.failed["b"] == Outcome.DEADLINE_EXCEEDED
    assert never_posted(report.failed["c"]) and not never_posted(Outcome.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("recipients", [[], ["only"]])
def test_small_publishes(recipients):
    report = Fanout(posts_in_flight=8).deliver(
        one_by_one(lambda c, p: None), PAYLOAD, recipients, deadline=far_deadline()
    )
    assert report.delivered == len(recipients)


class FakeTime:
    """A clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Budget:
    """The whole API's post budget as the registry leases it: ``rate`` a second, never into debt."""

    def __init__(self, time_source: FakeTime, rate: int) -> None:
        self.time = time_source
        self.rate = rate
        self.tokens = float(rate)
        self.at = 0.0
        self.leases = 0

    def lease(self, count: int) -> tuple[int, float]:
        self.leases += 1
        self.tokens = min(self.rate, self.tokens + (self.time.now - self.at) * self.rate)
        self.at = self.time.now
        wanted = min(count, self.rate)
        if self.tokens < wanted:
            return 0, (wanted - self.tokens) / self.rate
        self.tokens -= wanted
        return wanted, 0.0


def test_paced_posts_keep_to_the_budget_leased_in_chunks():
    # GIVEN a budget of 10 posts a second, leased 5 at a time
    fake = FakeTime()
    budget = Budget(fake, rate=10)
    posted_at = []
    pacer = PostPacer(budget.lease, chunk=5, clock=fake.clock, sleep=fake.sleep)
    paced = pacer.paced(
        lambda batch, payload, deadline: [posted_at.append(fake.now) for _ in batch] and [None] * len(batch)
    )
    # WHEN 30 posts go out, two at a time
    for _ in range(15):
        assert paced(["a", "b"], PAYLOAD, 100.0) == [None, None]
    # THEN the first 10 go at once (a full bucket) and the other 20 take 2 seconds, never faster
    assert len(posted_at) == 30
    assert posted_at[9] == 0.0
    assert posted_at[-1] == pytest.approx(2.0, abs=0.11)
    for index in range(10, 30):
        assert posted_at[index] >= (index - 10) / 10 - 0.11, "at most 10 a second after the burst"
    assert budget.leases <= 2 * 30 / 5, (
        "one lease per chunk, and one wait before each once the bucket is empty"
    )


def test_a_post_the_budget_cannot_cover_before_the_deadline_is_not_made():
    fake = FakeTime()
    pacer = PostPacer(lambda count: (0, 0.5), chunk=5, clock=fake.clock, sleep=fake.sleep)
    made = []
    paced = pacer.paced(lambda batch, payload, deadline: made.extend(batch) or [None] * len(batch))
    outcomes = paced(["a", "b"], PAYLOAD, 1.2)
    assert made == []
    assert [failure.reason for failure in outcomes] == ["deadline exceeded waiting for the post budget"] * 2
    assert not any(failure.retryable for failure in outcomes)
    assert all(never_posted(_outcome(failure)) for failure in outcomes), "a worker may send them again"
    assert fake.now < 1.2, "it gave up before the deadline, not after"


def in_order_poster(answers: list):
    """Posts to one recipient, answering each post with the next of ``answers`` (None: delivered)."""
    posted = []

    def post_many(connection_ids, payload, deadline):
        assert threading.current_thread() is threading.main_thread(), "in order means in the caller's thread"
        posted.append(payload)
        answer = answers.pop(0)
        return [answer]

    return post_many, posted


def test_messages_in_order_go_one_after_another_and_stop_at_the_first_that_fails():
    throttled = DeliveryError("r", 429, "LimitExceededException", retryable=True)
    post_many, posted = in_order_poster([None, throttled, None, Gone("r", 410, "GoneException"), None])
    fanout = Fanout(posts_in_flight=4, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
    # WHEN four messages are replayed: the second is throttled once, the third is answered 410
    delivered, failure = fanout.deliver_in_order(
        post_many, [b"1", b"2", b"3", b"4"], "r", deadline=far_deadline()
    )
    # THEN the first two arrive in order (the second after its retry), and nothing after the gone one
    assert (delivered, failure) == (2, Outcome.GONE)
    assert posted == [b"1", b"2", b"2", b"3"]


def test_messages_in_order_all_delivered_and_none_after_the_deadline():
    post_many, posted = in_order_poster([None, None])
    fanout = Fanout(posts_in_flight=4)
    assert fanout.deliver_in_order(post_many, [b"1", b"2"], "r", deadline=far_deadline()) == (2, None)
    assert fanout.deliver_in_order(post_many, [b"3"], "r", deadline=time.monotonic() - 1) == (
        0,
        Outcome.NOT_STARTED,
    )
    assert posted == [b"1", b"2"]
