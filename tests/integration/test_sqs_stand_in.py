"""The SQS stand-in (moto over HTTP) does what the app and the local gateway rely on SQS to do, through
boto3's own JSON protocol: no sleeping, every wait is a long poll with a deadline."""

from __future__ import annotations

import itertools
import time

import pytest
from botocore.exceptions import ClientError

from testing.sqs import MAX_MESSAGE_BYTES, SqsStandIn, create_queue_with_dlq, depth, queue_url

_names = itertools.count()


@pytest.fixture(scope="module")
def sqs():
    with SqsStandIn() as stand_in:
        yield stand_in.client()


@pytest.fixture
def queue(sqs):
    """A queue of this test's own (the module's tests share one stand-in)."""
    return create_queue_with_dlq(
        sqs, f"stand-in-{next(_names)}", visibility_timeout_seconds=1, max_receive_count=2
    )


def _receive(sqs, url: str, *, deadline_seconds: float = 10, count: int = 10) -> list[dict]:
    """Long-poll until a message comes, within a deadline."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=count, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        if messages:
            return messages
    raise AssertionError(f"nothing arrived in {url} within {deadline_seconds} s")


def test_the_json_protocol_round_trip_of_the_calls_the_app_and_the_gateway_make(sqs, queue):
    sent = sqs.send_message_batch(
        QueueUrl=queue.url, Entries=[{"Id": str(n), "MessageBody": f"job {n}"} for n in range(10)]
    )
    assert len(sent["Successful"]) == 10
    received = []
    while len(received) < 10:
        received += _receive(sqs, queue.url)
    assert sorted(m["Body"] for m in received) == sorted(f"job {n}" for n in range(10))
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in received} == {"1"}
    deleted = sqs.delete_message_batch(
        QueueUrl=queue.url,
        Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(received)],
    )
    assert len(deleted["Successful"]) == 10
    assert depth(sqs, queue.url) == (0, 0)


def test_a_message_received_and_not_deleted_returns_after_the_visibility_timeout(sqs, queue):
    sqs.send_message(QueueUrl=queue.url, MessageBody="again")
    first = _receive(sqs, queue.url)[0]
    received_at = time.monotonic()
    assert depth(sqs, queue.url) == (0, 1)  # hidden, not gone
    again = _receive(sqs, queue.url)[0]
    # A lower bound: the visibility timeout (1 s) is wall-clock time, however busy the machine is.
    assert time.monotonic() - received_at >= 0.9
    assert again["MessageId"] == first["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert again["ReceiptHandle"] != first["ReceiptHandle"]


def test_change_message_visibility_to_zero_returns_a_message_at_once(sqs):
    slow = create_queue_with_dlq(
        sqs, f"stand-in-{next(_names)}", visibility_timeout_seconds=600, max_receive_count=5
    )
    sqs.send_message(QueueUrl=slow.url, MessageBody="back")
    first = _receive(sqs, slow.url)[0]
    sqs.change_message_visibility(
        QueueUrl=slow.url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    assert _receive(sqs, slow.url)[0]["MessageId"] == first["MessageId"]


def test_after_max_receive_count_receives_the_message_is_in_the_dead_letter_queue(sqs, queue):
    sqs.send_message(QueueUrl=queue.url, MessageBody="poison")
    for _ in range(2):  # maxReceiveCount = 2
        _receive(sqs, queue.url)
    # A receive after its visibility timeout finds it due for the dead-letter queue, and never delivers it.
    deadline = time.monotonic() + 10
    while depth(sqs, queue.dlq_url) == (0, 0):
        assert time.monotonic() < deadline, "the message never reached the dead-letter queue"
        assert "Messages" not in sqs.receive_message(QueueUrl=queue.url, WaitTimeSeconds=1)
    assert [m["Body"] for m in _receive(sqs, queue.dlq_url)] == ["poison"]
    assert depth(sqs, queue.url) == (0, 0)


def test_a_queue_is_found_by_its_name_whatever_host_and_account_its_url_names(sqs, queue):
    for url in (
        queue_url(queue.name),
        queue_url(queue.name, region="eu-west-1", account_id="111122223333"),
        f"http://localhost:1/000000000000/{queue.name}",
    ):
        sqs.send_message(QueueUrl=url, MessageBody=url)
    received = []
    while len(received) < 3:
        received += _receive(sqs, queue.url)
    assert len(received) == 3


def test_a_message_over_256_kib_is_refused_as_sqs_refuses_it(sqs, queue):
    sqs.send_message(QueueUrl=queue.url, MessageBody="x" * MAX_MESSAGE_BYTES)  # exactly the limit: fine
    with pytest.raises(ClientError) as refused:
        sqs.send_message(QueueUrl=queue.url, MessageBody="x" * (MAX_MESSAGE_BYTES + 1))
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as refused:
        sqs.send_message_batch(
            QueueUrl=queue.url, Entries=[{"Id": "big", "MessageBody": "x" * (MAX_MESSAGE_BYTES + 1)}]
        )
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_a_batch_of_more_than_10_entries_or_1_mib_is_refused(sqs, queue):
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest):
        sqs.send_message_batch(
            QueueUrl=queue.url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(11)]
        )
    with pytest.raises(sqs.exceptions.BatchRequestTooLong):
        sqs.send_message_batch(
            QueueUrl=queue.url,
            Entries=[{"Id": str(n), "MessageBody": "x" * MAX_MESSAGE_BYTES} for n in range(5)],
        )
    assert depth(sqs, queue.url) == (0, 0)  # nothing of a refused batch was queued
