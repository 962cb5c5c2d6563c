"""The Python client (clients/python) against this repository's app behind the local gateway: it comes
back by itself after the gateway closes it, after a proxy drops the TCP flow without a close frame,
and after its token expired, and is subscribed again each time; what was published while it was away
arrives once and in order from the service's history, or is a Gap when history no longer holds it."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from ws_broadcast_client import AuthenticationFailed, Backoff, Client, Gap

from testing.identity_provider import IdentityProvider
from testing.redis_server import free_port
from testing.tcp_proxy import TcpProxy
from tests.e2e.localgw_harness import GatewayProcess, run
from tests.e2e.test_auth_handshake import jwt_env

QUICK = Backoff(first=0.05, cap=0.2)
EVERY_CHANNEL = {"subscribe": ["*"], "publish": ["*"]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = GatewayProcess("--app-logs", project_dir=None, tmp_path=tmp_path_factory.mktemp("pyclient"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def idp():
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def jwt_gateway(idp, tmp_path_factory):
    env = jwt_env(idp.jwks_url)
    gw = GatewayProcess("--app-logs", project_dir=None, tmp_path=tmp_path_factory.mktemp("pyjwt"), env=env)
    yield gw
    gw.stop()


def connection_id(gw: GatewayProcess, after: int) -> str:
    """The id of the next connection the gateway reports open after ``after``."""
    return gw.wait_for(r"connected\s+(\S+) from", after=after).group(1)


def subscribed(gw: GatewayProcess, channel: str, after: int, count: int = 1) -> None:
    gw.wait_for(rf'"message": "subscribed".*"channel": "{channel}"', after=after, count=count)


async def published(client: Client, url: str, channel: str, data, headers: dict | None = None):
    """Publish ``data`` to ``channel`` from another connection; what ``client`` receives next. The
    sender stays connected until then: the service refuses a publish whose sender has gone."""
    async with connect(url, open_timeout=10, additional_headers=headers) as sender:
        await sender.send(json.dumps({"type": 5, "channel": channel, "data": data}))
        return await asyncio.wait_for(client.__anext__(), 10)


async def next_message(client: Client, timeout: float = 10):
    return await asyncio.wait_for(client.__anext__(), timeout)


def test_after_the_gateway_closes_it_the_client_reconnects_and_is_in_its_channel_again(gateway):
    async def scenario():
        mark = gateway.mark()
        async with Client(gateway.url, backoff=QUICK) as client:
            await client.subscribe("room-py")
            first = await asyncio.to_thread(connection_id, gateway, mark)
            # WHEN the service closes the connection (the Management API's DELETE, as on AWS)
            again = gateway.mark()
            await asyncio.to_thread(gateway.management_client().delete_connection, ConnectionId=first)
            # THEN the client opens another and joins room-py again, by itself
            assert await asyncio.to_thread(connection_id, gateway, again) != first
            # (counted from the start: the app's log line of the first subscribe may come late)
            await asyncio.to_thread(subscribed, gateway, "room-py", mark, 2)
            message = await published(client, gateway.url, "room-py", "after the close")
            assert (message.channel, message.data) == ("room-py", "after the close")
            assert client.reconnects == 1

    run(scenario())


def test_a_flow_dropped_with_an_rst_and_no_close_frame_is_reopened_and_resubscribed(gateway):
    async def scenario():
        proxy = TcpProxy(("127.0.0.1", gateway.port))
        try:
            url = f"ws://127.0.0.1:{proxy.port}/{gateway.stage}"
            mark = gateway.mark()
            async with Client(url, backoff=QUICK) as client:
                await client.subscribe("room-rst")
                proxy.cut_all()  # RST to the client, no close frame: a NAT gateway's reset flow
                await asyncio.to_thread(subscribed, gateway, "room-rst", mark, 2)
                assert proxy.accepted == 2
                message = await published(client, gateway.url, "room-rst", "after the reset")
                assert (message.channel, message.data) == ("room-rst", "after the reset")
        finally:
            proxy.close()

    run(scenario())


def test_an_expired_token_at_reconnect_is_asked_for_again_and_the_fresh_one_is_used(jwt_gateway, idp):
    asked = []

    def token():
        # the first connection's token is good; at the reconnect it has expired, the next is fresh
        asked.append(len(asked))
        expired = {"exp": 1} if len(asked) == 2 else {}
        return idp.rsa.token(channels=EVERY_CHANNEL, **expired)

    async def scenario():
        mark = jwt_gateway.mark()
        async with Client(jwt_gateway.url, token=token, backoff=QUICK) as client:
            await client.subscribe("room-jwt")
            first = await asyncio.to_thread(connection_id, jwt_gateway, mark)
            await asyncio.to_thread(jwt_gateway.management_client().delete_connection, ConnectionId=first)
            await asyncio.to_thread(subscribed, jwt_gateway, "room-jwt", mark, 2)
            assert len(asked) == 3, "once per connection, and once more after the 401"
            headers = {"Authorization": f"Bearer {idp.rsa.token(channels=EVERY_CHANNEL)}"}
            assert (await published(client, jwt_gateway.url, "room-jwt", "fresh", headers)).data == "fresh"

    run(scenario())
    jwt_gateway.wait_for(r"\$connect.*401")


def test_a_token_still_refused_when_asked_again_ends_the_client_with_authentication_failed(jwt_gateway, idp):
    asked = []

    def token():
        asked.append(len(asked))
        return idp.rsa.token(channels=EVERY_CHANNEL) if len(asked) == 1 else "revoked"

    async def scenario():
        mark = jwt_gateway.mark()
        async with Client(jwt_gateway.url, token=token, backoff=QUICK) as client:
            first = await asyncio.to_thread(connection_id, jwt_gateway, mark)
            await asyncio.to_thread(jwt_gateway.management_client().delete_connection, ConnectionId=first)
            with pytest.raises(AuthenticationFailed) as failed:
                await next_message(client)
            assert failed.value.status == 401
            assert len(asked) == 3, "asked again once, not retried forever"

    run(scenario())


def test_the_first_handshake_refused_raises_at_once(jwt_gateway):
    async def scenario():
        with pytest.raises(AuthenticationFailed):
            async with Client(jwt_gateway.url, token="not-a-token"):
                pass

    run(scenario())


async def cut_off_while(client_proxy: TcpProxy, gw: GatewayProcess, channel: str, datas: list) -> None:
    """Keep the client away (its flow reset, its reconnects refused) while ``datas`` are published to
    ``channel`` from another connection; then let it back."""
    target = client_proxy.target
    client_proxy.switch(("127.0.0.1", free_port()))  # nothing listens there: every reconnect fails
    client_proxy.cut_all()
    async with connect(gw.url, open_timeout=10) as sender:
        await sender.send(json.dumps({"action": "subscribe", "channel": channel}))
        await asyncio.wait_for(sender.recv(), 10)
        for data in datas:
            await sender.send(json.dumps({"type": 5, "channel": channel, "data": data, "echo": True}))
        for _ in datas:  # its own copies: each publish is in history before it is delivered
            await asyncio.wait_for(sender.recv(), 10)
    client_proxy.switch(target)


def test_messages_published_while_the_client_was_cut_off_arrive_once_and_in_order(gateway):
    async def scenario():
        proxy = TcpProxy(("127.0.0.1", gateway.port))
        try:
            url = f"ws://127.0.0.1:{proxy.port}/{gateway.stage}"
            async with Client(url, backoff=QUICK) as client:
                await client.subscribe("room-history")
                before = await published(client, gateway.url, "room-history", "before")
                # WHEN three messages are published while it is away THEN it recovers them from history
                await cut_off_while(proxy, gateway, "room-history", ["one", "two", "three"])
                missed = [await next_message(client) for _ in range(3)]
                after = await published(client, gateway.url, "room-history", "after")
                return before, missed, after
        finally:
            proxy.close()

    before, missed, after = run(scenario())
    # (three sends in a row are three concurrent invocations: their order is the offsets')
    assert sorted(m.data for m in missed) == ["one", "three", "two"]
    assert [m.offset for m in (before, *missed, after)] == list(range(before.offset, before.offset + 5))


def test_what_history_no_longer_holds_is_a_gap_not_a_silent_loss(tmp_path):
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path, env={"HISTORY_SIZE": "2"})
    try:

        async def scenario():
            proxy = TcpProxy(("127.0.0.1", gw.port))
            try:
                url = f"ws://127.0.0.1:{proxy.port}/{gw.stage}"
                async with Client(url, backoff=QUICK) as client:
                    await client.subscribe("room-gap")
                    before = await published(client, gw.url, "room-gap", "before")
                    await cut_off_while(proxy, gw, "room-gap", list(range(5)))
                    gap = await next_message(client)
                    after = await published(client, gw.url, "room-gap", "after")
                    return before, gap, after
            finally:
                proxy.close()

        before, gap, after = run(scenario())
    finally:
        gw.stop()
    assert isinstance(gap, Gap)
    assert (gap.channel, gap.from_offset, gap.to_offset) == ("room-gap", before.offset + 1, before.offset + 5)
    assert after.offset == before.offset + 6
