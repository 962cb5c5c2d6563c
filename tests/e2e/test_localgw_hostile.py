"""Clients and handlers that misbehave must not take the local gateway down, slow the others, grow its
memory, or garble its terminal output.
"""

from __future__ import annotations

import json
import re
import socket
import struct

import websockets

from tests.e2e.localgw_harness import open_raw, read_handshake, run


async def whoami(ws) -> str:
    await ws.send(json.dumps({"do": "whoami"}))
    return json.loads(await ws.recv())["connection_id"]


def test_handlers_that_outlive_their_timeout_never_stop_later_invocations(start_gateway):
    # GIVEN handlers may run 1 s, four at once
    gw = start_gateway("--handler-timeout-seconds", "1", "--concurrency", "4")

    async def flood():
        async with websockets.connect(gw.url) as ws:
            # WHEN four invocations outlive their timeout (the gateway gives up on them), then two answer
            # late with a response and two with an error
            for n in range(4):
                await ws.send(json.dumps({"do": "late", "seconds": 1.5, "fail": n % 2 == 1}))
            return [json.loads(await ws.recv())["message"] for _ in range(4)]

    assert run(flood()) == ["Internal server error"] * 4
    gw.wait_for(r"^late done$", count=4)

    # THEN a new client still connects and is served, and nothing died on the way
    async def afterwards():
        async with websockets.connect(gw.url) as ws:
            return await whoami(ws)

    connection_id = run(afterwards())
    gw.wait_for(rf"\$connect\s+{re.escape(connection_id)} 200")
    assert "Exception in thread" not in gw.output()
    assert "InvalidStateError" not in gw.output()


def test_a_client_that_does_not_read_is_closed_and_slows_no_reader(start_gateway):
    # GIVEN three readers and one client that never reads, with a 64 KiB outbox per connection
    limit = 64 * 1024
    gw = start_gateway("--max-message-bytes", "16384", "--max-outbound-bytes", str(limit))
    mark = gw.mark()
    slow = open_raw(gw, receive_buffer=4096)
    assert read_handshake(slow).startswith(b"HTTP/1.1 101")
    slow_id = gw.wait_for(r"connected\s+(\S+) from", after=mark).group(1)
    # Loopback's kernel buffers take about 3 MB of what a client does not read: send 4.8 MB.
    messages = 320

    async def scenario():
        async with (
            websockets.connect(gw.url) as sender,
            websockets.connect(gw.url) as reader,
            websockets.connect(gw.url) as other,
        ):
            for ws in (sender, reader, other):
                await whoami(ws)  # each is known to the app before the first broadcast
            received = {ws: [] for ws in (sender, reader, other)}
            # WHEN 320 messages of 15 KB are broadcast to all four, one after another
            for n in range(messages):
                text = f"{n:04d}:" + "x" * 15000
                await sender.send(json.dumps({"do": "broadcast", "text": text, "echo": True}))
                for ws, got in received.items():
                    got.append((await ws.recv())[:4])
            return list(received.values())

    try:
        deliveries = run(scenario(), timeout=90)
    finally:
        slow.close()
    # THEN every reader got every message, in order
    expected = [f"{n:04d}" for n in range(messages)]
    assert deliveries == [expected] * 3
    # AND the client that did not read was closed with 1008 once its outbox was full, never past it
    full = gw.wait_for(rf"slow client\s+{re.escape(slow_id)} (\d+) bytes queued, (\d+) more would pass")
    assert int(full.group(1)) <= limit < int(full.group(1)) + int(full.group(2))
    gw.wait_for(rf"closed\s+{re.escape(slow_id)} 1008 Outbound buffer full")
    gw.wait_for(rf"\$disconnect\s+{re.escape(slow_id)} 200")
    [record] = gw.events("disconnect", slow_id)
    assert record["event"]["requestContext"]["disconnectStatusCode"] == 1008


# ---- terminal output --------------------------------------------------------------------------------


def _print_from_four_handlers(gw) -> None:
    async def scenario():
        async with websockets.connect(gw.url) as ws:
            for n in range(4):  # concurrent invocations, each printing long lines
                await ws.send(json.dumps({"do": "print", "lines": 50, "size": 9000, "plain": f"plain {n}"}))
            await ws.send(json.dumps({"do": "close"}))
            await ws.wait_closed()

    run(scenario())
    gw.wait_for(r"^plain \d$", count=4)


def test_the_apps_json_log_lines_are_hidden_unless_asked_for(start_gateway):
    quiet = start_gateway()
    _print_from_four_handlers(quiet)
    assert not [line for line in quiet.lines if line.startswith("{")]

    shown = start_gateway("--app-logs")
    _print_from_four_handlers(shown)
    assert len([line for line in shown.lines if line.startswith("{")]) == 200


def test_every_line_is_whole_however_busy_both_processes_are(start_gateway):
    # GIVEN the app's log lines shown, 9 KB each (twice what a pipe writes atomically)
    gw = start_gateway("--app-logs")
    _print_from_four_handlers(gw)
    gateway_line = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} \S+\s+\S+ .*|localgw: .*|plain \d)$")
    for line in gw.lines:
        # THEN each line is one JSON object from the app or one line of the gateway's own
        if line.startswith("{"):
            assert json.loads(line)["pad"] == "x" * 9000
        else:
            assert gateway_line.match(line), line[:200]


def test_clients_that_leave_during_the_handshake_print_one_line_each_and_no_traceback(gateway):
    async def warm_up():  # a function's first (cold) invocation runs alone: get it out of the way
        async with websockets.connect(gateway.url) as ws:
            await whoami(ws)

    run(warm_up())
    mark = gateway.mark()
    # WHEN clients leave (closing or resetting the connection) while their $connect runs
    clients = [open_raw(gateway, "?sleep=0.5") for _ in range(6)]
    gateway.wait_for(r"^connect sleeps 0\.5$", after=mark, count=len(clients))
    for n, sock in enumerate(clients):
        if n % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        sock.close()
    # THEN the gateway says so in one line each and fires $disconnect, and prints no traceback
    gone = r"gone\s+(\S+) the client left before the handshake completed"
    gateway.wait_for(gone, after=mark, count=len(clients))
    gateway.wait_for(r"\$disconnect\s+\S+ 200", after=mark, count=len(clients))
    output = "\n".join(gateway.lines[mark:])
    assert "Traceback" not in output and "Error handling request" not in output
