"""The backend's publish (ws_broadcast_client.publish_from_backend) against a real HTTP endpoint that checks its SigV4 signature as API
Gateway's IAM authorizer does (region, service, date, session token, host)."""

from __future__ import annotations

import json

import boto3
import botocore.session
import pytest
from ws_broadcast_client import PublishError, publish_from_backend
from ws_broadcast_client.backend import _region

from testing.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN
from testing.json_http import JsonHttpServer
from testing.sigv4 import Expected, signature_problem


@pytest.fixture
def publish_route():
    """POST /api/publish that refuses a request API Gateway's IAM authorizer would refuse (403)."""
    received = []

    def handle(method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        expected = Expected(
            keys={ACCESS_KEY_ID: (SECRET_ACCESS_KEY, SESSION_TOKEN)}, region="us-east-1", host=headers["Host"]
        )
        problem = signature_problem("POST", f"http://{headers['Host']}{path}", headers, body, expected)
        if problem:
            return 403, {"message": problem}
        message = json.loads(body)
        received.append(message)
        if message.get("type") is None:
            return 400, {"error": {"code": "missing_type", "message": "no type"}}
        return 200, {"recipients": 2, "delivered": 2, "gone": 0, "failed": 0}

    with JsonHttpServer(handle) as server:
        yield f"{server.url}/api/publish", received


def test_a_signed_publish_is_accepted_and_answers_the_report(publish_route):
    url, received = publish_route
    report = publish_from_backend(url, {"type": 7, "data": {"order": 42}, "channel": "orders"})
    assert report == {"recipients": 2, "delivered": 2, "gone": 0, "failed": 0}
    assert received == [{"type": 7, "data": {"order": 42}, "channel": "orders"}]


def test_a_refusal_raises_with_the_services_error(publish_route):
    url, _ = publish_route
    with pytest.raises(PublishError) as refused:
        publish_from_backend(url, {"data": 1})
    assert (refused.value.status, refused.value.error["code"]) == (400, "missing_type")


def test_other_credentials_are_refused_by_the_authorizer(publish_route):
    url, _ = publish_route
    stranger = botocore.session.Session()
    stranger.set_credentials("AKIDSTRANGER", "x")
    with pytest.raises(PublishError) as refused:
        publish_from_backend(url, {"type": 1}, session=stranger, region="us-east-1")
    assert refused.value.status == 403


def test_a_boto3_session_signs_too(publish_route):
    url, _ = publish_route
    report = publish_from_backend(url, {"type": 1}, session=boto3.session.Session(region_name="us-east-1"))
    assert report["delivered"] == 2


def test_the_region_comes_from_the_execute_api_host_else_the_one_given_else_the_sessions():
    session = boto3.session.Session(region_name="us-east-1")
    host = "https://a1b2c3d4e5.execute-api"
    assert _region(f"{host}.eu-west-3.amazonaws.com/api/publish", "ap-south-1", session) == "eu-west-3"
    assert _region(f"{host}.cn-north-1.amazonaws.com.cn/api/publish", None, session) == "cn-north-1"
    assert _region("http://localhost:8000/publish", "ap-south-1", session) == "ap-south-1"
    assert _region("http://localhost:8000/publish", None, session) == "us-east-1"
