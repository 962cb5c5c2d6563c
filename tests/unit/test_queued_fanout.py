"""Queued fan-out through the use cases: a publish past ``FANOUT_INLINE_MAX`` becomes jobs, the worker
delivers them exactly once, hands on what one invocation should not carry, re-queues what it could not
deliver, and asks SQS to retry only what it did not touch. fakeredis, the real fan-out, an in-memory
Management API and an in-memory queue (SQS itself: tests/integration and tests/e2e).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import fakeredis
import pytest

from chalicelib.auth import Gatekeeper
from chalicelib.broadcast import Broadcaster
from chalicelib.fanout import Fanout
from chalicelib.jobs import Job, JobQueue
from chalicelib.management_api import DeliveryError
from chalicelib.registry import ConnectionRegistry, Limits, RegistryUnavailable
from chalicelib.worker import MAX_JOB_ATTEMPTS, Worker
from tests.unit.test_broadcaster import InMemoryApi, join, recorded, say

INLINE_MAX = 5


class InMemoryQueue:
    """SQS as the worker sees it: SendMessageBatch in, batches of 10 out, a retried message back in."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.down = False
        self.sent = 0
        self.failing_entries: set[int] = set()  # entries SQS reports as Failed, counted from 1

    def send_message_batch(self, QueueUrl, Entries):
        if self.down:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=QueueUrl)
        taken, failed = [], []
        for entry in Entries:
            self.sent += 1
            (failed if self.sent in self.failing_entries else taken).append(entry)
        self.messages.extend((uuid.uuid4().hex, entry["MessageBody"]) for entry in taken)
        return {
            "Successful": [{"Id": entry["Id"]} for entry in taken],
            "Failed": [
                {"Id": entry["Id"], "Code": "InternalError", "SenderFault": False} for entry in failed
            ],
        }

    def drain(self, stage: Stage, *, max_receives: int = 3) -> int:
        """Run the worker until the queue is empty; how many invocations it took."""
        receives: dict[str, int] = {}
        invocations = 0
        while self.messages:
            batch, self.messages = self.messages[:10], self.messages[10:]
            invocations += 1
            retry = set(stage.worker.deliver_jobs(batch, remaining_seconds=60))
            for message_id, body in batch:
                receives[message_id] = receives.get(message_id, 0) + 1
                if message_id in retry and receives[message_id] < max_receives:
                    self.messages.append((message_id, body))
        return invocations


@pytest.fixture
def api() -> InMemoryApi:
    return InMemoryApi()


@pytest.fixture
def queue() -> InMemoryQueue:
    return InMemoryQueue()


@dataclass(frozen=True)
class Stage:
    """A stage's WebSocket use cases and its worker, sharing one registry, fan-out and queue, as
    chalicelib.wiring builds them; ``join`` and ``say`` use it as a broadcaster."""

    broadcaster: Broadcaster
    worker: Worker
    registry: ConnectionRegistry

    def connect(self, event):
        return self.broadcaster.connect(event)

    def publish(self, event, remaining_seconds):
        return self.broadcaster.publish(event, remaining_seconds)


def queued_stage(api, queue, *, shards=1, limits: Limits | None = None) -> Stage:
    registry = ConnectionRegistry(
        fakeredis.FakeRedis(decode_responses=True),
        prefix="queued",
        max_age_seconds=7200,
        shards=shards,
        inline_max=INLINE_MAX,
        limits=limits or Limits(),
    )
    fanout = Fanout(8)
    job_queue = JobQueue("https://sqs.us-east-1.amazonaws.com/123456789012/q", lambda: queue)
    broadcaster = Broadcaster(
        registry,
        api,
        fanout,
        Gatekeeper(None),
        publish_deadline_seconds=5,
        websocket_api=("a", "api"),
        job_queue=job_queue,
    )
    return Stage(broadcaster, Worker(registry, api, fanout, job_queue), registry)


@pytest.mark.parametrize("shards", [1, 4])
def test_a_large_audience_is_queued_and_every_recipient_gets_it_exactly_once(api, queue, json_log, shards):
    # GIVEN 23 connections, more than the 5 a publish delivers inline
    stage = queued_stage(api, queue, shards=shards, limits=Limits(max_posts_per_second=1000))
    sender, *others = [join(stage, api) for _ in range(23)]
    # WHEN one publishes THEN nothing is posted by its invocation: jobs are queued, one per shard with members
    assert say(stage, sender, {"type": 7, "data": "big"}) == 200
    assert api.inbox == {}
    assert 1 <= len(queue.messages) <= shards
    # AND the workers deliver it to each of the others once, never to the sender (no echo)
    queue.drain(stage)
    assert {c.connection_id: [m["data"] for m in api.inbox[c.connection_id]] for c in others} == {
        c.connection_id: ["big"] for c in others
    }
    assert sender.connection_id not in api.inbox
    # AND one id follows the publish through the sender's and every worker's lines
    lines = json_log()
    (queued,) = [line for line in lines if line["message"] == "queued"]
    delivered = [line for line in lines if line["message"] == "delivered"]
    # (one shard's count leaves the sender out in its script; sharded counts cannot tell where it is)
    assert queued["recipients"] == (22 if shards == 1 else 23) and queued["jobs"] == len(
        {line["shard"] for line in delivered if line["shard"] is not None}
    )
    assert {line["publish_id"] for line in delivered} == {queued["publish_id"]}
    assert sum(line["delivered"] for line in delivered) == 22


