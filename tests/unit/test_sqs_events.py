"""The SQS events the fakes build are the events Lambda sends (tests/fixtures/sqs_events/), and the
event source mapping deletes what Lambda deletes after a function's answer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from localgw.sqs import deletable
from testing.sqs import queue_arn, queue_name, queue_url, record_from_message, sqs_event, sqs_record
from tests.e2e.localgw_harness import assert_same_shape

RECORDED = json.loads((Path(__file__).parents[1] / "fixtures" / "sqs_events" / "message.json").read_text())
RECORD_WITH_ATTRIBUTE, RECORD = RECORDED["Records"]


def test_a_built_event_has_the_recorded_shape():
    event = sqs_event([sqs_record('{"job": 1}'), sqs_record("two")])
    assert len(event["Records"]) == 2
    for record in event["Records"]:
        assert_same_shape(record, RECORD, "record")


def test_a_record_carries_what_it_was_given_as_lambda_writes_it():
    arn = queue_arn("jobs", region="eu-west-1", account_id="111122223333")
    record = sqs_record(
        "Test message.", message_id="m-1", receive_count=3, queue_arn=arn, sent_timestamp_ms=1545082649183
    )
    assert record["messageId"] == "m-1"
    assert record["md5OfBody"] == RECORD["md5OfBody"]  # the recorded body is "Test message."
    assert record["attributes"]["ApproximateReceiveCount"] == "3"
    assert record["attributes"]["SentTimestamp"] == "1545082649183"
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == arn
    assert record["awsRegion"] == "eu-west-1"


def test_a_received_message_becomes_the_record_lambda_sends():
    message = {
        "MessageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "MD5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "Body": "Test message.",
        "Attributes": {
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "SentTimestamp": "1545082649183",
            "ApproximateReceiveCount": "1",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "MessageAttributes": {"myAttribute": {"StringValue": "myValue", "DataType": "String"}},
    }
    record = record_from_message(message, queue_arn="arn:aws:sqs:us-east-2:123456789012:my-queue")
    assert record == RECORD_WITH_ATTRIBUTE


def test_a_binary_attribute_travels_in_base64():
    message = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "Body": "b",
        "Attributes": RECORD["attributes"],
        "MessageAttributes": {"blob": {"BinaryValue": b"\x00\x01", "DataType": "Binary"}},
    }
    record = record_from_message(message, queue_arn=queue_arn("q"))
    assert record["messageAttributes"]["blob"] == {
        "binaryValue": "AAE=",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Binary",
    }


@given(st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True))
def test_a_queue_is_named_by_its_url_or_arn(name):
    assert queue_name(queue_url(name)) == name
    assert queue_name(queue_arn(name)) == name
    assert queue_name(f"http://127.0.0.1:5000/000000000000/{name}") == name


def _batch(*bodies: str) -> list[dict]:
    return [sqs_record(body, message_id=f"id-{n}") for n, body in enumerate(bodies)]


def test_a_returned_function_has_its_whole_batch_deleted():
    records = _batch("a", "b")
    for response in (None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, "done"):
        assert deletable(records, response)[0] == records


def test_only_the_records_named_in_batch_item_failures_stay():
    records = _batch("a", "b", "c")
    kept, said = deletable(records, {"batchItemFailures": [{"itemIdentifier": "id-1"}]})
    assert [r["messageId"] for r in kept] == ["id-0", "id-2"]
    assert said == "3 records, 1 failed"


def test_a_failure_naming_no_record_of_the_batch_fails_the_whole_batch():
    records = _batch("a", "b")
    for failures in ([{"itemIdentifier": "elsewhere"}], [{"itemIdentifier": ""}], [{}], ["id-0"]):
        kept, said = deletable(records, {"batchItemFailures": failures})
        assert kept == []
        assert "all failed" in said


def test_md5_of_body_is_of_the_utf8_bytes():
    assert sqs_record("é")["md5OfBody"] == hashlib.md5("é".encode()).hexdigest()
