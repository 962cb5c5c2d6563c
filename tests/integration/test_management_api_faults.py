"""The Management API client against servers that misbehave as production's do: each case behaves as
botocore's client does, or better (no post outlives its deadline, no answer waited for past it)."""

from __future__ import annotations

import socket
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.httpsession import create_urllib3_context

from chalicelib.fanout import Fanout
from chalicelib.management_api import DeliveryError, ManagementApi, transport
from testing.management_api import ManagementApiServer
from testing.tls import make_certificates
from tests.support.raw_http import ConnectProxy, Peer, RawServer, serve_forever

CONNECTION = "L0SM9cOFvHcCIhw="
PAYLOAD = b'{"type":1,"data":null,"received":0}'


def soon(seconds: float = 0.3) -> float:
    return time.monotonic() + seconds


def far() -> float:
    return time.monotonic() + 30


def client_for(endpoint: str, **options) -> ManagementApi:
    return ManagementApi(boto3.session.Session(), endpoint, region="us-east-1", **options)


def ok(peer: Peer, request: bytes) -> None:
    peer.answer(200)


@pytest.fixture
def tls(tmp_path):
    files = make_certificates(tmp_path / "tls")
    return files, files.server_context()


def test_a_server_that_never_answers_fails_the_post_at_its_deadline():
    # GIVEN a server that reads the request and never answers
    stalled = RawServer(lambda peer: (peer.read_request(), peer.wait_for_client_close()))
    # WHEN a post's deadline passes THEN it fails with no answer instead of waiting on
    with stalled as server, pytest.raises(DeliveryError) as caught:
        client_for(server.endpoint()).post(CONNECTION, PAYLOAD, deadline=soon())
    assert (caught.value.status, caught.value.reason, caught.value.retryable) == (None, "TimeoutError", False)


def test_a_server_that_trickles_is_cut_off_by_the_whole_answers_timeout(monkeypatch):
    # GIVEN a server that sends its answer one byte at a time, each well within any per-read timeout
    stop = threading.Event()

    def trickle(peer: Peer) -> None:
        peer.read_request()
        for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 10_000:
            if stop.wait(0.05):
                return
            peer.send(bytes([byte]))

    monkeypatch.setattr(transport, "READ_TIMEOUT_SECONDS", 0.5)
    try:
        # WHEN a post waits for that answer, with its deadline far away
        with RawServer(trickle) as server, pytest.raises(DeliveryError) as caught:
            client_for(server.endpoint()).post(CONNECTION, PAYLOAD, deadline=far())
    finally:
        stop.set()
    # THEN the answer's own timeout counts the whole answer, not each read, and ends it
    assert caught.value.reason == "TimeoutError"


@pytest.mark.parametrize(
    ("answer", "delivered"),
    [
        ("HTTP/1.1 204 No Content\r\n\r\n", True),
        ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", True),  # no length: body to the end
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True),
        ("HTTP/1.0 200 OK\r\n\r\n", True),
        ("HTTP/1.1 503 Service Unavailable\r\nx-amzn-ErrorType: ServiceUnavailable\r\n\r\n", False),
    ],
)
def test_answers_without_a_length_are_settled_by_their_status_at_once(answer, delivered):
    # GIVEN a server that answers so and then holds the connection open: the body never ends
    def behaviour(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(answer.encode())

    with RawServer(behaviour) as server:
        client = client_for(server.endpoint())
        # WHEN two posts follow each other (the deadline is far: waiting for the body would stall them)
        outcomes = [client.post_many([CONNECTION], PAYLOAD, far())[0] for _ in range(2)]
    # THEN each is settled by its status, and the second is not stuck behind the first one's body
    assert [outcome is None for outcome in outcomes] == [delivered, delivered]


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, False), (502, True), (503, True), (504, False)]
)
def test_5xx_and_429_say_whether_sending_again_is_safe(status, retryable):
    answering = RawServer(serve_forever(lambda peer, request: peer.answer(status, "X")))
    with answering as server, pytest.raises(DeliveryError) as caught:
        client_for(server.endpoint()).post(CONNECTION, PAYLOAD)
    assert (caught.value.status, caught.value.retryable) == (status, retryable)


