"""The local gateway stopped under load, as `make run`'s is: every client gets a close frame (1001 going
away), every ``$disconnect`` fires, the registry ends empty; a second signal always ends it at once;
and a test that dies never leaves a gateway running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import redis
import websockets

from tests.e2e.localgw_harness import REPO, GatewayProcess, run

CLIENTS = 200
CHANNELS = 40  # five members each
# Load pacing, not a wait: each client publishes to its channel once a second (the limit is 5/s).
PUBLISH_PERIOD_SECONDS = 1.0


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def gone_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has ended (or ends within ``seconds``): waits on a pidfd, no polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(pidfd)


def test_sigterm_under_load_closes_everyone_with_1001_and_leaves_the_registry_empty(
    private_redis_server, tmp_path
):
    # GIVEN make run's configuration on a real Redis, with 200 clients in 40 channels
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path, env={"REDIS_URL": private_redis_server.url})
    try:

        async def scenario():
            opening = asyncio.Semaphore(50)

            async def open_one(i: int):
                async with opening:
                    url = f"{gw.url}?channels=room-{i % CHANNELS}"
                    return await websockets.connect(url, open_timeout=30, close_timeout=10)

            mark = gw.mark()
            clients = await asyncio.gather(*(open_one(i) for i in range(CLIENTS)))

            async def publish(i: int, ws) -> None:
                message = json.dumps({"type": 1, "channel": f"room-{i % CHANNELS}", "data": i})
                try:
                    while True:
                        await ws.send(message)
                        await asyncio.sleep(PUBLISH_PERIOD_SECONDS)
                except websockets.ConnectionClosed:
                    return

            async def read_until_closed(ws) -> int | None:
                try:
                    async for _ in ws:
                        pass
                except websockets.ConnectionClosed:
                    pass
                return ws.close_code

            publishers = [asyncio.create_task(publish(i, ws)) for i, ws in enumerate(clients)]
            readers = [asyncio.create_task(read_until_closed(ws)) for ws in clients]
            # WHEN, with every client publishing, the gateway gets SIGTERM
            await asyncio.to_thread(
                gw.wait_for, r"\$default\s+\S+ 200", after=mark, count=CLIENTS, timeout=60
            )
            gw.proc.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*readers)
            await asyncio.gather(*publishers)
            return mark, codes

        mark, codes = run(scenario(), timeout=90)
        # THEN every client got a close frame: 1001, going away
        assert codes == [1001] * CLIENTS
        # AND the gateway exits by itself after every $disconnect ran, and succeeded
        assert gw.proc.wait(15) == 0
        connected = {
            m.group(1) for line in gw.lines[mark:] if (m := re.search(r"connected\s+(\S+) from", line))
        }
        disconnected = {
            m.group(1) for line in gw.lines[mark:] if (m := re.search(r"\$disconnect\s+(\S+) 200 ", line))
        }
        assert len(connected) == CLIENTS
        assert disconnected == connected
        assert not [line for line in gw.lines if "Traceback" in line or " ERR " in line]
    finally:
        gw.stop()
    # AND the registry is empty: no connection, no channel member, no connection's hash
    client = redis.Redis.from_url(private_redis_server.url, decode_responses=True)
    assert client.hlen("{wsbroadcast}:connections") == 0
    assert list(client.scan_iter("{wsbroadcast}:ch:*")) == []
    # (a connection's hash is left as its 60-second tombstone, which keeps a late message from
    # registering it again: nothing else of it)
    leftovers = [client.hgetall(key) for key in client.scan_iter("{wsbroadcast}:conn:*")]
    assert all(hash_ == {"#gone": "1"} for hash_ in leftovers)
    client.close()


def test_a_second_sigterm_ends_the_gateway_and_its_runtime_within_2_s(tmp_path):
    # GIVEN make run's gateway (its SQS pollers stop after the loop: the slow part of a shutdown)
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path)
    runtime = children_of(gw.proc.pid)
    # WHEN it is told to stop, and told again while it stops
    mark = gw.mark()
    gw.proc.send_signal(signal.SIGTERM)
    gw.wait_for("SIGTERM: closing", after=mark)
    gw.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    # THEN it ends within 2 s, saying so, and its runtime process with it
    assert gw.proc.wait(2) == 130
    assert time.monotonic() - started < 2
    gw.wait_for("second signal: exiting now", after=mark)
    assert all(gone_within(pid, 2) for pid in runtime)
    assert "Traceback" not in gw.output()
    gw.stop()


# A test process that starts a gateway and then dies as the parameter says.
DYING_TEST = """
import os, signal, sys, tempfile
from pathlib import Path
from tests.e2e.localgw_harness import GatewayProcess
gw = GatewayProcess(tmp_path=Path(tempfile.mkdtemp()))
print(gw.proc.pid, flush=True)
if sys.argv[1] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
raise RuntimeError("the test failed without stopping its gateway")
"""


@pytest.mark.parametrize("death", ["raised", "killed"])
def test_a_test_that_dies_never_leaves_its_gateway_running(death):
    # GIVEN a test process that started a gateway WHEN it dies without stopping it
    dying = subprocess.run(
        [sys.executable, "-c", DYING_TEST, death], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert dying.returncode != 0
    gateway_pid = int(dying.stdout.split()[0])
    # THEN its gateway is gone too
    assert gone_within(gateway_pid, 10), f"gateway {gateway_pid} still runs after its test died"


def test_a_gateway_that_never_becomes_ready_is_killed_at_once(tmp_path):
    # GIVEN a "gateway" that prints its pid and never says it serves
    command = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
    # WHEN the harness gives up waiting for it
    with pytest.raises(AssertionError) as caught:
        GatewayProcess(tmp_path=tmp_path, command=command, ready_timeout=1)
    # THEN it is not left running
    pid = int(re.search(r"^(\d+)$", str(caught.value), re.MULTILINE).group(1))
    assert gone_within(pid, 5)
