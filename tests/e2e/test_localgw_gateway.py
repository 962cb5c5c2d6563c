"""The local gateway behaves like API Gateway + Lambda, checked against a tiny fixture Chalice app.

Python clients (websockets) and the real boto3 Management API client drive a gateway subprocess.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime

import botocore.exceptions
import pytest
import websockets

from tests.e2e.localgw_harness import (
    ID_PATTERN,
    REPO,
    REQUEST_TIME_PATTERN,
    Wscat,
    assert_same_shape,
    run,
)
from tests.support.apigw_events import recorded

CLIENT_UA = "localgw-tests/1.0"
# What the client chose (its headers, its query string): compared by value below, not by recorded keys.
FREE_KEYS = ("headers", "multiValueHeaders", "queryStringParameters", "multiValueQueryStringParameters")


async def whoami(ws) -> str:
    await ws.send(json.dumps({"do": "whoami"}))
    return json.loads(await ws.recv())["connection_id"]


def connect(url: str, **kwargs):
    return websockets.connect(url, user_agent_header=CLIENT_UA, open_timeout=10, **kwargs)


# ---- invocation: handler names, Lambda context, configuration -------------------------------------


def test_handlers_run_by_their_chalice_handler_names_with_a_lambda_context(gateway):
    # GIVEN the fixture app (lambda_timeout 5 and 256 MB for websocket_message in Chalice stage "dev")
    async def scenario():
        async with connect(gateway.url) as ws:
            # WHEN a message asks the handler to describe its context
            await ws.send(json.dumps({"do": "context"}))
            return json.loads(await ws.recv()), await whoami(ws)

    described, connection_id = run(scenario())

    # THEN it ran as the deployed function would, configured from .chalice/config.json
    assert described["function_name"] == "localgw-fixture-dev-websocket_message"
    assert 4000 < described["remaining_ms"] <= 5000
    assert described["env"] == {"FIXTURE_TOP": "top", "FIXTURE_STAGE": "dev", "FIXTURE_FN": "message"}
    assert described["endpoint"] == gateway.endpoint
    assert described["redis_url"].startswith("redis://127.0.0.1:")
    # AND in a runtime process of its own, as Lambda runs apart from API Gateway
    assert described["pid"] != gateway.proc.pid
    gateway.wait_for(r"^localgw: \$connect\s+-> app\.connect \(localgw-fixture-dev-websocket_connect")
    [connect_record] = gateway.events("connect", connection_id)
    context = connect_record["context"]
    assert context["function_name"] == "localgw-fixture-dev-websocket_connect"
    assert context["memory_limit_in_mb"] == "128"
    assert context["invoked_function_arn"].endswith(":function:localgw-fixture-dev-websocket_connect")
    assert context["log_group_name"] == "/aws/lambda/localgw-fixture-dev-websocket_connect"
    assert re.fullmatch(r"[0-9a-f-]{36}", context["aws_request_id"])
    assert 59_000 < context["remaining_ms"] <= 60_000  # Chalice's default lambda_timeout
    assert "embedded in-process fakeredis" in gateway.output()
    # AND the banner names the app (.chalice/config.json's app_name), not the directory it is in
    gateway.wait_for(r"^localgw: serving localgw-fixture at ws://127\.0\.0\.1:\d+/api$")


def test_both_management_clients_of_the_app_reach_the_gateway(gateway):
    # GIVEN one connection
    async def scenario():
        async with connect(gateway.url) as ws:
            # WHEN the app posts with a plain boto3 client (AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI)
            await ws.send(json.dumps({"do": "echo", "n": 1}))
            echoed = await ws.recv()
            # AND with Chalice's own app.websocket_api.send (endpoint derived from the api id)
            await ws.send(json.dumps({"do": "send", "text": "via chalice"}))
            sent = await ws.recv()
            # AND reads its own connection with app.websocket_api.info
            await ws.send(json.dumps({"do": "info"}))
            info = json.loads(await ws.recv())
            return echoed, sent, info

    echoed, sent, info = run(scenario())

    # THEN every one of them reached this gateway
    assert json.loads(echoed) == {"do": "echo", "n": 1}
    assert sent == "via chalice"
    assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": CLIENT_UA}


# ---- events, field by field against recorded API Gateway events -----------------------------------


def test_events_have_the_shape_api_gateway_sends(gateway):
    # GIVEN a client with a query string and a User-Agent
    async def scenario():
        async with connect(gateway.url + "?room=lobby&room=hall&x=") as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"echo": False, "type": 99, "data": "data to publish"}))
            assert await whoami(ws) == connection_id
            await ws.close(1000, "bye")
            return connection_id

    mark = gateway.mark()
    connection_id = run(scenario())
    gateway.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200", after=mark)

    # WHEN we read what each handler received
    [connect_event] = [r["event"] for r in gateway.events("connect", connection_id)]
    message_events = [r["event"] for r in gateway.events("message", connection_id)]
    [disconnect_event] = [r["event"] for r in gateway.events("disconnect", connection_id)]

    # THEN each has exactly the fields of the recorded event of its type
    assert_same_shape(connect_event, recorded("connect"), free_keys=FREE_KEYS)
    for event in message_events:
        assert_same_shape(event, recorded("message"))
    assert_same_shape(disconnect_event, recorded("disconnect"))

    # AND the values follow API Gateway's rules
    host = f"127.0.0.1:{gateway.port}"
    for event in [connect_event, *message_events, disconnect_event]:
        context = event["requestContext"]
        assert context["connectionId"] == connection_id
        assert ID_PATTERN.match(context["requestId"]) and context["extendedRequestId"] == context["requestId"]
        assert REQUEST_TIME_PATTERN.match(context["requestTime"])
        epoch = context["requestTimeEpoch"]
        assert time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch / 1000)) == context["requestTime"]
        assert context["connectedAt"] == connect_event["requestContext"]["connectedAt"] <= epoch
        assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": CLIENT_UA}
        assert (context["domainName"], context["stage"], context["apiId"]) == (host, "api", "localgw001")
        assert context["messageDirection"] == "IN"
        assert event["isBase64Encoded"] is False
    assert ID_PATTERN.match(connection_id)
    assert connect_event["requestContext"]["routeKey"] == "$connect"
    assert connect_event["queryStringParameters"] == {"room": "hall", "x": ""}
    assert connect_event["multiValueQueryStringParameters"] == {"room": ["lobby", "hall"], "x": [""]}
    headers = connect_event["headers"]
    assert headers["Host"] == host and headers["User-Agent"] == CLIENT_UA
    assert headers["X-Forwarded-For"] == "127.0.0.1" and headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Port"] == str(gateway.port)
    assert headers["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert {k: [v] for k, v in headers.items()} == connect_event["multiValueHeaders"]
    bodies = [e["body"] for e in message_events]
    assert sorted(bodies) == sorted(
        ['{"do": "whoami"}', '{"echo": false, "type": 99, "data": "data to publish"}', '{"do": "whoami"}']
    )
    assert len({e["requestContext"]["messageId"] for e in message_events}) == 3
    assert all(e["requestContext"]["routeKey"] == "$default" for e in message_events)
    assert disconnect_event["requestContext"]["disconnectStatusCode"] == 1000
    assert disconnect_event["requestContext"]["disconnectReason"] == "bye"
    assert disconnect_event["headers"] == {
        "Host": host,
        "x-api-key": "",
        "X-Forwarded-For": "",
        "x-restapi": "",
    }


def test_connect_event_without_query_string_has_no_query_fields(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            return await whoami(ws)

    connection_id = run(scenario())
    [record] = gateway.events("connect", connection_id)
    assert "queryStringParameters" not in record["event"]
    assert "multiValueQueryStringParameters" not in record["event"]


def test_client_close_without_status_is_reported_as_1005(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            async with ws.send_context():  # a close frame without a status code, as some clients send
                ws.protocol.send_close()
            await ws.wait_closed()
        return connection_id

    mark = gateway.mark()
    connection_id = run(scenario())
    gateway.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200", after=mark)
    [record] = gateway.events("disconnect", connection_id)
    assert record["event"]["requestContext"]["disconnectStatusCode"] == 1005
    assert record["event"]["requestContext"]["disconnectReason"] == "Client-side close frame status not set"


# ---- $connect decides before the handshake ---------------------------------------------------------


@pytest.mark.parametrize(("query", "status"), [("reject=403", 403), ("reject=401", 401), ("raise=1", 500)])
def test_connect_refusal_fails_the_handshake_and_the_client_never_joins(gateway, query, status):
    mark = gateway.mark()

    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"{gateway.url}?{query}"):
                pass
        return refused.value.response.status_code

    assert run(scenario()) == status
    line = gateway.wait_for(rf"refused\s+(\S+)\s+HTTP {status}", after=mark)
    connection_id = line.group(1)
    assert not re.search(rf"connected\s+{re.escape(connection_id)}", gateway.output())
    assert gateway.events("disconnect", connection_id) == []  # API Gateway fires no $disconnect then


# ---- failures in message handlers -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["raise", "unserializable"])
def test_a_failing_message_handler_gets_api_gateways_internal_server_error(gateway, command):
    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"do": command}))
            reply = await ws.recv()
            await ws.send(json.dumps({"do": "send", "text": "still here"}))
            return connection_id, reply, await ws.recv()

    connection_id, reply, after = run(scenario())

    message = json.loads(reply)
    [failed] = [r for r in gateway.events("message", connection_id) if command in r["event"]["body"]]
    assert message == {
        "message": "Internal server error",
        "connectionId": connection_id,
        "requestId": failed["event"]["requestContext"]["requestId"],
    }
    assert reply.startswith('{"message": "Internal server error", "connectionId":"')
    assert after == "still here"  # the gateway and the connection survive


def test_a_runtime_that_dies_is_replaced_by_a_new_one_as_lambda_replaces_a_container(start_gateway):
    gw = start_gateway()

    async def scenario():
        async with connect(gw.url) as ws:
            connection_id = await whoami(ws)
            # WHEN a handler takes its whole process down
            await ws.send(json.dumps({"do": "exit"}))
            reply = json.loads(await ws.recv())
            # THEN that invocation fails as API Gateway reports it, and the next one runs in a new process
            await ws.send(json.dumps({"do": "send", "text": "new container"}))
            return connection_id, reply, await ws.recv()

    connection_id, reply, after = run(scenario())
    assert reply["message"] == "Internal server error"
    assert reply["connectionId"] == connection_id
    assert after == "new container"
    gw.wait_for(r"^localgw: the runtime process exited \(3\): starting a new one$")


def test_a_handler_status_without_error_sends_nothing_to_the_client(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            await ws.send(json.dumps({"do": "status", "code": 400}))
            await ws.send(json.dumps({"do": "send", "text": "next"}))
            return await ws.recv()

    assert run(scenario()) == "next"


def test_a_handler_that_times_out_gets_internal_server_error_and_stalls_nobody(start_gateway):
    # GIVEN handlers may run 1.5 s
    gw = start_gateway("--handler-timeout-seconds", "1.5")

    async def scenario():
        async with connect(gw.url) as slow, connect(gw.url) as other:
            slow_id = await whoami(slow)
            started = time.monotonic()
            # WHEN one handler runs far longer
            await slow.send(json.dumps({"do": "sleep", "seconds": 5}))
            # THEN another connection is served meanwhile, and so is the same connection
            await other.send(json.dumps({"do": "send", "text": "not stalled"}))
            assert await other.recv() == "not stalled"
            await slow.send(json.dumps({"do": "send", "text": "concurrent"}))
            assert await slow.recv() == "concurrent"
            # AND the slow one's client gets API Gateway's error once the timeout passes
            reply = json.loads(await slow.recv())
            return slow_id, reply, time.monotonic() - started

    slow_id, reply, elapsed = run(scenario())
    assert reply["message"] == "Internal server error" and reply["connectionId"] == slow_id
    assert 1.4 < elapsed < 4
    gw.wait_for(rf"\$default\s+{re.escape(slow_id)} ERR Task timed out after 1\.50 seconds")


# ---- Management API with the real boto3 client ------------------------------------------------------


def test_management_api_post_get_delete(gateway):
    client = gateway.management_client()

    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            before = datetime.now().astimezone()
            await asyncio.to_thread(
                client.post_to_connection, ConnectionId=connection_id, Data=b'{"hello": 1}'
            )
            received = await ws.recv()
            info = await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
            with pytest.raises(client.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(
                    client.post_to_connection, ConnectionId=connection_id, Data=b"x" * (128 * 1024 + 1)
                )
            biggest = b"y" * (128 * 1024)
            await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=biggest)
            assert await ws.recv() == biggest.decode()
            mark = gateway.mark()
            deleted = await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return connection_id, received, info, deleted, closed.value.rcvd, mark, before

    connection_id, received, info, deleted, close_frame, mark, before = run(scenario())

    assert received == '{"hello": 1}'
    assert info["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": CLIENT_UA}
    assert info["ConnectedAt"] <= info["LastActiveAt"]
    assert abs((info["LastActiveAt"] - before).total_seconds()) < 5
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert (close_frame.code, close_frame.reason) == (1000, "Connection Closed Normally")
    gateway.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200", after=mark)
    [record] = gateway.events("disconnect", connection_id)
    assert record["event"]["requestContext"]["disconnectStatusCode"] == 1000
    for call in (client.post_to_connection, client.get_connection, client.delete_connection):
        kwargs = {"Data": b"x"} if call == client.post_to_connection else {}
        with pytest.raises(client.exceptions.GoneException):
            call(ConnectionId=connection_id, **kwargs)


def test_management_api_answers_410_for_unknown_ids_and_403_without_signature(gateway):
    client = gateway.management_client()
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        client.get_connection(ConnectionId="AAAAAAAAAAAAAAA=")
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
    request = urllib.request.Request(
        f"{gateway.endpoint}/@connections/AAAAAAAAAAAAAAA=", data=b"x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(request, timeout=5)
    assert unsigned.value.code == 403


def test_app_closing_a_connection_fires_disconnect(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            await ws.send(json.dumps({"do": "close"}))  # app.websocket_api.close -> DELETE
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            return connection_id

    mark = gateway.mark()
    connection_id = run(scenario())
    gateway.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200", after=mark)


# ---- limits -----------------------------------------------------------------------------------------


def assert_closed_with(gateway, scenario, code: int) -> None:
    """The scenario's connection was closed with ``code``, and its $disconnect event says so."""
    mark = gateway.mark()
    connection_id, received_code = run(scenario)
    assert received_code == code
    gateway.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200", after=mark)
    [record] = gateway.events("disconnect", connection_id)
    assert record["event"]["requestContext"]["disconnectStatusCode"] == code


