"""`make run`'s whole app on one port: the sample page in a real browser (Debian's chromium through
Playwright), and a backend's signed POST /publish reaching WebSocket clients, through the local gateway.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import boto3
import pytest
from playwright.sync_api import expect, sync_playwright
from websockets.sync.client import connect
from ws_broadcast_client import PublishError, publish_from_backend

from tests.e2e.localgw_harness import REPO, GatewayProcess

PAGE = REPO / "clients" / "browser" / "index.html"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = GatewayProcess(
        "--page", str(PAGE), "--app-logs", project_dir=None, tmp_path=tmp_path_factory.mktemp("sample")
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, gateway, channels: str = ""):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{gateway.port}/")
    page.fill("#url", gateway.url)
    page.fill("#channels", channels)
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open")
    return page


@pytest.mark.browser
def test_two_pages_exchange_a_channel_message_and_a_third_does_not_get_it(gateway, browser):
    # GIVEN two pages in room-1 and a third in no channel, each connected through the page's own form
    alice = open_page(browser, gateway, channels="room-1")
    bob = open_page(browser, gateway, channels="room-1")
    carol = open_page(browser, gateway)
    # WHEN alice publishes to room-1
    mark = gateway.mark()
    alice.fill("#publish-channel", "room-1")
    alice.fill("#data", '{"text": "hello room"}')
    alice.click("#publish")
    # THEN bob sees it, marked with its channel; the publish had two recipients, bob and alice's own
    # echo (the module asks for it when the stream has offsets, to keep its own stream whole), not carol
    received = bob.locator("#log li.message").first
    expect(received).to_contain_text('"channel":"room-1"')
    assert json.loads(received.text_content())["data"] == {"text": "hello room"}
    published = gateway.wait_for(r'"message": "published".*"channel": "room-1"', after=mark)
    assert '"recipients": 2' in published.string
    # AND carol, who gets the next broadcast, never saw the channel's message
    bob.fill("#data", '"to everyone"')
    bob.click("#publish")
    expect(carol.locator("#log li.message").first).to_contain_text("to everyone")
    assert carol.locator("#log li.message").count() == 1


@pytest.mark.browser
def test_a_bad_message_shows_its_error_on_the_page(gateway, browser):
    page = open_page(browser, gateway)
    page.fill("#publish-channel", "not a channel")
    page.click("#publish")
    error = page.locator("#log li.error").first
    expect(error).to_contain_text('"code":"invalid_channel"')


@pytest.mark.browser
def test_the_page_subscribes_and_is_acknowledged(gateway, browser):
    page = open_page(browser, gateway)
    page.fill("#channel", "lobby")
    page.click("#subscribe")
    expect(page.locator("#log li.ack").first).to_contain_text('{"action":"subscribed","channel":"lobby"}')


def test_a_backend_publish_through_the_gateway_reaches_a_channel(gateway):
    # (the sync client: Playwright's sync API holds this thread's event loop while the browser is up)
    url = f"http://127.0.0.1:{gateway.port}/publish"
    session = boto3.session.Session(region_name="us-east-1")
    with connect(f"{gateway.url}?channels=orders", open_timeout=10) as member:
        report = publish_from_backend(
            url, {"type": 7, "data": {"order": 42}, "channel": "orders"}, session=session
        )
        assert report == {"recipients": 1, "delivered": 1, "gone": 0, "failed": 0}
        message = json.loads(member.recv(timeout=10))
        assert message["channel"] == "orders" and message["data"] == {"order": 42}
    with pytest.raises(PublishError) as refused:
        publish_from_backend(url, {"data": 1}, session=session)
    assert (refused.value.status, refused.value.error["code"]) == (400, "missing_type")


def test_an_unsigned_publish_is_refused_as_api_gateway_refuses_it(gateway):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/publish",
        data=b'{"type": 1}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert json.loads(refused.value.read()) == {"message": "Missing Authentication Token"}


def test_make_publish_reaches_a_connected_client(gateway):
    with connect(gateway.url, open_timeout=10) as listener:
        made = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "publish",
                f"url=http://127.0.0.1:{gateway.port}/publish",
                'message={"type": 3, "data": "via make"}',
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(made.stdout)["delivered"] >= 1
        assert json.loads(listener.recv(timeout=10))["data"] == "via make"


def connection_of_next_open(gateway, after: int) -> str:
    return gateway.wait_for(r"connected\s+(\S+) from", after=after).group(1)


@pytest.mark.browser
def test_the_page_reconnects_after_a_forced_close_and_is_in_its_channel_again(gateway, browser):
    # GIVEN a page in room-9, through the module (ws-broadcast.js) the page imports
    mark = gateway.mark()
    page = open_page(browser, gateway, channels="room-9")
    expect(page.locator("#log li.ack").first).to_contain_text('{"action":"subscribed","channel":"room-9"}')
    first = connection_of_next_open(gateway, mark)
    # WHEN the service closes its connection (the Management API's DELETE, as on AWS)
    gateway.management_client().delete_connection(ConnectionId=first)
    # THEN the page says so, reconnects by itself and joins room-9 again
    expect(page.locator("#log li.reconnect").first).to_contain_text("reconnected (1)")
    expect(page.locator("#status")).to_have_text("open")
    gateway.wait_for(r'"message": "subscribed".*"channel": "room-9"', after=mark, count=2)
    # AND a message to room-9 reaches it on the new connection
    with connect(gateway.url, open_timeout=10) as sender:
        sender.send(json.dumps({"type": 4, "channel": "room-9", "data": "after the close"}))
        expect(page.locator("#log li.message").first).to_contain_text("after the close")


@pytest.mark.browser
def test_the_module_alone_resubscribes_after_a_forced_close(gateway, browser):
    # GIVEN the module imported by a script of its own (no page code), in room-10
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{gateway.port}/")
    mark = gateway.mark()
    page.evaluate(
        """async (url) => {
            const { WsBroadcast } = await import("/ws-broadcast.js");
            const client = new WsBroadcast(url, { backoff: { first: 50, cap: 200 } });
            window.received = [];
            window.opens = [];
            client.addEventListener("message", (event) => window.received.push(event.detail));
            client.addEventListener("open", (event) => window.opens.push(event.detail.reconnects));
            await client.connect();
            await client.subscribe("room-10");
        }""",
        gateway.url,
    )
    first = connection_of_next_open(gateway, mark)
    gateway.management_client().delete_connection(ConnectionId=first)
    gateway.wait_for(r'"message": "subscribed".*"channel": "room-10"', after=mark, count=2)
    with connect(gateway.url, open_timeout=10) as sender:
        sender.send(json.dumps({"type": 4, "channel": "room-10", "data": {"n": 1}}))
        page.wait_for_function("window.received.length === 1", timeout=10_000)
    assert page.evaluate("window.opens") == [0, 1]
    message = page.evaluate("window.received[0]")
    assert (message["channel"], message["data"]) == ("room-10", {"n": 1})
    assert isinstance(message["offset"], int), "the service keeps history: every message has its offset"


def test_the_page_and_its_module_are_served_and_nothing_else_of_the_folder(gateway):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/ws-broadcast.js", timeout=10) as module:
        assert "javascript" in module.headers["Content-Type"]
        assert b"export class WsBroadcast" in module.read()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/ws-broadcast.d.ts", timeout=10)


class ScriptedServiceThread:
    """The Python client tests' scripted service with history (clients/python/tests), on a loop of
    its own: Playwright's sync API holds this thread."""

    def __init__(self, **options) -> None:
        sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))
        from scripted_service import ScriptedService

        self.service = ScriptedService(**options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        self.call(self.service.__aenter__())
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.service.__aexit__())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)


