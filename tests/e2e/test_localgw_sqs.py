"""The local gateway runs the fixture app's ``@app.on_sqs_message`` worker as Lambda's SQS event source
mapping does: batches, partial batch failures, redelivery after the visibility timeout, the dead-letter
queue. Every wait is on the gateway's lines or on the queue's state, with a deadline."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import boto3
import pytest

from testing.sqs import SqsStandIn, create_queue_with_dlq, depth, queue_url
from tests.e2e.localgw_harness import GatewayProcess, assert_same_shape

QUEUE = "fixture-jobs"  # the fixture app's @app.on_sqs_message
RECORDED = json.loads((Path(__file__).parents[1] / "fixtures" / "sqs_events" / "message.json").read_text())
# What a test's gateway is told: one poller, so a batch is what was queued; failures return after 1 s.
FAST = ("--sqs-pollers", "1", "--sqs-visibility-timeout-seconds", "1", "--sqs-max-receive-count", "2")
WORKER_LINE = r"sqs\s+fixture_worker\s+"


@pytest.fixture(scope="module")
def stand_in():
    with SqsStandIn() as sqs:
        yield sqs


@pytest.fixture
def queue(stand_in):
    """The fixture app's queue, empty, in the test's own stand-in (the gateway reuses it, as it would
    reuse one named by AWS_ENDPOINT_URL_SQS)."""
    client = stand_in.client()
    for name in (QUEUE, QUEUE + "-dlq"):
        if name in [url.rsplit("/", 1)[-1] for url in client.list_queues().get("QueueUrls", [])]:
            client.delete_queue(QueueUrl=queue_url(name))
    return client, create_queue_with_dlq(client, QUEUE, visibility_timeout_seconds=1, max_receive_count=2)


def _queued_then_served(start_gateway, stand_in, client, bodies: list[str]) -> tuple[GatewayProcess, dict]:
    """Queue ``bodies`` in one batch, then start a gateway on the stand-in: its one poller's first
    receive takes them all. Returns the gateway and the message ids by body."""
    sent = client.send_message_batch(
        QueueUrl=queue_url(QUEUE), Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies)]
    )
    ids = {bodies[int(entry["Id"])]: entry["MessageId"] for entry in sent["Successful"]}
    gw = start_gateway(*FAST, env={"AWS_ENDPOINT_URL_SQS": stand_in.endpoint})
    return gw, ids


def _deliveries(gw: GatewayProcess) -> list[list[dict]]:
    """The worker's invocations, in order, as the records each one received."""
    return [entry["event"]["Records"] for entry in gw.events("sqs")]


def test_a_message_sent_with_boto3_reaches_the_worker_as_lambda_sends_it(start_gateway):
    # GIVEN the gateway with its own stand-in, which it names at start
    gw = start_gateway("--sqs-visibility-timeout-seconds", "1")
    endpoint = gw.wait_for(
        r"sqs: moto in a process of its own at (http://127\.0\.0\.1:\d+) \(AWS_ENDPOINT_URL_SQS\)"
    )[1]
    url = gw.wait_for(r"queue (https://sqs\.us-east-1\.amazonaws\.com/123456789012/fixture-jobs) ")[1]
    gw.wait_for(
        r"dead letters: fixture-jobs-dlq after 3 receives, visibility timeout 1 s\) -> fixture_worker"
    )
    # (the function's timeout and memory are its own block's in .chalice/config.json)
    gw.wait_for(
        r"SQS fixture-jobs -> app\.fixture_worker \(localgw-fixture-dev-fixture_worker, timeout 10 s, 512 MB\)"
    )
    gw.wait_for(r"4 poller\(s\), batches of up to 3$")
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    # WHEN a backend sends a message to the AWS-shaped URL, through the endpoint
    message_id = client.send_message(QueueUrl=url, MessageBody='{"job": 1}')["MessageId"]
    # THEN the worker runs once, with Lambda's SQS event, and the message is deleted
    gw.wait_for(WORKER_LINE + r"1 records, 0 failed [\d.]+ ms")
    [entry] = gw.events("sqs")
    [record] = entry["event"]["Records"]
    assert_same_shape(entry["event"], {"Records": []})
    assert_same_shape(record, RECORDED["Records"][1], "record")
    assert record["messageId"] == message_id
    assert record["body"] == '{"job": 1}'
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:fixture-jobs"
    assert record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert entry["context"]["function_name"] == "localgw-fixture-dev-fixture_worker"
    assert depth(client, url) == (0, 0)  # the line comes after the deletion
    # AND Ctrl-C stops the pollers and the gateway cleanly
    assert gw.stop(signal.SIGINT) == 0
    assert "Traceback" not in gw.output()
    assert gw.output().rstrip().endswith("localgw: stopped")


def test_a_partial_batch_failure_redelivers_only_the_failed_record_after_the_visibility_timeout(
    start_gateway, stand_in, queue
):
    client, q = queue
    gw, ids = _queued_then_served(start_gateway, stand_in, client, ["ok-1", "fail-once", "ok-2"])
    gw.wait_for(WORKER_LINE + r"3 records, 1 failed; 1 return after the visibility timeout")
    gw.wait_for(WORKER_LINE + r"1 records, 0 failed ")
    assert depth(client, q.url) == (0, 0)
    first, second = _deliveries(gw)
    assert sorted(r["body"] for r in first) == ["fail-once", "ok-1", "ok-2"]
    assert [(r["messageId"], r["attributes"]["ApproximateReceiveCount"]) for r in second] == [
        (ids["fail-once"], "2")
    ]
    # Redelivered no sooner than the visibility timeout (1 s) after the first delivery: a lower bound.
    first_at, second_at = (entry["received_ms"] for entry in gw.events("sqs"))
    assert second_at - first_at >= 900
    assert depth(client, q.dlq_url) == (0, 0)


def test_a_raising_worker_gets_its_whole_batch_again(start_gateway, stand_in, queue):
    client, q = queue
    gw, ids = _queued_then_served(start_gateway, stand_in, client, ["raise-once", "ok"])
    gw.wait_for(WORKER_LINE + r"ERR RuntimeError: worker failed on purpose; 2 return after the visibility")
    gw.wait_for(WORKER_LINE + r"2 records, 0 failed ")
    assert depth(client, q.url) == (0, 0)
    first, second = _deliveries(gw)
    assert (
        sorted(r["messageId"] for r in first)
        == sorted(r["messageId"] for r in second)
        == sorted(ids.values())
    )
    assert {r["attributes"]["ApproximateReceiveCount"] for r in second} == {"2"}
    assert "worker failed on purpose" in gw.output()  # the traceback, as Lambda logs it


def test_a_message_that_keeps_failing_goes_to_the_dead_letter_queue_and_the_gateway_says_so(
    start_gateway, stand_in, queue
):
    client, q = queue
    gw, ids = _queued_then_served(start_gateway, stand_in, client, ["fail", "ok"])
    gw.wait_for(
        r"dead-letter\s+fixture-jobs\s+1 message\(s\) moved to fixture-jobs-dlq after 2 receives", timeout=20
    )
    [dead] = client.receive_message(QueueUrl=q.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert (dead["MessageId"], dead["Body"]) == (ids["fail"], "fail")
    assert depth(client, q.url) == (0, 0)
    # Nothing lost, nothing duplicated: "ok" once; "fail" once per allowed receive, then never again.
    delivered = Counter(r["body"] for batch in _deliveries(gw) for r in batch)
    assert delivered == {"ok": 1, "fail": 2}
