"""The app's REST routes on the gateway's port: every request no other route takes goes to the
runtime process, where Chalice's own local gateway serves it (``localgw.rest``), within API
Gateway's integration timeout (504 after it; 502 when the function fails).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from localgw.integration import Invoke
from localgw.lambdaenv import HandlerError, LambdaFunction
from localgw.log import Log


class RestProxy:
    def __init__(
        self, function: LambdaFunction | None, *, invoke: Invoke, timeout_seconds: float, log: Log
    ) -> None:
        """``function``: the REST routes' function, None when the app has no routes (404 to all)."""
        self._function = function
        self._invoke_function = invoke
        self._timeout_seconds = timeout_seconds
        self._log = log

    async def handle(self, request: web.Request) -> web.Response:
        """A request to the app's REST API, served as ``chalice local`` serves it."""
        if self._function is None:
            return web.json_response({"message": "Not Found"}, status=404)
        event = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {name: value for name, value in request.headers.items()},
            "body": await request.read(),
        }
        started = time.perf_counter()
        future = self._invoke_function(self._function, event, timeout_seconds=self._timeout_seconds)
        try:
            response = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout_seconds)
        except TimeoutError:
            response = {
                "statusCode": 504,
                "headers": {},
                "body": b'{"message": "Endpoint request timed out"}',
            }
        except HandlerError as error:
            self._log.info(f"{request.method} {request.path}: {error}")
            response = {"statusCode": 502, "headers": {}, "body": b'{"message": "Internal server error"}'}
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._log.line(
            f"{request.method} {request.path}", "", f"{response['statusCode']} {elapsed_ms:.1f} ms"
        )
        headers = {k: v for k, v in response["headers"].items() if k.lower() not in ("content-length",)}
        return web.Response(status=response["statusCode"], headers=headers, body=response["body"])


__all__ = ["RestProxy"]
