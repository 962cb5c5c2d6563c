"""The context object Lambda passes to a handler: the attributes and method Python handlers use."""

from __future__ import annotations

import time
import uuid

FAKE_ACCOUNT_ID = "123456789012"


class LambdaContext:
    function_version = "$LATEST"

    def __init__(
        self,
        function_name: str = "ws-broadcast-dev-websocket_message",
        timeout_seconds: float = 28,
        *,
        memory_mb: int = 1024,
        region: str = "us-east-1",
    ) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.memory_limit_in_mb = str(memory_mb)  # Lambda gives a string here
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{FAKE_ACCOUNT_ID}:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()) + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
