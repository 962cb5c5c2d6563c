"""Structured logging: JSON lines from Powertools for AWS Lambda's Logger.

Every line of an invocation carries its Lambda request id and connection id. The keys are kept per
thread because the local gateway runs several invocations at once in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(service="ws-broadcast")


@contextmanager
def invocation_keys(*, request_id: str, connection_id: str, route: str) -> Iterator[None]:
    logger.thread_safe_append_keys(request_id=request_id, connection_id=connection_id, route=route)
    try:
        yield
    finally:
        logger.thread_safe_clear_keys()


def request_id_of(lambda_context: Any) -> str:
    """The Lambda request id, or '-' where there is no context (a direct call from a script)."""
    return getattr(lambda_context, "aws_request_id", None) or "-"
