"""Our posts are signed as boto3's ``post_to_connection`` signs them, and the stand-in refuses what
API Gateway refuses: so a signing bug cannot hide behind a lenient server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.config import Config

from chalicelib.management_api import DeliveryError, ManagementApi
from testing import aws
from testing.management_api import ManagementApiServer
from testing.sigv4 import canonical_request
from tests.support.raw_http import RawServer, serve_forever

FROZEN = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
IDS = ["L0SM9cOFvHcCIhw=", "Xk2pQc_WIAMCK1Q=", "ab+cd/efGH12345=", "+/+/+/+/+/+/+/==", "-_-_-_-_-_-_-_=="]
TOKENS = [None, "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+abc/def=="]


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: FROZEN)


def parsed(raw: bytes, origin: str) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in lines)
    return method, origin + target, headers, body


@pytest.mark.parametrize("connection_id", IDS)
@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize(
    ("host", "stage"), [("127.0.0.1", "api"), ("localhost", "prod"), ("127.0.0.1", "v1/ws")]
)
def test_our_request_and_boto3s_have_the_same_canonical_request_and_signature(
    frozen_clock, connection_id, token, host, stage
):
    session = boto3.session.Session(
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        region_name="eu-west-1",
    )
    with RawServer(serve_forever(lambda peer, request: peer.answer(200))) as server:
        endpoint = f"http://{host}:{server.port}/{stage}"
        # WHEN boto3 and our client post the same bytes to the same connection, in the same second
        session.client(
            "apigatewaymanagementapi", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1})
        ).post_to_connection(ConnectionId=connection_id, Data=b'{"type":1}')
        ManagementApi(session, endpoint, region="eu-west-1").post(connection_id, b'{"type":1}')
    origin = f"http://{urlsplit(endpoint).netloc}"
    theirs, ours = (parsed(raw, origin) for raw in server.requests)
    # THEN both canonical requests are equal, and so are the signatures
    assert ours[1] == theirs[1]
    assert canonical_request(*ours, "eu-west-1", "execute-api") == canonical_request(
        *theirs, "eu-west-1", "execute-api"
    )
    assert ours[2]["Authorization"] == theirs[2]["Authorization"]
    assert ours[2].get("X-Amz-Security-Token") == theirs[2].get("X-Amz-Security-Token") == token


CONNECTION = "L0SM9cOFvHcCIhw="


def refused(server: ManagementApiServer, session: boto3.session.Session, **options) -> str:
    with pytest.raises(DeliveryError) as caught:
        ManagementApi(session, server.endpoint, region=options.pop("region", aws.REGION), **options).post(
            CONNECTION, b"{}"
        )
    assert caught.value.status == 403
    return caught.value.reason


def test_the_stand_in_accepts_a_correct_post(management_api):
    management_api.open(CONNECTION)
    ManagementApi(boto3.session.Session(), management_api.endpoint, region=aws.REGION).post(CONNECTION, b"{}")
    assert management_api.received(CONNECTION) == [{}]


def test_the_stand_in_refuses_a_post_signed_for_another_region(management_api):
    refused(management_api, boto3.session.Session(), region="eu-west-9")


def test_the_stand_in_refuses_a_post_dated_more_than_5_minutes_away(management_api, monkeypatch):
    for skew in (timedelta(minutes=-6), timedelta(minutes=6)):
        stamp = datetime.now(UTC).replace(tzinfo=None) + skew
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, stamp=stamp, **k: stamp)
        refused(management_api, boto3.session.Session())


def test_the_stand_in_refuses_a_session_token_it_did_not_issue(management_api):
    refused(management_api, boto3.session.Session(aws_session_token="forged", aws_access_key_id="testing",
                                                  aws_secret_access_key="testing"))  # fmt: skip
    refused(
        management_api, boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    )


def test_the_stand_in_refuses_a_wrong_secret(management_api):
    refused(management_api, boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="wrong",
                                                  aws_session_token="testing"))  # fmt: skip


def test_the_stand_in_refuses_a_post_for_another_host(management_api):
    # A client that signs and sends a Host other than the API's own (here: the same server, another name).
    port = management_api.endpoint.split(":")[2].split("/")[0]
    refused_by = ManagementApi(boto3.session.Session(), f"http://localhost:{port}/api", region=aws.REGION)
    with pytest.raises(DeliveryError) as caught:
        refused_by.post(CONNECTION, b"{}")
    assert caught.value.status == 403


def test_the_stand_in_refuses_a_post_signed_for_another_service(management_api, monkeypatch):
    from chalicelib.management_api import client as module

    monkeypatch.setattr(module, "SIGNING_SERVICE", "apigateway")
    refused(management_api, boto3.session.Session())
