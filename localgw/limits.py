"""The gateway's limits: API Gateway's quotas by default, each one a command-line option."""

from __future__ import annotations

from dataclasses import dataclass

from localgw.outbox import DEFAULT_LIMIT_BYTES
from testing.apigw import (
    API_GATEWAY_IDLE_TIMEOUT_SECONDS,
    API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS,
    API_GATEWAY_MAX_CONNECTION_SECONDS,
    API_GATEWAY_MAX_MESSAGE_BYTES,
)


@dataclass(frozen=True, kw_only=True)
class Limits:
    idle_timeout_seconds: float = API_GATEWAY_IDLE_TIMEOUT_SECONDS
    max_connection_seconds: float = API_GATEWAY_MAX_CONNECTION_SECONDS
    max_message_bytes: int = API_GATEWAY_MAX_MESSAGE_BYTES
    integration_timeout_seconds: float = API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS
    # None: each function's lambda_timeout from .chalice/config.json (Chalice's default is 60 s).
    handler_timeout_seconds: float | None = None
    # How long a close handshake may take before the socket is dropped.
    close_timeout_seconds: float = 2.0
    # For benchmarks: each Management API post answers only after this long, as a round trip from a
    # Lambda function to API Gateway would take (0: answer at once).
    simulated_post_latency_seconds: float = 0.0
    # Bytes queued for one client before the gateway gives up on it (localgw.outbox).
    max_outbound_bytes: int = DEFAULT_LIMIT_BYTES


__all__ = ["Limits"]