def test_a_shard_larger_than_one_invocation_should_carry_is_handed_on(api, queue, json_log):
    stage = queued_stage(api, queue)
    connections = [join(stage, api) for _ in range(17)]
    say(stage, connections[0], {"type": 1, "echo": True})
    invocations = queue.drain(stage)
    assert all(len(api.inbox[c.connection_id]) == 1 for c in connections)
    delivered = [line for line in json_log() if line["message"] == "delivered"]
    assert delivered[0]["handed_on"] == 12 and delivered[0]["recipients"] == INLINE_MAX
    assert queue.sent == 4, "the shard's job, then 3 jobs of at most 5 for the 12 beyond it"
    assert invocations == 2, "the three run side by side (one batch here)"


class FailingFor(InMemoryApi):
    """Fails posts to some connections with a 500 that is not retried in the invocation."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.attempts: dict[str, int] = {}

    def post_many(self, connection_ids, data, deadline):
        outcomes = []
        for connection_id in connection_ids:
            if connection_id in self.failing:
                self.attempts[connection_id] = self.attempts.get(connection_id, 0) + 1
                outcomes.append(DeliveryError(connection_id, 500, "InternalServerError"))
            else:
                outcomes.extend(super().post_many([connection_id], data, deadline))
        return outcomes


def test_undelivered_recipients_are_queued_again_alone_then_given_up(queue, json_log):
    api = FailingFor(set())
    stage = queued_stage(api, queue)
    connections = [join(stage, api) for _ in range(8)]
    unlucky = connections[3].connection_id
    api.failing.add(unlucky)
    say(stage, connections[0], {"type": 1, "echo": True})
    queue.drain(stage)
    # THEN everyone else got it once; the unlucky one was tried once per attempt, then given up
    assert all(len(api.inbox[c.connection_id]) == 1 for c in connections if c.connection_id != unlucky)
    assert api.attempts[unlucky] == MAX_JOB_ATTEMPTS
    failing = [line for line in json_log() if line["message"] == "delivered" and line["failed"]]
    assert [line["attempt"] for line in failing] == [1, 2, 3]
    assert [line["recipients"] for line in failing[1:]] == [1, 1], "only the undelivered one is retried"
    assert [line["given_up"] for line in failing] == [0, 0, 1]


def test_a_job_is_retried_whole_by_sqs_when_nothing_was_posted(api, queue, monkeypatch, json_log):
    stage = queued_stage(api, queue)
    connections = [join(stage, api) for _ in range(8)]
    say(stage, connections[0], {"type": 1})
    (message,) = queue.messages

    def down(*args, **kwargs):
        raise RegistryUnavailable("Redis failed: connection refused")

    monkeypatch.setattr(stage.registry, "read_shard", down)
    unreadable = ("m-bad", "{not a job")
    assert stage.worker.deliver_jobs([message, unreadable], remaining_seconds=60) == [message[0], "m-bad"]
    assert api.inbox == {}
    messages = [line["message"] for line in json_log()]
    assert "job not delivered: registry unavailable; SQS delivers it again" in messages
    assert "job unreadable: after its retries it goes to the dead-letter queue" in messages


def test_a_publish_that_cannot_be_queued_tells_its_sender_and_a_backend(api, queue):
    stage = queued_stage(api, queue)
    sender, *_ = [join(stage, api) for _ in range(8)]
    queue.down = True
    assert say(stage, sender, {"type": 1}) == 503
    (reply,) = api.inbox[sender.connection_id]
    assert reply["error"]["code"] == "queue_unavailable"
    status, body = stage.broadcaster.publish_from_backend(json.dumps({"type": 1}), remaining_seconds=10)
    assert status == 503 and body["error"]["code"] == "queue_unavailable"


def test_a_queued_backend_publish_is_accepted_with_its_id(api, queue):
    stage = queued_stage(api, queue)
    for _ in range(8):
        join(stage, api)
    status, body = stage.broadcaster.publish_from_backend(
        json.dumps({"type": 1, "data": "x"}), remaining_seconds=10
    )
    assert status == 202 and body["recipients"] == 8 and len(body["queued"]) == 32
    queue.drain(stage)
    assert sum(len(inbox) for inbox in api.inbox.values()) == 8


def test_recipients_the_budget_held_back_past_the_deadline_go_again_as_the_same_attempt(api, queue, json_log):
    # GIVEN a budget of one post a second, and a worker with half a second before its deadline
    stage = queued_stage(api, queue, limits=Limits(max_posts_per_second=1))
    connections = [join(stage, api) for _ in range(4)]
    jobs = [
        job
        for job in Job(publish_id="p", api_id="a", stage="api", payload=b'{"type":1}').for_recipients(
            [c.connection_id for c in connections], attempt=2, most=INLINE_MAX
        )
    ]
    queue.send_message_batch("q", [{"Id": "0", "MessageBody": jobs[0].to_body()}])
    (message,) = queue.messages
    queue.messages.clear()
    # WHEN it runs THEN it posts what the budget allows (one), and queues the rest, untried, as attempt 2
    assert stage.worker.deliver_jobs([message], remaining_seconds=1.5) == []
    assert sum(len(inbox) for inbox in api.inbox.values()) == 1
    (again,) = [Job.from_body(body) for _, body in queue.messages]
    assert (len(again.recipients), again.attempt) == (3, 2)
    (line,) = [line for line in json_log() if line["message"] == "delivered"]
    assert (line["queued_again"], line["given_up"]) == (3, 0)


def test_a_worker_without_its_queue_says_so_and_posts_nothing(api, json_log):
    registry = ConnectionRegistry(
        fakeredis.FakeRedis(decode_responses=True), prefix="q", max_age_seconds=7200
    )
    worker = Worker(registry, api, Fanout(8), None)
    body = Job(publish_id="p", api_id="a", stage="api", payload=b"{}", shard=0).to_body()
    assert worker.deliver_jobs([("m1", body)], remaining_seconds=60) == ["m1"]
    assert api.inbox == {}
    assert any("FANOUT_QUEUE_URL" in line["message"] for line in json_log())


def test_a_partly_failed_hand_on_sends_again_only_what_sqs_did_not_take(api, queue, json_log):
    # GIVEN a shard of 13, so a worker delivers 5 and hands on 8 in two jobs, and SQS refuses the second
    stage = queued_stage(api, queue)
    connections = [join(stage, api) for _ in range(13)]
    say(stage, connections[0], {"type": 1, "echo": True})
    queue.failing_entries = {3}  # the publish's job was the first entry; the hand-on's are 2 and 3
    queue.drain(stage)
    # THEN everyone gets it exactly once: the refused part goes with the worker's retries, alone
    assert sorted(len(api.inbox[c.connection_id]) for c in connections) == [1] * 13
    assert "the job is retried whole: its delivered recipients may receive it twice" not in [
        line["message"] for line in json_log()
    ]


def test_a_job_older_than_the_longest_connection_is_dropped(api, queue, json_log):
    stage = queued_stage(api, queue)
    connections = [join(stage, api) for _ in range(3)]
    old = Job(
        publish_id="p",
        api_id="a",
        stage="api",
        payload=b'{"type":1}',
        recipients=tuple(c.connection_id for c in connections),
        queued_at=int(time.time()) - 7200,
    )
    assert stage.worker.deliver_jobs([("m-old", old.to_body())], remaining_seconds=60) == []
    assert api.inbox == {}
    assert any(line["message"].startswith("job expired") for line in json_log())


def test_a_queued_publish_counts_its_jobs_and_each_worker_invocation_its_delivery(api, queue):
    # GIVEN 23 connections in 4 shards
    stage = queued_stage(api, queue, shards=4)
    sender, *_ = [join(stage, api) for _ in range(23)]
    # WHEN the sender publishes past the inline max
    published = recorded(lambda: say(stage, sender, {"type": 1}))
    # THEN its invocation counts the publish and the jobs it queued, and delivered nothing itself
    assert (published["Published"], published["QueuedJobs"]) == (1, len(queue.messages))
    assert "Delivered" not in published
    # AND each worker invocation counts what it delivered (and the jobs it handed on): 22 in all
    delivered = queued = 0
    while queue.messages:
        message = queue.messages.pop(0)
        document = recorded(
            lambda message=message: stage.worker.deliver_jobs([message], remaining_seconds=60)
        )
        delivered += document["Delivered"]
        queued += document.get("QueuedJobs", 0)
        assert document["Failed"] == document["Gone"] == 0
    assert delivered == 22
    assert queued > 0, "a shard of more than the inline max hands some on"
