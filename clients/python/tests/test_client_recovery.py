"""The client against a scripted service with history (scripted_service.py): it recovers holes,
resubscribes and resumes with ``since`` after a reconnect, reports what cannot be recovered, hides
its own echo, and turns error replies into typed exceptions. No test sleeps: each waits for a
message or a request, with a bound."""

from __future__ import annotations

import asyncio

import pytest
from scripted_service import ScriptedService

from ws_broadcast_client import Backoff, ChannelForbidden, Client, Gap, RateLimited

QUICK = Backoff(first=0.01, cap=0.05)


def run(scenario, timeout: float = 15):
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


async def take(client: Client, count: int, timeout: float = 5) -> list:
    got = []

    async def gather():
        async for item in client:
            got.append(item)
            if len(got) == count:
                return

    await asyncio.wait_for(gather(), timeout)
    return got


def summary(items) -> list:
    return [
        ("gap", i.channel, i.from_offset, i.to_offset)
        if isinstance(i, Gap)
        else (i.channel, i.offset, i.data)
        for i in items
    ]


def test_a_message_lost_in_transit_is_recovered_from_history_in_order():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, hold=0.05, backoff=QUICK) as client:
            await client.subscribe("c")
            service.lost.add(("c", 2))
            for data in ("one", "two", "three"):
                await service.publish(data, channel="c")
            got = await take(client, 3)
            assert summary(got) == [("c", 1, "one"), ("c", 2, "two"), ("c", 3, "three")]
            recovery = service.requests("subscribe")[-1]
            assert recovery["since"] == {"offset": 1, "epoch": "E1"}

    run(scenario)


def test_after_a_forced_close_it_resubscribes_and_resumes_from_the_last_offset_it_yielded():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, backoff=QUICK) as client:
            await client.subscribe("c")
            await service.publish("c1", channel="c")
            await service.publish("all1")
            assert summary(await take(client, 2)) == [("c", 1, "c1"), (None, 1, "all1")]
            # WHEN the service cuts the connection and publishes while the client is away
            service.away = True
            await service.drop_all()
            await service.publish("c2", channel="c")
            await service.publish("all2")
            service.away = False
            # THEN the client comes back, asks for what it missed, and yields it once
            assert summary(await take(client, 2)) == [("c", 2, "c2"), (None, 2, "all2")]
            assert service.requests("subscribe")[-1]["since"] == {"offset": 1, "epoch": "E1"}
            assert service.requests("resume")[-1]["since"] == {"offset": 1, "epoch": "E1"}
            assert client.reconnects == 1

    run(scenario)


def test_what_history_no_longer_holds_is_reported_as_a_gap():
    async def scenario():
        async with ScriptedService(history=1) as service, Client(service.url, backoff=QUICK) as client:
            await client.subscribe("c")
            await service.publish("c1", channel="c")
            await take(client, 1)
            service.away = True
            await service.drop_all()
            for data in ("c2", "c3", "c4"):
                await service.publish(data, channel="c")
            service.away = False
            [gap] = await take(client, 1)
            assert gap == Gap("c", 2, 4)
            await service.publish("c5", channel="c")
            assert summary(await take(client, 1)) == [("c", 5, "c5")]

    run(scenario)


def test_its_own_publish_without_echo_is_not_yielded_and_leaves_no_hole():
    async def scenario():
        # a hold of a minute: were the client's own message a hole, the next one would wait that long
        async with ScriptedService() as service, Client(service.url, hold=60, backoff=QUICK) as client:
            await client.subscribe("c")
            await client.publish({"x": 1}, type=1, channel="c", echo=False)
            await service.publish("from someone else", channel="c")
            assert summary(await take(client, 1)) == [("c", 2, "from someone else")]
            assert service.requests("publish")[0]["echo"] is True, "sent with echo, to learn its offset"

    run(scenario)


def test_with_echo_its_own_publish_is_yielded_once():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, backoff=QUICK) as client:
            await client.publish("mine", type=3, echo=True)
            [mine] = await take(client, 1)
            assert (mine.type, mine.data, mine.channel, mine.offset, mine.epoch) == (3, "mine", None, 1, "E1")

    run(scenario)


def test_a_refused_subscribe_raises_the_services_code_and_message():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, backoff=QUICK) as client:
            service.refusals["subscribe"].append({"code": "channel_forbidden", "message": "not yours"})
            with pytest.raises(ChannelForbidden) as refused:
                await client.subscribe("secret")
            assert (refused.value.code, refused.value.message) == ("channel_forbidden", "not yours")

    run(scenario)


def test_a_rate_limited_publish_raises_with_the_wait_and_the_next_one_is_not_sent_during_it():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, backoff=QUICK) as client:
            await client.subscribe("c")
            limited = {"code": "rate_limited", "message": "slow down", "retryAfterMs": 60_000}
            service.refusals["publish"].append(limited)
            with pytest.raises(RateLimited) as refused:
                await client.publish("a", type=1, channel="c")
            assert (refused.value.code, refused.value.retry_after) == ("rate_limited", 60)
            # the service would drop it without a reply: refused at once, unsent
            with pytest.raises(RateLimited) as again:
                await client.publish("b", type=1, channel="c")
            assert 0 < again.value.retry_after <= 60
            assert [r["data"] for r in service.requests("publish")] == ["a"]

    run(scenario)


def test_with_retry_a_rate_limited_publish_waits_as_told_and_is_sent_again():
    async def scenario():
        async with ScriptedService() as service, Client(service.url, backoff=QUICK) as client:
            await client.subscribe("c")
            service.refusals["publish"].append(
                {"code": "rate_limited", "message": "slow", "retryAfterMs": 200}
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            await client.publish("c", type=1, channel="c", retry=True)
            assert loop.time() - started >= 0.2, "honoured retryAfterMs before sending again"
            assert [r["data"] for r in service.requests("publish")] == ["c", "c"]

    run(scenario)


def test_a_pong_saying_lost_makes_it_reconnect_and_subscribe_again():
    async def scenario():
        async with ScriptedService() as service:
            service.lose_state = True
            async with Client(service.url, keepalive=0.05, backoff=QUICK) as client:
                await client.subscribe("c")
                await service.wait_for(lambda: len(service.requests("subscribe")) == 2)
                assert client.reconnects == 1
                await service.publish("after", channel="c")
                assert summary(await take(client, 1)) == [("c", 1, "after")]

    run(scenario)


def test_without_history_messages_pass_through_unordered_and_undeduplicated():
    async def scenario():
        async with ScriptedService(history=None) as service, Client(service.url, backoff=QUICK) as client:
            await client.subscribe("c")
            await service.publish("same", channel="c")
            await service.publish("same", channel="c")
            assert summary(await take(client, 2)) == [("c", None, "same"), ("c", None, "same")]
            await service.drop_all()
            await service.wait_for(lambda: len(service.requests("subscribe")) == 2)
            assert "since" not in service.requests("subscribe")[-1]
            assert service.requests("resume") == []

    run(scenario)


def test_the_token_callable_is_asked_at_every_reconnect_and_sent_as_a_subprotocol():
    async def scenario():
        tokens = iter(["first", "second"])

        async def token():
            return next(tokens)

        async with ScriptedService() as service, Client(service.url, token=token, backoff=QUICK):
            await service.drop_all()
            await service.wait_for(lambda: len(service.handshakes) == 2 and service.connections)
            assert service.handshakes == [["wsbroadcast", "bearer.first"], ["wsbroadcast", "bearer.second"]]

    run(scenario)
