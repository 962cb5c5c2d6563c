"""The local API Gateway: one aiohttp server on one port for the WebSocket API's endpoint, its
Management API (both under the stage path), the app's REST routes and a page; this module composes
them and says which URL goes where.

- ``ws://HOST:PORT/STAGE``: the WebSocket endpoint (``localgw.websocket_endpoint``), whose routes'
  functions are invoked through ``localgw.integration``;
- ``http://HOST:PORT/STAGE/@connections/{id}``: the Management API (``localgw.management_endpoint``),
  on the same open connections (``localgw.connections``);
- ``GET /`` and the modules beside it: the page, when there is one (``localgw.page``), shadowing a REST
  route at ``/``;
- everything else: the app's REST routes (``localgw.rest_proxy``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from localgw.connections import Connections
from localgw.integration import Integration, Invoke
from localgw.lambdaenv import LambdaFunction
from localgw.limits import Limits
from localgw.log import Log
from localgw.management_endpoint import ManagementEndpoint
from localgw.page import Page
from localgw.project import REST_ROUTE_KEY
from localgw.rest_proxy import RestProxy
from localgw.websocket_endpoint import WebSocketEndpoint


class Gateway:
    def __init__(
        self,
        functions: dict[str, LambdaFunction],
        *,
        invoke: Invoke,
        stage: str,
        api_id: str,
        limits: Limits,
        log: Log,
        runtime_exited: Callable[[], bool] = lambda: False,
        page: Path | None = None,
    ) -> None:
        """``functions``: the app's, by route key; ``page``: a file served at ``GET /``."""
        self.stage = stage
        self.connections = Connections(log)
        integration = Integration(
            functions, invoke=invoke, limits=limits, log=log, runtime_exited=runtime_exited
        )
        self.websocket = WebSocketEndpoint(
            self.connections, integration, stage=stage, api_id=api_id, limits=limits, log=log
        )
        self.management = ManagementEndpoint(self.connections, limits=limits, log=log)
        self.rest = RestProxy(
            functions.get(REST_ROUTE_KEY),
            invoke=invoke,
            timeout_seconds=limits.integration_timeout_seconds,
            log=log,
        )
        self.page = Page(page) if page is not None else None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # the 128 KB limit is checked here
        stage = self.stage
        app.router.add_get(f"/{stage}", self.websocket.handle)
        app.router.add_get(f"/{stage}/", self.websocket.handle)
        connection = f"/{stage}/@connections/{{connection_id}}"
        app.router.add_post(connection, self.management.post)
        app.router.add_get(connection, self.management.get)
        app.router.add_delete(connection, self.management.delete)
        app.router.add_route("*", "/{path:.*}", self._page_or_rest)
        return app

    async def _page_or_rest(self, request: web.Request) -> web.StreamResponse:
        if self.page is not None and (page := self.page.response(request)) is not None:
            return page
        return await self.rest.handle(request)

    async def close_all(self, *, deadline_seconds: float = 5.0) -> None:
        """Close every connection with 1001 and wait (bounded) until each one's $disconnect has run."""
        await self.websocket.close_all(deadline_seconds=deadline_seconds)


async def serve(
    gateway: Gateway,
    sockets: list,
    *,
    on_ready: Callable[[], None],
    stop: asyncio.Event,
) -> None:
    """Serve on already-bound sockets until ``stop`` is set, then close every connection cleanly."""
    # aiohttp warns when a client offered subprotocols and none was selected: the gateway's own
    # "connected" line says so, in words.
    logging.getLogger("aiohttp.websocket").setLevel(logging.ERROR)
    runner = web.AppRunner(gateway.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    on_ready()
    await stop.wait()
    await gateway.close_all()
    await runner.cleanup()
    gateway.management.close()


__all__ = ["Gateway", "serve"]
