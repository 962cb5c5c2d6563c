"""The handshake as API Gateway answers it: the subprotocol the `$connect` handler selected (never one
echoed from the client's offer) and a refusal's status and body, seen by a Python client and by a real
browser (Debian's chromium driven by Playwright).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
from playwright.sync_api import sync_playwright

from tests.e2e.localgw_harness import run

OFFERED = ["wsbroadcast", "bearer.x"]  # what a browser client of our app offers


def test_the_subprotocol_the_handler_selected_is_the_one_the_client_gets(gateway):
    async def scenario():
        async with websockets.connect(f"{gateway.url}?select=wsbroadcast", subprotocols=OFFERED) as ws:
            return ws.subprotocol, ws.response.headers.get("Sec-WebSocket-Protocol")

    assert run(scenario()) == ("wsbroadcast", "wsbroadcast")


def test_no_subprotocol_is_echoed_when_the_handler_selected_none(gateway):
    # GIVEN a client offering two subprotocols and a $connect handler that selects none
    mark = gateway.mark()

    async def scenario():
        async with websockets.connect(gateway.url, subprotocols=OFFERED) as ws:
            return ws.subprotocol, ws.response.headers.get("Sec-WebSocket-Protocol")

    # THEN the handshake carries none (a browser then fails it; see below), and the gateway says why
    assert run(scenario()) == (None, None)
    gateway.wait_for(r"connected\s+\S+ .*no subprotocol selected of those offered", after=mark)


def test_a_subprotocol_the_client_did_not_offer_is_passed_on_as_selected(gateway):
    # API Gateway forwards the integration's header as it is; the client decides (and refuses it).
    async def scenario():
        with pytest.raises(websockets.InvalidHandshake, match="unsupported subprotocol"):
            async with websockets.connect(f"{gateway.url}?select=other", subprotocols=OFFERED):
                pass

    run(scenario())


def refused(url: str):
    """The HTTP response of a handshake the gateway refuses."""

    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refusal:
            async with websockets.connect(url):
                pass
        return refusal.value.response

    return run(scenario())


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_a_refusal_shows_the_handlers_status_and_body_at_the_handshake(gateway, status):
    response = refused(f"{gateway.url}?reject={status}&message=why+{status}")
    assert response.status_code == status
    assert json.loads(response.body) == {"message": f"why {status}"}
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(("status", "message"), [(401, "Unauthorized"), (429, "Too Many Requests")])
def test_a_refusal_without_a_body_gets_the_statuss_own_message(gateway, status, message):
    response = refused(f"{gateway.url}?reject={status}")
    assert (response.status_code, json.loads(response.body)) == (status, {"message": message})


# ---- a real browser ---------------------------------------------------------------------------------

PAGE = b"""<!doctype html><title>ws-broadcast</title>
<script>
function openSocket(url, protocols) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    ws.onopen = () => { const protocol = ws.protocol; ws.close(1000); resolve({opened: true, protocol}); };
    ws.onclose = (event) => resolve({opened: false, code: event.code});
  });
}
</script>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser_page():
    """A page from an http:// origin, in Debian's chromium (never Playwright's own browser download)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            yield page, console
        finally:
            browser.close()
            server.shutdown()


@pytest.mark.browser
def test_a_browser_opens_when_the_handler_selects_wsbroadcast(gateway, browser_page):
    page, _ = browser_page
    outcome = page.evaluate(
        "([url, p]) => openSocket(url, p)", [f"{gateway.url}?select=wsbroadcast", OFFERED]
    )
    assert outcome == {"opened": True, "protocol": "wsbroadcast"}


@pytest.mark.browser
def test_a_browser_fails_the_handshake_when_the_handler_selects_none(gateway, browser_page):
    page, console = browser_page
    outcome = page.evaluate("([url, p]) => openSocket(url, p)", [gateway.url, OFFERED])
    assert outcome == {"opened": False, "code": 1006}
    assert any("Sec-WebSocket-Protocol" in line for line in console), console