def test_a_503_is_posted_again_within_the_deadline_and_delivered_once():
    answers = iter([503, 503, 200])
    with RawServer(serve_forever(lambda peer, request: peer.answer(next(answers), "X"))) as server:
        fanout = Fanout(posts_in_flight=1, backoff_base_seconds=0.001, backoff_cap_seconds=0.002)
        report = fanout.deliver(
            client_for(server.endpoint()).post_many, PAYLOAD, [CONNECTION], deadline=far()
        )
    assert report.delivered == 1
    assert len(server.requests) == 3


def drops_idle_connection(how: str):
    """Answers the first request, then (once told: its answer must have been read) drops the idle
    connection ``how``; answers every later one."""
    drop, dropped = threading.Event(), threading.Event()

    def behaviour(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        peer.answer(200)
        if peer.number == 0:
            assert drop.wait(10)
            getattr(peer, f"close_with_{how}")()
            dropped.set()
            return
        while peer.read_request() is not None:
            peer.answer(200)

    return behaviour, drop, dropped


@pytest.mark.parametrize("how", ["fin", "close_notify", "rst"])
def test_a_kept_alive_connection_dropped_while_idle_is_redialled_before_the_next_post(tls, monkeypatch, how):
    files, context = tls
    monkeypatch.setenv("AWS_CA_BUNDLE", str(files.ca_cert))
    behaviour, drop, dropped = drops_idle_connection(how)
    with RawServer(behaviour, tls=context) as server:
        client = client_for(server.endpoint())
        # GIVEN a connection the server dropped after answering, while it was idle
        client.post(CONNECTION, PAYLOAD)
        drop.set()
        assert dropped.wait(10)
        # WHEN the next post goes out THEN it is delivered, on a new connection, and sent only once
        client.post(CONNECTION, PAYLOAD)
    assert len(server.requests) == 2
    assert server.connections == 2


def test_a_reset_in_answer_to_a_request_on_a_stale_connection_is_sent_once_more():
    # GIVEN a connection whose next request is answered by RST, as a NAT gateway answers a flow idle
    # for 350 s: that request never reached the API
    reached_api = []

    def behaviour(peer: Peer) -> None:
        while peer.read_request() is not None:
            if peer.number == 0 and reached_api:
                peer.close_with_rst()
                return
            reached_api.append(peer.number)
            peer.answer(200)

    with RawServer(behaviour) as server:
        client = client_for(server.endpoint())
        client.post(CONNECTION, PAYLOAD)
        # WHEN the next post goes out on it THEN it is sent again on a new connection and delivered once
        client.post(CONNECTION, PAYLOAD)
    assert reached_api == [0, 1]


def test_a_reset_on_a_new_connection_is_not_sent_again():
    # A new connection has no idle race to lose: a reset there may follow a delivery, so no resend.
    resetting = RawServer(lambda peer: (peer.read_request(), peer.close_with_rst()))
    with resetting as server, pytest.raises(DeliveryError) as caught:
        client_for(server.endpoint()).post(CONNECTION, PAYLOAD)
    assert caught.value.status is None
    assert len(server.requests) == 1


def test_no_post_outlives_its_publish_and_the_next_publish_has_every_worker():
    # GIVEN a fan-out of 4 posts in flight, and a Management API that stalls every post
    fanout = Fanout(posts_in_flight=4)
    with RawServer(lambda peer: (peer.read_request(), peer.wait_for_client_close())) as stalled:
        stalled_api = client_for(stalled.endpoint())
        # WHEN a publish to 8 recipients runs out of time
        first = fanout.deliver(stalled_api.post_many, PAYLOAD, [f"s{i}" for i in range(8)], deadline=soon())
        assert first.delivered == 0
        # THEN no fan-out thread is still waiting on that server's sockets
        assert not [t for t in threading.enumerate() if t.name.startswith("fanout") and _in_socket_call(t)]
    # AND the next publish, to a healthy Management API, delivers to everyone within its own deadline
    with RawServer(serve_forever(ok)) as healthy:
        second = fanout.deliver(
            client_for(healthy.endpoint()).post_many, PAYLOAD, [f"h{i}" for i in range(40)], deadline=soon(5)
        )
    assert second.delivered == 40


def _in_socket_call(thread: threading.Thread) -> bool:
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident)
    return frame is not None and any(
        entry.name in ("recv", "sendall", "_fill", "send") for entry in traceback.extract_stack(frame)
    )


@pytest.fixture
def tls_management_api(tls, monkeypatch):
    files, context = tls
    monkeypatch.setenv("AWS_CA_BUNDLE", str(files.ca_cert))
    with ManagementApiServer(tls=context) as server:
        server.open(CONNECTION)
        yield server


