"""SQS for the tests, the benchmarks and the local gateway: moto's SQS served over real HTTP on
127.0.0.1, and the events Lambda's SQS event source mapping builds from its messages.

moto (``moto[server]``) speaks boto3's JSON protocol for SQS and keeps what matters here as SQS does:
visibility timeouts on the wall clock, a ``RedrivePolicy`` that moves a message to its dead-letter queue
at the first receive after ``maxReceiveCount`` receives, the 10-entry batch limit, the queue's
``MaximumMessageSize`` and the 1 MiB batch total (AWS's current limits, raised from 256 KiB;
``create_queue_with_dlq`` sets 256 KiB, the jobs' contract), and it finds a queue by the last path segment of whatever
``QueueUrl`` it is given, so the AWS-shaped URL the app is configured with works through
``AWS_ENDPOINT_URL_SQS``. Where it differs from SQS: it measures a body's size in characters, not
UTF-8 bytes (an ASCII body, such as JSON written with ``ensure_ascii``, measures the same).

moto keeps its queues in its process's memory: each stand-in (``SqsStandIn``) is a process of its own,
and its queues are gone when it stops.

Record shape (``sqs_record``): as AWS documents the SQS event Lambda sends, kept in
``tests/fixtures/sqs_events/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from testing import REPO, aws
from testing.lambda_context import FAKE_ACCOUNT_ID

# What a job may weigh (issue 12's contract), set as every queue's MaximumMessageSize: SQS then refuses
# a heavier message as AWS would refuse it. AWS's own ceiling (and moto's) is now 1 MiB.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10
DLQ_SUFFIX = "-dlq"
# The SenderId Lambda's records carry: the sender's IAM user or role id.
DEFAULT_SENDER_ID = "AIDAIENQZJOLO23YVJ4VO"


def queue_url(name: str, *, region: str = aws.REGION, account_id: str = FAKE_ACCOUNT_ID) -> str:
    """The URL AWS gives a queue; the stand-in finds the queue by its last segment."""
    return f"https://sqs.{region}.amazonaws.com/{account_id}/{name}"


def queue_arn(name: str, *, region: str = aws.REGION, account_id: str = FAKE_ACCOUNT_ID) -> str:
    return f"arn:aws:sqs:{region}:{account_id}:{name}"


def queue_name(url_or_arn: str) -> str:
    """A queue's name from its URL (``.../123456789012/name``) or ARN (``arn:aws:sqs:...:name``)."""
    separator = ":" if url_or_arn.startswith("arn:") else "/"
    return url_or_arn.rstrip("/").rsplit(separator, 1)[-1]


@dataclass(frozen=True)
class Queue:
    name: str
    url: str  # as the endpoint answered it (its host and port)
    arn: str
    dlq_url: str
    dlq_arn: str


def create_queue_with_dlq(
    client, name: str, *, visibility_timeout_seconds: int, max_receive_count: int
) -> Queue:
    """The queue and its dead-letter queue ``<name>-dlq``, redriven after ``max_receive_count`` receives.

    Idempotent for the same arguments (CreateQueue is); an existing queue with other attributes is an
    error, as on AWS.
    """
    common = {"MaximumMessageSize": str(MAX_MESSAGE_BYTES)}
    dlq_url = client.create_queue(QueueName=name + DLQ_SUFFIX, Attributes=common)["QueueUrl"]
    dlq_arn = _arn(client, dlq_url)
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
    url = client.create_queue(
        QueueName=name,
        Attributes={
            **common,
            "VisibilityTimeout": str(visibility_timeout_seconds),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    return Queue(name=name, url=url, arn=_arn(client, url), dlq_url=dlq_url, dlq_arn=dlq_arn)


def _arn(client, url: str) -> str:
    return client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def depth(client, url: str) -> tuple[int, int]:
    """(messages visible, messages received and not yet deleted) in a queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


class SqsStandIn:
    """moto's SQS on 127.0.0.1 (a free port unless given), in a process of its own (``python -m
    testing.sqs``). Each call costs moto and werkzeug a few milliseconds of CPU, and the local
    gateway's SQS pollers make one every second: served in the gateway's own process they held its
    event loop's interpreter lock a tenth as long as the loop itself did during a fan-out (bench/README.md,
    "The gateway's simulated latency"). The process also ends when the one that started it does."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._process: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self) -> SqsStandIn:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "testing.sqs", *map(str, self._address)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.endpoint = self._process.stdout.readline().strip()
        if not self.endpoint.startswith("http://"):
            self.stop()
            raise RuntimeError(f"moto's SQS did not start (exit status {self._process.returncode})")
        return self

    def stop(self) -> None:
        """Ends the process: its queues go with it."""
        if self._process is None:
            return
        self._process.stdin.close()  # it serves until its standard input ends
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()

    def __enter__(self) -> SqsStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, region: str = aws.REGION):
        """A boto3 SQS client of the stand-in, with the dummy credentials."""
        import boto3

        return boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=aws.ACCESS_KEY_ID,
            aws_secret_access_key=aws.SECRET_ACCESS_KEY,
        )


