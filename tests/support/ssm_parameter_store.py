"""A stand-in for SSM Parameter Store's GetParameter (JSON 1.1 protocol), for boto3 to call over HTTP."""

from __future__ import annotations

import json

from testing.json_http import JsonHttpServer


class ParameterStore:
    """Holds SecureString parameters; records each GetParameter as (name, WithDecryption)."""

    def __init__(self, parameters: dict[str, str]) -> None:
        self.parameters = dict(parameters)
        self.requests: list[tuple[str, bool]] = []
        self.available = True
        self._server = JsonHttpServer(self._handle, content_type="application/x-amz-json-1.1")
        self.endpoint = self._server.url

    def _handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        assert headers["X-Amz-Target"] == "AmazonSSM.GetParameter"
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        request = json.loads(body)
        name = request["Name"]
        self.requests.append((name, bool(request.get("WithDecryption"))))
        if not self.available or name not in self.parameters:
            return 400, {"__type": "ParameterNotFound", "message": f"{name} not found"}
        value = self.parameters[name]
        return 200, {"Parameter": {"Name": name, "Type": "SecureString", "Value": value, "Version": 1}}

    def __enter__(self) -> ParameterStore:
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)
