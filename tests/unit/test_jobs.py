"""Queued fan-out's jobs: bodies SQS accepts and a worker reads back exactly; batches within SQS's limits."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.fanout import Outcome
from chalicelib.jobs import MAX_BATCH_ENTRIES, MAX_BODY_BYTES, InvalidJob, Job, JobQueue
from chalicelib.worker import MAX_JOB_ATTEMPTS, jobs_again

CONNECTION_ID = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=16, max_size=16
)
# Characters SQS refuses in a body (U+FFFE, control characters) may be in a payload's JSON text.
PAYLOAD = st.text(min_size=0, max_size=200).map(
    lambda text: json.dumps({"data": text}, ensure_ascii=False).encode()
)


def job(**overrides) -> Job:
    fields = {"publish_id": "p1", "api_id": "abc123", "stage": "api", "payload": b'{"type":1}', "shard": 0}
    return Job(**{**fields, **overrides})


# SQS accepts #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF in a body.
def sqs_accepts(body: str) -> bool:
    return all(
        ch in "\t\n\r" or 0x20 <= ord(ch) <= 0xD7FF or 0xE000 <= ord(ch) <= 0xFFFD or ord(ch) >= 0x10000
        for ch in body
    )


@given(
    payload=PAYLOAD,
    channel=st.none() | st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
    exclude=st.none() | CONNECTION_ID,
    target=st.integers(0, 1023) | st.lists(CONNECTION_ID, min_size=1, max_size=20),
    attempt=st.integers(1, 5),
)
def test_a_job_reads_back_exactly_from_a_body_sqs_accepts(payload, channel, exclude, target, attempt):
    shard, recipients = (target, ()) if isinstance(target, int) else (None, tuple(target))
    original = job(
        payload=payload,
        channel=channel,
        exclude=exclude,
        shard=shard,
        recipients=recipients,
        attempt=attempt if recipients else 1,
    )
    body = original.to_body()
    assert sqs_accepts(body)
    assert Job.from_body(body) == original


@given(st.text(max_size=300) | st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
def test_anything_else_is_an_invalid_job_never_a_crash(body):
    with contextlib.suppress(InvalidJob):
        Job.from_body(body)


@pytest.mark.parametrize(
    "body",
    [
        '{"v": 2, "publish": "p", "api": ["a", "s"], "payload": "", "shard": 0}',
        '{"v": 1, "publish": "p", "api": ["a", "s"], "payload": "", "shard": 0, "recipients": ["x"]}',
        '{"v": 1, "publish": "p", "api": ["a", "s"], "payload": ""}',
        '{"v": 1, "publish": "p", "api": ["a", "s"], "payload": "not base64!", "shard": 0}',
        '{"v": 1, "publish": "p", "api": "a", "payload": "", "shard": 0}',
        "[]",
    ],
)
def test_a_body_that_is_not_exactly_one_job_is_refused(body):
    with pytest.raises(InvalidJob):
        Job.from_body(body)


@pytest.mark.parametrize("payload_bytes", [10, 128 * 1024])
def test_recipient_jobs_split_to_fit_one_sqs_message_each(payload_bytes):
    ids = [f"{index:015d}=" for index in range(30_000)]
    jobs = job(payload=b"x" * payload_bytes).for_recipients(ids, attempt=2, most=100_000)
    assert [r for j in jobs for r in j.recipients] == ids
    assert all(
        len(j.to_body().encode()) <= MAX_BODY_BYTES and j.attempt == 2 and j.shard is None for j in jobs
    )


class RecordingSqs:
    """What SQS's SendMessageBatch checks: at most 10 entries and 256 KiB in all; fails entries on request."""

    def __init__(self, fail_ids=()) -> None:
        self.batches: list[list[dict]] = []
        self.fail_ids = set(fail_ids)

    def send_message_batch(self, QueueUrl, Entries):
        assert len(Entries) <= MAX_BATCH_ENTRIES
        assert sum(len(entry["MessageBody"].encode()) for entry in Entries) <= MAX_BODY_BYTES
        self.batches.append(Entries)
        failed = [
            {"Id": entry["Id"], "Code": "InternalError", "SenderFault": False}
            for entry in Entries
            if json.loads(entry["MessageBody"])["publish"] in self.fail_ids
        ]
        return {"Successful": [], "Failed": failed}


def test_jobs_go_in_as_few_batches_as_the_limits_allow_and_failures_are_named():
    sqs = RecordingSqs(fail_ids={"p7"})
    queue = JobQueue("https://sqs.us-east-1.amazonaws.com/123456789012/q", lambda: sqs)
    small = [job(publish_id=f"p{index}", shard=index) for index in range(25)]
    failed = queue.send(small)
    assert [len(batch) for batch in sqs.batches] == [10, 10, 5]
    assert [(j.publish_id, reason.split(":")[0]) for j, reason in failed] == [("p7", "InternalError")]
    large = [job(publish_id=f"L{index}", shard=index, payload=b"x" * 100_000) for index in range(4)]
    sqs.batches.clear()
    assert queue.send(large) == []
    assert [len(batch) for batch in sqs.batches] == [1, 1, 1, 1], "133 KB bodies: one per 256 KiB batch"


def test_recipient_jobs_hold_at_most_what_one_invocation_should_carry_and_long_ids_still_fit():
    ids = [f"{index:015d}=" for index in range(25_000)]
    assert [len(j.recipients) for j in job().for_recipients(ids[:25], attempt=1, most=10)] == [10, 10, 5]
    assert [len(j.recipients) for j in job().for_recipients(ids, attempt=1, most=10_000)] == [
        10_000,
        10_000,
        5_000,
    ]
    long_ids = [f"{index:0127d}=" for index in range(5_000)]
    jobs = job().for_recipients(long_ids, attempt=1, most=10_000)
    assert len(jobs) > 1 and all(len(j.to_body().encode()) <= MAX_BODY_BYTES for j in jobs)


@pytest.mark.parametrize("attempt", [1, MAX_JOB_ATTEMPTS])
def test_what_goes_again_never_posted_as_the_same_attempt_tried_as_the_next_until_the_last(attempt):
    failed = {
        "never-1": Outcome.NOT_STARTED,
        "never-2": Outcome.BUDGET_DEADLINE,
        "tried-1": Outcome.DEADLINE_EXCEEDED,
        "tried-2": "500 InternalServerErrorException after 5 attempts",
    }
    again, given_up = jobs_again(job(attempt=attempt), failed, most=10)
    by_attempt = {j.attempt: sorted(j.recipients) for j in again}
    if attempt < MAX_JOB_ATTEMPTS:
        assert by_attempt == {attempt: ["never-1", "never-2"], attempt + 1: ["tried-1", "tried-2"]}
        assert given_up == 0
    else:
        assert by_attempt == {attempt: ["never-1", "never-2"]}, "sending to them again is no retry"
        assert given_up == 2
