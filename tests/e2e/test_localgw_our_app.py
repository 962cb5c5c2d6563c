"""Our broadcast app behind the local gateway, configured as ``make run`` runs it: this repository's
project, stage ``api``, embedded Redis. Driven by the real wscat CLI and by Python clients.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal

import pytest
import websockets

from tests.e2e.localgw_harness import GatewayProcess, open_wscats, run
from tests.support.emf import emf_documents

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def our_gateway(tmp_path_factory):
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path_factory.mktemp("ours"))
    yield gw
    gw.stop()


def test_make_run_configuration_serves_our_app_with_embedded_redis(our_gateway):
    output = our_gateway.output()
    assert "embedded in-process fakeredis" in output
    assert re.search(r"\$default\s+-> app\.message \(ws-broadcast-dev-websocket_message", output)
    assert our_gateway.stage == "api"


def test_wscat_clients_publish_with_echo_false_and_true(our_gateway, wscat_available):
    # GIVEN three wscat clients connected to our app
    clients = open_wscats(our_gateway, 3)
    sender, first, second = clients
    try:
        # WHEN one publishes the reference's message without echo
        sender.send('{"echo": false, "type": 99, "data": "data to publish"}')
        # THEN every other client receives it
        for client in (first, second):
            got = json.loads(client.received(0))
            assert got["type"] == 99 and got["data"] == "data to publish"
            assert isinstance(got["received"], int)
        # WHEN it publishes with echo
        sender.send('{"echo": true, "type": 7, "data": {"n": [1, 2]}}')
        # THEN everybody, the sender too, receives it; and the sender had received nothing before
        assert json.loads(sender.received(0))["data"] == {"n": [1, 2]}
        for client in (first, second):
            assert json.loads(client.received(1))["type"] == 7
        assert len(sender.out.lines) == 1
    finally:
        for client in clients:
            client.close()


def test_wscat_malformed_message_gets_the_error_reply_alone(our_gateway, wscat_available):
    clients = open_wscats(our_gateway, 2)
    sender, other = clients
    try:
        sender.send("this is not json")
        reply = json.loads(sender.received(0))
        assert set(reply) == {"error"} and reply["error"]["code"] and reply["error"]["message"]
        sender.send('{"type": "not an integer"}')
        assert "error" in json.loads(sender.received(1))
        # a valid message afterwards proves the others got nothing from the bad ones
        sender.send('{"type": 1, "data": "after"}')
        assert json.loads(other.received(0))["data"] == "after"
    finally:
        for client in clients:
            client.close()


def test_50_python_clients_each_publish_reaches_every_recipient_exactly_once(our_gateway):
    n = 50
    gw = our_gateway
    client_mgmt = gw.management_client()

    async def scenario():
        clients, ids = [], []
        for _ in range(n):  # one by one, so the gateway's "connected" lines map to clients in order
            mark = gw.mark()
            clients.append(await websockets.connect(gw.url, open_timeout=10).__aenter__())
            line = await asyncio.to_thread(gw.wait_for, r"connected\s+(\S+) from", after=mark)
            ids.append(line.group(1))
        try:
            mark = gw.mark()
            # WHEN all publish at once; even-numbered ones with echo
            await asyncio.gather(
                *(
                    c.send(json.dumps({"echo": i % 2 == 0, "type": 1, "data": f"from-{i}"}))
                    for i, c in enumerate(clients)
                )
            )
            # AND every publish has finished (its posts were answered before the handler returned)
            await asyncio.to_thread(gw.wait_for, r"\$default\s+\S+ 200", after=mark, count=n, timeout=30)
            # THEN, reading up to an end marker posted afterwards, each got every intended message once
            for connection_id in ids:
                await asyncio.to_thread(
                    client_mgmt.post_to_connection, ConnectionId=connection_id, Data=b"END"
                )
            received = []
            for c in clients:
                got = []
                while (frame := await c.recv()) != "END":
                    got.append(json.loads(frame)["data"])
                received.append(got)
            return received
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    received = run(scenario(), timeout=90)
    for i, got in enumerate(received):
        expected = sorted(f"from-{j}" for j in range(n) if j != i or i % 2 == 0)
        assert sorted(got) == expected, f"client {i}: {len(got)} messages"


def test_connect_and_disconnect_events_drive_our_registry(our_gateway):
    import redis

    gw = our_gateway
    embedded = redis.Redis.from_url(gw.wait_for(r"embedded in-process fakeredis at (\S+)").group(1))

    def registered() -> set[str]:
        return {k.decode() for k in embedded.hkeys("{wsbroadcast}:connections")}

    async def scenario():
        mark = gw.mark()
        async with websockets.connect(gw.url):
            stays_id = (await asyncio.to_thread(gw.wait_for, r"connected\s+(\S+) from", after=mark)).group(1)
            mark = gw.mark()
            async with websockets.connect(gw.url):
                leaving_id = (
                    await asyncio.to_thread(gw.wait_for, r"connected\s+(\S+) from", after=mark)
                ).group(1)
                # GIVEN both are registered once their $connect returned
                assert {stays_id, leaving_id} <= registered()
            # WHEN one leaves, THEN its $disconnect removed it, and only it
            await asyncio.to_thread(gw.wait_for, rf"\$disconnect\s+{re.escape(leaving_id)} 200", after=mark)
            assert leaving_id not in registered() and stays_id in registered()
            return stays_id

    stays_id = run(scenario())
    gw.wait_for(rf"\$disconnect\s+{re.escape(stays_id)} 200")
    assert stays_id not in registered()


@pytest.mark.redis_server
def test_redis_url_switches_to_a_real_redis(redis_server, tmp_path):
    import redis

    # GIVEN REDIS_URL points at a real redis-server
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path, env={"REDIS_URL": redis_server.url})
    try:
        assert f"localgw: redis: {redis_server.url} (REDIS_URL)" in gw.output()
        assert "embedded" not in gw.output()

        client = redis.Redis.from_url(redis_server.url)

        async def scenario():
            async with websockets.connect(gw.url) as a, websockets.connect(gw.url) as b:
                await a.send(json.dumps({"type": 3, "data": "real redis"}))
                received = json.loads(await b.recv())
                registered = await asyncio.to_thread(client.hkeys, "{wsbroadcast}:connections")
                return received, registered

        # WHEN clients publish THEN it works, and the registry lives in that server
        received, registered = run(scenario())
        assert received["data"] == "real redis"
        assert len(registered) >= 2
    finally:
        gw.stop()


def test_make_run_serves_our_app_and_stops_cleanly(tmp_path, wscat_available):
    # GIVEN `make run`, on a free port (LOCALGW_ARGS passes options through)
    gw = GatewayProcess(
        tmp_path=tmp_path,
        command=["make", "--no-print-directory", "run", "LOCALGW_ARGS=--host 127.0.0.1 --port 0"],
    )
    try:
        assert gw.stage == "api" and "embedded in-process fakeredis" in gw.output()
        # WHEN two wscat clients connect and one publishes THEN the other receives it
        clients = open_wscats(gw, 2)
        try:
            clients[0].send('{"echo": false, "type": 99, "data": "data to publish"}')
            assert json.loads(clients[1].received(0))["data"] == "data to publish"
        finally:
            for client in clients:
                client.close()
    finally:
        # AND Ctrl-C (SIGINT to the process group, as a terminal sends it) stops it
        gw.stop(signal.SIGINT)
    gw.wait_for("localgw: stopped")


def test_a_broadcast_past_the_inline_max_goes_through_the_queue_and_the_worker(tmp_path, wscat_available):
    # GIVEN make run's configuration with a publish delivered inline only up to 2 recipients
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path, env={"FANOUT_INLINE_MAX": "2"})
    try:
        assert re.search(r"ws-broadcast-fanout", gw.output()), "the worker's queue is emulated"
        clients = open_wscats(gw, 4)
        sender, *others = clients
        try:
            # WHEN one publishes to the 3 others
            mark = gw.mark()
            sender.send('{"type": 5, "data": "queued"}')
            # THEN the worker delivers it to each of them (the sender's invocation posted nothing)
            for client in others:
                assert json.loads(client.received(0))["data"] == "queued"
            gw.wait_for(r"sqs\s+fanout_worker .*1 record", after=mark)
            assert not re.search(r"POST @conn.* (4\d\d|5\d\d)", "\n".join(gw.lines[mark:]))
            assert sender.out.lines == []
        finally:
            for client in clients:
                client.close()
    finally:
        gw.stop()


def test_make_run_with_app_logs_shows_each_invocations_metrics_document(tmp_path):
    # GIVEN `make run LOCALGW_ARGS=--app-logs`
    gw = GatewayProcess("--app-logs", project_dir=None, tmp_path=tmp_path)
    try:

        async def publish_to_one():
            async with websockets.connect(gw.url) as sender, websockets.connect(gw.url) as listener:
                await sender.send('{"type": 99, "data": "data to publish"}')
                assert json.loads(await asyncio.wait_for(listener.recv(), 10))["type"] == 99

        # WHEN a client publishes to another, and both leave
        run(publish_to_one())
        # THEN the terminal shows each function's one EMF document, as the function's log group would
        gw.wait_for(r'"Disconnected":1', count=2)
        documents = {}
        for document in emf_documents(gw.output()):
            documents.setdefault(document["FunctionName"], []).append(document)
        assert [d["Connected"] for d in documents["ws-broadcast-dev-websocket_connect"]] == [1, 1]
        (published,) = documents["ws-broadcast-dev-websocket_message"]
        assert (published["Published"], published["Delivered"]) == (1, 1)
        assert len(documents["ws-broadcast-dev-websocket_disconnect"]) == 2
    finally:
        gw.stop()
