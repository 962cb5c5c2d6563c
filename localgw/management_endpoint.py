"""The Management API (``http://HOST:PORT/STAGE/@connections/{id}``), as API Gateway answers it:
POST (200; 410; 413), GET (200 JSON; 410), DELETE (204, fires ``$disconnect``; 410).

A request without a SigV4 ``Authorization`` header gets 403 as on AWS (its form is checked, as
``testing.sigv4`` checks it; the signature is not: the gateway does not know the app's secret). A post
is answered as soon as it is queued for the client (``localgw.connections``); a client whose outbox
overflows is closed with 1008 and the post that overflowed it gets 410. A simulated round trip
(``--post-latency-ms``) is waited out to the microsecond (``localgw.deadline_sleep``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import WSCloseCode, web

from localgw.connections import Connection, Connections
from localgw.deadline_sleep import DeadlineSleeper
from localgw.limits import Limits
from localgw.log import Log
from testing import apigw as events
from testing.sigv4 import authorization_problem


def _iso(epoch_ms: int) -> str:
    return (
        datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{epoch_ms % 1000:03d}Z"
    )


def _error(status: int, error_type: str, message: str | None) -> web.Response:
    """An error as AWS's rest-json services send it, so botocore raises the right exception."""
    return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": error_type})


class ManagementEndpoint:
    def __init__(self, connections: Connections, *, limits: Limits, log: Log) -> None:
        self._connections = connections
        self._limits = limits
        self._log = log
        self._round_trip = DeadlineSleeper()

    def _lookup(self, request: web.Request) -> tuple[Connection | None, web.Response | None]:
        """The open connection a Management API call names, or the logged error response to send."""
        failure = None
        connection = self._connections.get(request.match_info["connection_id"])
        if authorization_problem(request.headers) is not None:
            failure = _error(403, "ForbiddenException", "Missing Authentication Token")
        elif connection is None or not connection.open:
            failure = _error(410, "GoneException", None)
        if failure is not None:
            self._log_call(request.method, request.match_info["connection_id"], failure.status)
            return None, failure
        return connection, None

    def _log_call(self, method: str, connection_id: str, status: int) -> None:
        if self._log.verbose or status >= 400:
            self._log.line(f"{method} @conn", connection_id, str(status))

    async def post(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        data = await request.read()
        if self._limits.simulated_post_latency_seconds:
            await self._round_trip.sleep(self._limits.simulated_post_latency_seconds)
        if len(data) > self._limits.max_message_bytes:
            self._log_call("POST", connection_id, 413)
            return _error(413, "PayloadTooLargeException", "Message too long")
        if not self._connections.send(connection, data):
            self._log_call("POST", connection_id, 410)
            return _error(410, "GoneException", None)
        connection.touch()  # API Gateway counts a post as activity on the connection
        self._log_call("POST", connection_id, 200)
        return web.Response(status=200)

    def close(self) -> None:
        """Once the server is stopped: the simulated round trip's timer goes too."""
        self._round_trip.close()

    async def get(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        info = connection.info
        identity = {"sourceIp": info.source_ip}
        if info.user_agent is not None:
            identity["userAgent"] = info.user_agent
        self._log_call("GET", connection_id, 200)
        return web.json_response(
            {
                "connectedAt": _iso(info.connected_at_ms),
                "identity": identity,
                "lastActiveAt": _iso(connection.last_active_ms),
            }
        )

    async def delete(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        connection, failure = self._lookup(request)
        if failure is not None:
            return failure
        self._connections.spawn(connection.close(WSCloseCode.OK, events.DISCONNECT_REASONS[1000]))
        self._log_call("DELETE", connection_id, 204)
        return web.Response(status=204)


__all__ = ["ManagementEndpoint"]