# ---- the events Lambda's SQS event source mapping sends ---------------------------------------------


def sqs_record(
    body: str,
    *,
    message_id: str | None = None,
    receive_count: int = 1,
    queue_arn: str = queue_arn("ws-broadcast-fanout"),
    sent_timestamp_ms: int | None = None,
    first_receive_timestamp_ms: int | None = None,
    receipt_handle: str | None = None,
    sender_id: str = DEFAULT_SENDER_ID,
    message_attributes: dict | None = None,
) -> dict:
    """One record of an SQS event, as Lambda builds it from a received message (attribute values are
    strings, as Lambda sends them; the region is the queue's)."""
    sent = int(time.time() * 1000) if sent_timestamp_ms is None else sent_timestamp_ms
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": receipt_handle or base64.b64encode(uuid.uuid4().bytes * 4).decode(),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": str(sent),
            "SenderId": sender_id,
            "ApproximateFirstReceiveTimestamp": str(
                sent if first_receive_timestamp_ms is None else first_receive_timestamp_ms
            ),
        },
        "messageAttributes": message_attributes or {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


def sqs_event(records: Iterable[dict]) -> dict:
    return {"Records": list(records)}


def record_from_message(message: dict, *, queue_arn: str) -> dict:
    """The record Lambda builds from one message of a ReceiveMessage answer (boto3's shape, with
    ``MessageSystemAttributeNames=["All"]`` and ``MessageAttributeNames=["All"]``)."""
    attributes = message.get("Attributes", {})
    return sqs_record(
        message["Body"],
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        receive_count=int(attributes["ApproximateReceiveCount"]),
        queue_arn=queue_arn,
        sent_timestamp_ms=int(attributes["SentTimestamp"]),
        first_receive_timestamp_ms=int(attributes["ApproximateFirstReceiveTimestamp"]),
        sender_id=attributes.get("SenderId", DEFAULT_SENDER_ID),
        message_attributes={
            name: _lambda_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
    )


def _lambda_attribute(value: dict) -> dict:
    """A message attribute as Lambda writes it: camelCase, both list fields present, binary in base64."""
    converted = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    return converted


__all__ = [
    "DLQ_SUFFIX",
    "MAX_BATCH_ENTRIES",
    "MAX_MESSAGE_BYTES",
    "Queue",
    "SqsStandIn",
    "create_queue_with_dlq",
    "depth",
    "queue_arn",
    "queue_name",
    "queue_url",
    "record_from_message",
    "sqs_event",
    "sqs_record",
]


def serve(host: str, port: int) -> None:
    """moto's SQS until standard input ends; its endpoint is the first line of standard output."""
    from moto.server import ThreadedMotoServer

    # A Ctrl-C in the terminal reaches the whole process group: the process that started this one
    # stops first, then ends this one by closing its standard input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # werkzeug logs every request at INFO on stderr: the local gateway's terminal is for its own lines.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    print(f"http://{bound_host}:{bound_port}", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
