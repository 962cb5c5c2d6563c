"""A typed, read-only view of the API Gateway WebSocket event fields this service uses."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple


class GatewayEvent(NamedTuple):
    route_key: str
    connection_id: str
    api_id: str
    stage: str
    request_id: str
    connected_at_ms: int
    request_time_ms: int
    body: str | None
    # $connect only: header names lower-cased (HTTP names are case-insensitive); the query string.
    headers: Mapping[str, str] = MappingProxyType({})
    query: Mapping[str, str] = MappingProxyType({})

    @classmethod
    def from_dict(cls, event: Mapping[str, Any]) -> GatewayEvent:
        """Read an event as API Gateway sends it to Lambda (``requestContext`` plus ``body`` on messages)."""
        context = event["requestContext"]
        return cls(
            route_key=context["routeKey"],
            connection_id=context["connectionId"],
            api_id=context["apiId"],
            stage=context["stage"],
            request_id=context.get("requestId", ""),
            connected_at_ms=int(context["connectedAt"]),
            request_time_ms=int(context["requestTimeEpoch"]),
            body=event.get("body"),
            headers={name.lower(): value for name, value in (event.get("headers") or {}).items()},
            query=dict(event.get("queryStringParameters") or {}),
        )
