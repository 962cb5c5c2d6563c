"""Calling a handler the way Lambda does: a JSON round trip of the event, a Lambda-like context.

A ``LambdaFunction`` is one of the functions Chalice deploys for the app (``websocket_connect``,
``websocket_message``, ``websocket_disconnect``, ``api_handler``, an SQS worker), reached through the handler
string Chalice writes into the function's configuration (``app.connect``), with the timeout and memory
the project's ``.chalice/config.json`` gives it.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from testing.lambda_context import LambdaContext


@dataclass(frozen=True, kw_only=True)
class LambdaFunction:
    name: str  # Chalice's resource name: websocket_connect, websocket_message, fanout_worker...
    function_name: str  # the deployed name: {app_name}-{stage}-{name}
    handler_string: str  # what Lambda's Handler setting holds, e.g. "app.connect"
    handler: Callable[[dict, object], object] = field(repr=False)
    timeout_seconds: float
    memory_mb: int
    region: str


class HandlerError(Exception):
    """The handler raised, or returned something Lambda could not serialize."""


def invoke(function: LambdaFunction, event: dict, *, timeout_seconds: float) -> tuple[object, LambdaContext]:
    """Run the handler in this thread; returns its JSON-round-tripped response and the context used.

    Lambda hands the handler a freshly decoded event and serializes what it returns; doing the same here
    keeps a handler from sharing state with the gateway and surfaces unserializable responses.
    """
    context = LambdaContext(
        function.function_name, timeout_seconds, memory_mb=function.memory_mb, region=function.region
    )
    payload = json.loads(json.dumps(event))
    try:
        response = function.handler(payload, context)
    except Exception as exc:
        # Lambda writes the traceback to the function's log; the terminal is ours.
        traceback.print_exc(file=sys.stderr)
        raise HandlerError(f"{type(exc).__name__}: {exc}") from exc
    try:
        return json.loads(json.dumps(response)), context
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"the handler's response is not JSON serializable: {exc}") from exc


def status_of(response: object) -> int:
    """The status API Gateway reads from a proxy integration's response (200 when there is none)."""
    if isinstance(response, dict):
        code = response.get("statusCode", 200)
        try:
            return int(code)
        except (TypeError, ValueError):
            return 502
    return 200
