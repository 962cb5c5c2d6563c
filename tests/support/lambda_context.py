"""The context object Lambda passes to a handler, with the fields Chalice and Powertools read."""

from __future__ import annotations

import time
import uuid


class LambdaContext:
    def __init__(
        self, function_name: str = "ws-broadcast-dev-websocket_message", timeout_seconds: float = 28
    ):
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2026/11/26/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