def test_a_message_over_128_kb_closes_with_1009_and_one_at_the_limit_passes(gateway):
    async def scenario():
        async with connect(gateway.url, max_size=None) as ws:
            connection_id = await whoami(ws)
            at_limit = json.dumps({"do": "send", "text": "ok", "pad": "p" * (128 * 1024 - 40)})
            at_limit = at_limit[:-2] + "p" * (128 * 1024 - len(at_limit)) + at_limit[-2:]
            assert len(at_limit.encode()) == 128 * 1024
            await ws.send(at_limit)
            assert await ws.recv() == "ok"
            await ws.send("z" * (128 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
            return connection_id, closed.value.rcvd.code

    assert_closed_with(gateway, scenario(), 1009)


def test_a_binary_frame_closes_with_1003(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            await ws.send(b"\x00\x01binary")
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
            return connection_id, closed.value.rcvd.code

    assert_closed_with(gateway, scenario(), 1003)


def test_idle_connections_close_with_1001_and_posts_keep_them_alive(start_gateway):
    # GIVEN a gateway that closes connections idle for 0.8 s
    gw = start_gateway("--idle-timeout-seconds", "0.8")
    client = gw.management_client()

    async def scenario():
        async with connect(gw.url) as kept, connect(gw.url) as idle:
            kept_id, idle_id = await whoami(kept), await whoami(idle)
            started = time.monotonic()
            idle_closed = asyncio.ensure_future(idle.recv())
            # WHEN the app posts to one connection, about every 0.2 s, until the other one is closed
            n = 0
            while not idle_closed.done():
                await asyncio.to_thread(client.post_to_connection, ConnectionId=kept_id, Data=str(n).encode())
                assert await kept.recv() == str(n)
                n += 1
                await asyncio.wait([idle_closed], timeout=0.2)  # returns at once when the close comes
            # THEN the other one was closed for idleness with 1001, and this one is still open
            with pytest.raises(websockets.ConnectionClosed) as closed:
                idle_closed.result()
            assert closed.value.rcvd.code == 1001
            await kept.send(json.dumps({"do": "send", "text": "alive"}))
            assert await kept.recv() == "alive"
            # AND once posts stop, it closes too, after the idle timeout
            quiet = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed_later:
                await kept.recv()
            return kept_id, idle_id, closed_later.value.rcvd.code, time.monotonic() - quiet, quiet - started

    kept_id, idle_id, code, quiet_for, active_for = run(scenario())
    assert code == 1001
    assert active_for > 0.7, "the idle connection closed before its idle timeout"
    assert 0.7 < quiet_for < 2.0
    for connection_id in (kept_id, idle_id):
        gw.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200")
        [record] = gw.events("disconnect", connection_id)
        assert record["event"]["requestContext"]["disconnectStatusCode"] == 1001


def test_connections_close_with_1001_at_the_maximum_duration(start_gateway):
    gw = start_gateway("--max-connection-seconds", "1.0")

    async def scenario():
        async with connect(gw.url) as ws:
            connection_id = await whoami(ws)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # busy, never idle
                    await ws.send(json.dumps({"do": "send", "text": "tick"}))
                    await ws.recv()
            return connection_id, closed.value.rcvd.code, time.monotonic() - started

    connection_id, code, elapsed = run(scenario())
    assert code == 1001
    assert 0.5 < elapsed < 2.5
    gw.wait_for(rf"timeout\s+{re.escape(connection_id)} maximum connection duration")
    gw.wait_for(rf"\$disconnect\s+{re.escape(connection_id)} 200")


# ---- concurrency ------------------------------------------------------------------------------------


def test_50_concurrent_clients_each_message_reaches_every_recipient_exactly_once(start_gateway):
    gw = start_gateway()
    n = 50

    async def scenario():
        clients = [await connect(gw.url).__aenter__() for _ in range(n)]
        try:
            # One invocation first: Chalice makes its Management API client on the first send, from a
            # boto3 session that is not thread-safe, and localgw runs many invocations in one process
            # (a Lambda container runs one at a time); 50 first sends at once have hung in it.
            await whoami(clients[0])
            mark = gw.mark()
            ids = await asyncio.gather(*(whoami(c) for c in clients))
            # (a reply can arrive before its invocation's log line: let those lines come first)
            await asyncio.to_thread(gw.wait_for, r"\$default\s+\S+ 200", after=mark, count=n, timeout=30)
            mark = gw.mark()
            # WHEN every client broadcasts one message at once (even ones ask for their own copy)
            await asyncio.gather(
                *(
                    c.send(json.dumps({"do": "broadcast", "text": f"from-{i}", "echo": i % 2 == 0}))
                    for i, c in enumerate(clients)
                )
            )
            # AND every invocation has finished (its posts are on the wire before it returns)
            await asyncio.to_thread(gw.wait_for, r"\$default\s+\S+ 200", after=mark, count=n, timeout=30)
            # THEN each client drains what it got, up to a marker the app sends it afterwards
            received = []
            for c in clients:
                await c.send(json.dumps({"do": "send", "text": "END"}))
            for c in clients:
                got = []
                while (frame := await c.recv()) != "END":
                    got.append(frame)
                received.append(got)
            return ids, received
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    ids, received = run(scenario(), timeout=60)
    assert len(set(ids)) == n
    for i, got in enumerate(received):
        expected = {f"from-{j}" for j in range(n) if j != i or i % 2 == 0}
        assert sorted(got) == sorted(expected), f"client {i} got {len(got)} frames"


# ---- terminal output and shutdown -------------------------------------------------------------------


def test_one_readable_line_per_connection_event_and_invocation(gateway):
    async def scenario():
        async with connect(gateway.url) as ws:
            connection_id = await whoami(ws)
            await ws.close(1000)
            return connection_id

    mark = gateway.mark()
    connection_id = run(scenario())
    cid = re.escape(connection_id)
    patterns = [
        rf"^\d\d:\d\d:\d\d\.\d{{3}} \$connect\s+{cid} 200 \d+\.\d ms$",
        rf"^\d\d:\d\d:\d\d\.\d{{3}} connected\s+{cid} from 127\.0\.0\.1 \(\d+ open\)$",
        rf"^\d\d:\d\d:\d\d\.\d{{3}} \$default\s+{cid} 200 \d+\.\d ms$",
        rf"^\d\d:\d\d:\d\d\.\d{{3}} closed\s+{cid} 1000 \(\d+ open\)$",
        rf"^\d\d:\d\d:\d\d\.\d{{3}} \$disconnect\s+{cid} 200 \d+\.\d ms$",
    ]
    for pattern in patterns:  # an invocation's line can come after a later event's: wait for each
        gateway.wait_for(pattern, after=mark)
    gateway.wait_for(rf"\$disconnect\s+{cid} 200", after=mark)
    assert len([line for line in gateway.lines[mark:] if connection_id in line]) == len(patterns)
    [record] = gateway.events("disconnect", connection_id)  # a close without a reason reports ""
    assert record["event"]["requestContext"]["disconnectStatusCode"] == 1000
    assert record["event"]["requestContext"]["disconnectReason"] == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_closes_every_connection_with_disconnect_and_exits_promptly(start_gateway, signum):
    # GIVEN three open connections
    gw = start_gateway()

    async def scenario():
        clients = [await connect(gw.url).__aenter__() for _ in range(3)]
        ids = [await whoami(c) for c in clients]
        # WHEN the gateway is told to stop
        started = time.monotonic()
        gw.proc.send_signal(signum)
        # THEN each client sees a clean close with 1001
        codes = []
        for c in clients:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await c.recv()
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        return ids, codes, started

    ids, codes, started = run(scenario())
    assert codes == [1001, 1001, 1001]
    # AND the process exits by itself, soon, after firing $disconnect for each
    assert gw.proc.wait(5) == 0
    assert time.monotonic() - started < 5
    gw.wait_for("localgw: stopped")
    for connection_id in ids:
        [record] = gw.events("disconnect", connection_id)
        assert record["event"]["requestContext"]["disconnectStatusCode"] == 1001
        assert record["event"]["requestContext"]["disconnectReason"] == "Going away"


@pytest.mark.node
def test_wscat_sees_a_refused_connect_as_an_http_error(gateway, wscat_available):
    client = Wscat(f"{gateway.url}?reject=403")
    try:
        assert client.proc.wait(10) != 0
        assert "Unexpected server response: 403" in client.err.wait_line(0)
    finally:
        client.close()


def test_a_custom_stage_serves_both_endpoints_under_it(start_gateway):
    gw = start_gateway("--stage", "v1")
    assert gw.url.endswith("/v1")

    async def scenario():
        async with connect(gw.url) as ws:
            connection_id = await whoami(ws)  # Chalice's app.websocket_api posts to .../v1/@connections
            with pytest.raises(websockets.InvalidStatus):
                async with connect(gw.url.replace("/v1", "/api")):
                    pass
            return connection_id

    connection_id = run(scenario())
    [record] = gw.events("connect", connection_id)
    assert record["event"]["requestContext"]["stage"] == "v1"


def test_simulated_post_latency_delays_every_management_api_post(start_gateway):
    # GIVEN a gateway that answers posts after a simulated 300 ms round trip (a benchmark option)
    gw = start_gateway("--post-latency-ms", "300")
    client = gw.management_client()

    async def scenario():
        async with connect(gw.url) as ws:
            connection_id = await whoami(ws)
            started = time.monotonic()
            await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"late")
            answered_after = time.monotonic() - started
            return answered_after, await ws.recv()

    answered_after, received = run(scenario())
    # THEN the post is answered no sooner than that, and still delivered
    assert answered_after >= 0.3
    assert received == "late"


def test_a_directory_that_is_not_a_chalice_project_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "localgw", "--project-dir", str(tmp_path), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "has no app.py: pass --project-dir with a Chalice project" in result.stderr


def test_any_projects_rest_routes_are_served_on_the_same_port_as_chalice_local_serves_them(gateway):
    import urllib.request

    base = f"http://127.0.0.1:{gateway.port}"
    with urllib.request.urlopen(f"{base}/items/pen?colour=blue", timeout=10) as response:
        assert json.loads(response.read()) == {
            "name": "pen",
            "method": "GET",
            "body": None,
            "query": {"colour": "blue"},
        }
    put = urllib.request.Request(
        f"{base}/items/ink", data=b'{"ml": 30}', headers={"Content-Type": "application/json"}, method="PUT"
    )
    with urllib.request.urlopen(put, timeout=10) as response:
        assert json.loads(response.read())["body"] == {"ml": 30}
    # A path the app does not route: API Gateway's answer
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nowhere", timeout=10)
    assert missing.value.code == 403