def module_client(browser, gateway, url: str):
    """A page whose script is the module alone, recording what it delivers: [kind, from, to, data]."""
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{gateway.port}/")
    page.evaluate(
        """async (url) => {
            const { WsBroadcast } = await import("/ws-broadcast.js");
            const client = new WsBroadcast(url, { hold: 100, backoff: { first: 50, cap: 200 } });
            window.got = [];
            client.addEventListener("message", (e) => window.got.push(["message", e.detail.offset, e.detail.data]));
            client.addEventListener("gap", (e) => window.got.push(["gap", e.detail.fromOffset, e.detail.toOffset]));
            await client.connect();
            await client.subscribe("c");
        }""",
        url,
    )
    return page


def received(page, count: int) -> list:
    page.wait_for_function(f"window.got.length >= {count}", timeout=10_000)
    return page.evaluate("window.got")


@pytest.mark.browser
def test_the_module_recovers_a_message_lost_in_transit_and_delivers_in_order(gateway, browser):
    with ScriptedServiceThread() as scripted:
        page = module_client(browser, gateway, scripted.service.url)
        scripted.service.lost.add(("c", 2))
        for data in ("one", "two", "three"):
            scripted.call(scripted.service.publish(data, channel="c"))
        assert received(page, 3) == [["message", 1, "one"], ["message", 2, "two"], ["message", 3, "three"]]
        assert scripted.service.requests("subscribe")[-1]["since"] == {"offset": 1, "epoch": "E1"}


@pytest.mark.browser
def test_the_module_reports_a_gap_when_history_cannot_cover_its_absence(gateway, browser):
    with ScriptedServiceThread(history=1) as scripted:
        page = module_client(browser, gateway, scripted.service.url)
        scripted.call(scripted.service.publish("c1", channel="c"))
        received(page, 1)
        scripted.service.away = True
        scripted.call(scripted.service.drop_all())
        for data in ("c2", "c3", "c4"):
            scripted.call(scripted.service.publish(data, channel="c"))
        scripted.service.away = False
        assert received(page, 2)[1] == ["gap", 2, 4]
        scripted.call(scripted.service.publish("c5", channel="c"))
        assert received(page, 3)[2] == ["message", 5, "c5"]
