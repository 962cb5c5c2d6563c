"""API Gateway WebSocket events, built from the recorded ones in tests/fixtures/apigw_events/.

Only the values that vary per request are replaced, so every field API Gateway sends is there,
where it sends it: headers on $connect only, messageId and body on messages only, and
disconnectStatusCode/disconnectReason on $disconnect only.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apigw_events"


def recorded(name: str) -> dict:
    """A fresh copy of the recorded event ``connect``, ``message`` or ``disconnect``."""
    return copy.deepcopy(_load(name))


@cache
def _load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def new_connection_id() -> str:
    """16 characters of base64 ending in '=', like API Gateway's."""
    return base64.b64encode(os.urandom(11)).decode()


def _request_id() -> str:
    return base64.b64encode(os.urandom(11)).decode()


@dataclass
class Connection:
    """One simulated client connection, with the values API Gateway keeps for its life."""

    api_id: str = "a1b2c3d4e5"
    stage: str = "api"
    connection_id: str = field(default_factory=new_connection_id)
    connected_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def connect_event(self) -> dict:
        return self._event("connect", request_time_ms=self.connected_at_ms)

    def message_event(self, body: str, *, request_time_ms: int | None = None) -> dict:
        event = self._event("message", request_time_ms=request_time_ms)
        event["requestContext"]["messageId"] = _request_id()
        event["body"] = body
        return event

    def disconnect_event(self, status_code: int = 1001, reason: str = "Going away") -> dict:
        event = self._event("disconnect")
        event["requestContext"]["disconnectStatusCode"] = status_code
        event["requestContext"]["disconnectReason"] = reason
        return event

    def _event(self, name: str, *, request_time_ms: int | None = None) -> dict:
        event = recorded(name)
        now_ms = request_time_ms or int(time.time() * 1000)
        domain = f"{self.api_id}.execute-api.us-east-1.amazonaws.com"
        request_id = _request_id()
        event["requestContext"].update(
            connectionId=self.connection_id,
            connectedAt=self.connected_at_ms,
            requestTimeEpoch=now_ms,
            requestTime=time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now_ms / 1000)),
            requestId=request_id,
            extendedRequestId=request_id,
            apiId=self.api_id,
            stage=self.stage,
            domainName=domain,
        )
        if "headers" in event:
            event["headers"]["Host"] = domain
            event["multiValueHeaders"]["Host"] = [domain]
        return event
