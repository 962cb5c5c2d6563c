"""The Management API client: signed as boto3 signs, keep-alive, and every failure mapped."""

import threading
import time

import boto3
import pytest
from botocore.credentials import RefreshableCredentials

from chalicelib.management_api import DeliveryError, Gone, ManagementApi

CONNECTION = "CkxQ5cLSIAMCJbw="


def far() -> float:
    return time.monotonic() + 30


@pytest.fixture
def client(management_api) -> ManagementApi:
    management_api.open(CONNECTION)
    return ManagementApi(boto3.session.Session(), management_api.endpoint, region="us-east-1")


def test_boto3_and_our_client_are_signed_alike_and_both_accepted(management_api, client):
    # GIVEN the server that checks every signature as API Gateway does
    boto3_client = boto3.client("apigatewaymanagementapi", endpoint_url=management_api.endpoint)
    # WHEN boto3's own client and ours post THEN both are accepted and both messages arrive
    boto3_client.post_to_connection(ConnectionId=CONNECTION, Data=b'{"from": "boto3"}')
    client.post(CONNECTION, b'{"from": "ours"}')
    assert management_api.received(CONNECTION) == [{"from": "boto3"}, {"from": "ours"}]
    # AND the rest of the API works for boto3 against the same server
    assert boto3_client.get_connection(ConnectionId=CONNECTION)["Identity"]["SourceIp"] == "127.0.0.1"
    boto3_client.delete_connection(ConnectionId=CONNECTION)
    with pytest.raises(Gone):
        client.post(CONNECTION, b"{}")


def test_a_wrong_secret_is_refused(management_api):
    management_api.open(CONNECTION)
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="wrong")
    with pytest.raises(DeliveryError) as caught:
        ManagementApi(session, management_api.endpoint, region="us-east-1").post(CONNECTION, b"{}")
    assert caught.value.status == 403


def test_refreshed_credentials_are_used_once_the_old_ones_expire(management_api):
    # GIVEN credentials that expire at once, as a Lambda role's session credentials eventually do
    management_api.keys["rotated"] = ("rotated-secret", "t2")
    management_api.open(CONNECTION)
    refreshed = []

    def refresh():
        refreshed.append(True)
        return {
            "access_key": "rotated",
            "secret_key": "rotated-secret",
            "token": "t2",
            "expiry_time": "2999-01-01T00:00:00Z",
        }

    credentials = RefreshableCredentials.create_from_metadata(
        {
            "access_key": "testing",
            "secret_key": "testing",
            "token": "t1",
            "expiry_time": "2000-01-01T00:00:00Z",
        },
        refresh_using=refresh,
        method="test",
    )
    session = boto3.session.Session()
    session._session._credentials = credentials
    # WHEN a post is signed THEN it uses the refreshed key, session token included, and is accepted
    ManagementApi(session, management_api.endpoint, region="us-east-1").post(CONNECTION, b"{}")
    assert refreshed
    assert management_api.access_keys_seen == ["rotated"]


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [(410, Gone, False), (413, DeliveryError, False), (429, DeliveryError, True)],
)
def test_failures_are_mapped_by_status(management_api, client, status, kind, retryable):
    body = b"{}"
    if status == 410:
        management_api.close(CONNECTION)
    elif status == 413:
        body = b"x" * (128 * 1024 + 1)
    else:
        management_api.throttle(CONNECTION, 1)
    with pytest.raises(kind) as caught:
        client.post(CONNECTION, body)
    assert (caught.value.status, caught.value.retryable) == (status, retryable)


def test_one_thread_reuses_one_connection(management_api, client):
    for _ in range(20):
        client.post(CONNECTION, b"{}")
    assert management_api.tcp_connections == 1


def test_each_thread_has_its_own_connection(management_api, client):
    threads = [threading.Thread(target=client.post, args=(CONNECTION, b"{}")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert management_api.tcp_connections == 4
    assert len(management_api.received(CONNECTION)) == 4


@pytest.mark.parametrize("style", ["close", "silently", "chunked"])
def test_every_way_a_server_ends_a_response_is_handled(management_api, client, style):
    # GIVEN a server that closes connections (announced or not) or sends chunked bodies
    management_api.response_style = style
    # WHEN several posts follow each other on one thread THEN each is delivered exactly once
    for number in range(3):
        client.post(CONNECTION, b'{"n": %d}' % number)
    assert management_api.received(CONNECTION) == [{"n": 0}, {"n": 1}, {"n": 2}]
    with pytest.raises(Gone):
        client.post("unknownconnection", b"{}")


def test_post_many_keeps_one_connection_per_post_in_flight_and_reports_each_outcome(management_api, client):
    # GIVEN four recipients: two open, one gone, one throttled once
    management_api.open("openconnection1")
    management_api.open("openconnection2")
    management_api.open("throttledconn01")
    management_api.throttle("throttledconn01", 1)
    ids = ["openconnection1", "goneconnection1", "openconnection2", "throttledconn01"]
    # WHEN one thread posts to all of them at once, twice
    first = client.post_many(ids, b'{"n": 1}', far())
    second = client.post_many(ids, b'{"n": 2}', far())
    # THEN each outcome is its own, in order, over four kept-alive connections
    assert [outcome and (type(outcome).__name__, outcome.status) for outcome in first] == [
        None, ("Gone", 410), None, ("DeliveryError", 429)
    ]  # fmt: skip
    assert [outcome and type(outcome).__name__ for outcome in second] == [None, "Gone", None, None]
    assert management_api.received("openconnection1") == [{"n": 1}, {"n": 2}]
    assert management_api.received("throttledconn01") == [{"n": 2}]
    assert management_api.tcp_connections == 4


@pytest.mark.parametrize("style", ["close", "silently", "chunked"])
def test_post_many_survives_every_way_a_server_ends_a_response(management_api, client, style):
    for connection_id in ("openconnection1", "openconnection2"):
        management_api.open(connection_id)
    management_api.response_style = style
    for number in range(3):
        outcomes = client.post_many(["openconnection1", "openconnection2"], b'{"n": %d}' % number, far())
        assert outcomes == [None, None]
    assert management_api.received("openconnection2") == [{"n": 0}, {"n": 1}, {"n": 2}]