@pytest.mark.parametrize("configured", ["HTTPS_PROXY", "https_proxy", "botocore proxies config"])
def test_posts_tunnel_through_the_proxy_botocore_would_use(tls_management_api, monkeypatch, configured):
    server = tls_management_api
    with ConnectProxy() as proxy:
        config = None
        if configured == "botocore proxies config":
            config = Config(proxies={"https": proxy.url})
        else:
            monkeypatch.setenv(configured, proxy.url)
        # WHEN boto3 and our client post to the same https endpoint
        boto3.client(
            "apigatewaymanagementapi", endpoint_url=server.endpoint, config=config
        ).post_to_connection(ConnectionId=CONNECTION, Data=b'{"from": "boto3"}')
        client_for(server.endpoint, config=config).post(CONNECTION, b'{"from": "ours"}')
    # THEN both went through the proxy's CONNECT tunnel, and both arrived
    target = server.endpoint.split("/")[2]
    assert proxy.connects == [target, target]
    assert server.received(CONNECTION) == [{"from": "boto3"}, {"from": "ours"}]


def test_no_proxy_sends_posts_directly(tls_management_api, monkeypatch):
    server = tls_management_api
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client_for(server.endpoint).post(CONNECTION, PAYLOAD)
    assert proxy.connects == []
    assert len(server.received(CONNECTION)) == 1


@pytest.mark.parametrize("variable", ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"])
def test_the_ca_bundle_botocore_reads_is_the_one_trusted(tls, monkeypatch, variable):
    files, context = tls
    with ManagementApiServer(tls=context) as server:
        server.open(CONNECTION)
        # WHEN the certificate is not trusted THEN nothing is sent, and a retry would not help
        with pytest.raises(DeliveryError) as caught:
            client_for(server.endpoint).post(CONNECTION, PAYLOAD)
        assert not caught.value.retryable
        # WHEN botocore's variable trusts it THEN the post goes through over TLS
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # it would win over REQUESTS_CA_BUNDLE
        monkeypatch.setenv(variable, str(files.ca_cert))
        client_for(server.endpoint).post(CONNECTION, b'{"tls": true}')
        assert server.received(CONNECTION) == [{"tls": True}]


def test_a_client_stuck_in_its_tls_handshake_holds_up_no_other_at_the_stand_in(tls_management_api):
    # GIVEN a client that opened a TCP connection to the HTTPS stand-in and never starts its handshake
    server = tls_management_api
    host, port = server.endpoint.split("/")[2].split(":")
    with socket.create_connection((host, int(port))):
        # WHEN our client posts beside it THEN the stand-in handshakes and answers it meanwhile
        client_for(server.endpoint).post(CONNECTION, PAYLOAD, deadline=time.monotonic() + 5)
    assert len(server.received(CONNECTION)) == 1


def test_an_unreachable_endpoint_is_a_retryable_delivery_error():
    with pytest.raises(DeliveryError) as caught:
        client_for("http://127.0.0.1:9/api").post(CONNECTION, PAYLOAD)
    assert (caught.value.status, caught.value.retryable) == (None, True)


def test_posts_carry_the_x_ray_trace_id_lambda_sets(management_api, monkeypatch):
    # GIVEN the variables Lambda sets for an invocation traced by X-Ray
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ws-broadcast-dev-websocket_message")
    monkeypatch.setenv(
        "_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    )
    management_api.open(CONNECTION)
    client_for(management_api.endpoint).post(CONNECTION, PAYLOAD)
    # THEN the post links to the invocation's trace, as boto3's would
    assert management_api.headers_seen[-1]["X-Amzn-Trace-Id"] == (
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    )


def test_a_clients_connections_share_one_tls_context_its_ca_bundle_loaded_once(
    tls_management_api, monkeypatch
):
    """Loading a CA bundle costs tens of ms of CPU; 64 connections dialled after a cold start paid it each."""
    server = tls_management_api
    made = []
    monkeypatch.setattr(
        transport, "create_urllib3_context", lambda: made.append(1) or create_urllib3_context()
    )
    ids = [f"tlsconnection{n:02d}=" for n in range(8)]
    for connection_id in ids:
        server.open(connection_id)
    client = client_for(server.endpoint)
    assert client.post_many(ids, PAYLOAD, far()) == [None] * len(ids)
    assert server.tcp_connections == len(ids)
    assert len(made) == 1
