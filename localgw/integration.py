"""A WebSocket route's integration: invoking its function in the runtime process, as API Gateway
invokes a Lambda function, within the function's timeout and the gateway's 29 s, one log line each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future

from localgw.lambdaenv import HandlerError, LambdaFunction, status_of
from localgw.limits import Limits
from localgw.log import Log
from testing import apigw as events

# Runs a function on an event within a timeout, elsewhere (the runtime process); resolves to its response.
Invoke = Callable[..., Future]


class Integration:
    def __init__(
        self,
        functions: dict[str, LambdaFunction],
        *,
        invoke: Invoke,
        limits: Limits,
        log: Log,
        runtime_exited: Callable[[], bool],
    ) -> None:
        self._functions = functions
        self._invoke_function = invoke
        self._limits = limits
        self._log = log
        self._runtime_exited = runtime_exited
        self._warm: set[str] = set()
        self._cold_start = asyncio.Lock()

    def has_route(self, route_key: str) -> bool:
        """Whether the app has a function for ``route_key`` (a handler for ``$connect``, say)."""
        return route_key in self._functions

    def _timeouts(self, function: LambdaFunction, route_key: str) -> tuple[float, float]:
        """(the function's own timeout, how long the gateway waits for it)."""
        lambda_timeout = self._limits.handler_timeout_seconds or function.timeout_seconds
        wait = lambda_timeout
        if route_key != events.ROUTE_DISCONNECT:  # the integration must answer within 29 s
            wait = min(wait, self._limits.integration_timeout_seconds)
        return lambda_timeout, wait

    async def invoke(self, route_key: str, event: dict) -> tuple[object, int | None, str | None]:
        """Invoke the route's function off the loop; (response, status, None) or (None, None, error).
        Logs one line.

        In Lambda a container finishes its cold start (init and first invocation) before it takes another
        event. Here all invocations share one process, so each function's first invocation runs alone:
        lazy initialisation in handlers (a boto3 client built on first use, say) never races. A runtime
        that exited is replaced by a new process on the next invocation: every function is cold again.
        """
        if self._runtime_exited():
            self._warm.clear()
        if route_key not in self._warm:
            async with self._cold_start:
                if route_key not in self._warm:
                    try:
                        return await self._invoke_now(route_key, event)
                    finally:
                        self._warm.add(route_key)
        return await self._invoke_now(route_key, event)

    async def _invoke_now(self, route_key: str, event: dict) -> tuple[object, int | None, str | None]:
        function = self._functions[route_key]
        connection_id = event["requestContext"]["connectionId"]
        lambda_timeout, timeout = self._timeouts(function, route_key)
        started = time.perf_counter()
        future = asyncio.wrap_future(self._invoke_function(function, event, timeout_seconds=lambda_timeout))
        response: object = None
        status: int | None = None
        error: str | None = None
        try:
            response = await asyncio.wait_for(future, timeout)
            status = status_of(response)
        except TimeoutError:
            error = f"Task timed out after {timeout:.2f} seconds"
        except HandlerError as exc:
            error = str(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        outcome = str(status) if error is None else f"ERR {error}"
        self._log.line(route_key, connection_id, f"{outcome} {elapsed_ms:.1f} ms")
        return response, status, error


__all__ = ["Integration", "Invoke"]
