"""Structured logging: one JSON object per line, as CloudWatch Logs Insights reads them.

Every line of an invocation carries its Lambda request id, connection id and route. The keys are
kept per thread because the local gateway runs several invocations at once in one process.

Written on the standard library rather than Powertools for AWS Lambda's Logger: importing
Powertools (its package imports its metrics and tracing modules and typing_extensions) adds to every
Lambda cold start, most where no bytecode is shipped (bench/README.md, "Figures once written in the
code"). The lines keep Powertools' field names.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SERVICE = "ws-broadcast"
# The attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
_invocation = threading.local()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "service": SERVICE,
            **getattr(_invocation, "keys", {}),
        }
        line.update((name, value) for name, value in vars(record).items() if name not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            line["exception_name"] = record.exc_info[0].__name__
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _build_logger() -> logging.Logger:
    built = logging.getLogger(SERVICE)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    built.addHandler(handler)
    built.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    # Lambda's runtime puts its own handler on the root logger: propagating would log every line twice.
    built.propagate = False
    return built


logger = _build_logger()


@contextmanager
def invocation_keys(*, request_id: str, connection_id: str, route: str) -> Iterator[None]:
    _invocation.keys = {"request_id": request_id, "connection_id": connection_id, "route": route}
    try:
        yield
    finally:
        _invocation.keys = {}


def request_id_of(lambda_context: Any) -> str:
    """The Lambda request id, or '-' where there is no context (a direct call from a script)."""
    return getattr(lambda_context, "aws_request_id", None) or "-"


@contextmanager
def publish_key(publish_id: str) -> Iterator[None]:
    """Adds a queued publish's id to every line logged inside, so one publish can be followed through
    the invocations that deliver it."""
    keys = getattr(_invocation, "keys", {})
    _invocation.keys = {**keys, "publish_id": publish_id}
    try:
        yield
    finally:
        _invocation.keys = keys
