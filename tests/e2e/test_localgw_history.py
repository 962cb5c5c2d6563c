"""History and recovery as a client lives them: our app behind the local gateway (``make run``'s
configuration, on a real redis-server), Python WebSocket clients that are cut off, closed by the
gateway's 2-hour rule (shortened here), and come back asking for what they missed.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import websockets

from tests.e2e.localgw_harness import GatewayProcess, run


def start(tmp_path, redis_server, *args: str, **env: str) -> GatewayProcess:
    return GatewayProcess(
        *args,
        project_dir=None,
        tmp_path=tmp_path,
        env={"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": f"e2e-history-{id(tmp_path)}", **env},
    )


@pytest.fixture(scope="module")
def history_gateway(tmp_path_factory, redis_server):
    gw = start(tmp_path_factory.mktemp("history"), redis_server)
    yield gw
    gw.stop()


async def connected(gw: GatewayProcess):
    """A client whose connection the gateway has finished opening."""
    return await websockets.connect(gw.url, open_timeout=10)


async def next_json(client, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(client.recv(), timeout))


async def subscribed(client, channel: str, since: dict | None = None) -> dict:
    await client.send(
        json.dumps({"action": "subscribe", "channel": channel, **({"since": since} if since else {})})
    )
    return await next_json(client)


def test_a_client_closed_by_the_gateway_recovers_every_missed_message_once_and_in_order(
    tmp_path, redis_server
):
    # GIVEN the gateway's 2-hour rule shortened to 3 seconds
    gw = start(tmp_path, redis_server, "--max-connection-seconds", "3")

    async def scenario():
        publisher = await connected(gw)
        reader = await connected(gw)
        await subscribed(reader, "room-1")
        await publisher.send(json.dumps({"type": 1, "data": "before", "channel": "room-1"}))
        seen = await next_json(reader)
        # WHEN the gateway closes the reader (its connection's maximum age) and messages go on meanwhile
        await asyncio.wait_for(reader.wait_closed(), 10)
        publisher = await connected(gw)  # the publisher was closed by the same rule
        await subscribed(publisher, "room-1")
        for n in range(3):
            await publisher.send(json.dumps({"type": 2, "data": n, "channel": "room-1", "echo": True}))
        # its own three copies: all three are published before the reader comes back (so none can
        # arrive live instead of in the replay)
        for _ in range(3):
            await next_json(publisher)
        # THEN the reader, back, recovers them: the ack, then each once, in offset order
        back = await connected(gw)
        ack = await subscribed(back, "room-1", {"offset": seen["offset"], "epoch": seen["epoch"]})
        missed = [await next_json(back) for _ in range(3)]
        await publisher.close()
        await back.close()
        return seen, ack, missed

    try:
        seen, ack, missed = run(scenario())
    finally:
        gw.stop()
    assert ack.get("recovered") is True and ack["offset"] == seen["offset"] + 3, (seen, ack)
    # (three sends in a row are three concurrent invocations: the stream's order is the order they reached
    # Redis in, which the offsets record, and every copy follows it)
    assert sorted(m["data"] for m in missed) == [0, 1, 2]
    assert [m["offset"] for m in missed] == [seen["offset"] + 1, seen["offset"] + 2, seen["offset"] + 3]


def test_resume_and_a_new_epoch_after_redis_lost_its_data(history_gateway, redis_server):
    gw = history_gateway

    async def scenario():
        publisher, listener = await connected(gw), await connected(gw)
        await publisher.send(json.dumps({"type": 1}))
        first = await next_json(listener)
        await listener.close()
        await publisher.send(json.dumps({"type": 2, "echo": True}))
        await next_json(publisher)  # its own copy: published before anyone connects again
        back = await connected(gw)
        await back.send(
            json.dumps({"action": "resume", "since": {"offset": first["offset"], "epoch": first["epoch"]}})
        )
        resumed, missed = await next_json(back), await next_json(back)
        # WHEN Redis loses its data THEN recovering from before says recovered: false, with a new epoch
        redis.Redis.from_url(redis_server.url).flushall()
        await back.send(
            json.dumps({"action": "resume", "since": {"offset": missed["offset"], "epoch": missed["epoch"]}})
        )
        lost = await next_json(back)
        for client in (publisher, back):
            await client.close()
        return first, resumed, missed, lost

    first, resumed, missed, lost = run(scenario())
    assert resumed == {
        "action": "resumed",
        "recovered": True,
        "offset": first["offset"] + 1,
        "epoch": first["epoch"],
    }
    assert missed["type"] == 2
    assert lost["recovered"] is False and lost["epoch"] != first["epoch"]


def test_presence_follows_joins_and_dropped_connections(history_gateway):
    gw = history_gateway

    async def scenario():
        asker = await connected(gw)
        members = [await connected(gw) for _ in range(3)]
        for client in (asker, *members):
            await subscribed(client, "room-1")

        async def count() -> int:
            await asker.send(json.dumps({"action": "presence", "channel": "room-1"}))
            return (await next_json(asker))["count"]

        before = await count()
        mark = gw.mark()
        members[0].transport.abort()  # dropped: no close frame; the gateway's $disconnect follows
        await asyncio.to_thread(gw.wait_for, r"\$disconnect", after=mark)
        after = await count()
        for client in (asker, *members[1:]):
            await client.close()
        return before, after

    assert run(scenario()) == (4, 3)


def test_queued_broadcasts_carry_their_offsets(tmp_path, redis_server):
    gw = start(tmp_path, redis_server, FANOUT_INLINE_MAX="2")
    try:

        async def scenario():
            sender, *others = [await connected(gw) for _ in range(4)]
            for n in (1, 2):
                await sender.send(json.dumps({"type": n}))
            got = [[await next_json(client) for _ in range(2)] for client in others]
            for client in (sender, *others):
                await client.close()
            return got

        got = run(scenario())
        # Two queued broadcasts may reach a recipient in either order; each carries its own offset, so a
        # client (the client library) puts them back in order.
        for messages in got:
            assert sorted((m["offset"], m["type"]) for m in messages) == [(1, 1), (2, 2)]
            assert len({m["epoch"] for m in messages}) == 1
    finally:
        gw.stop()
