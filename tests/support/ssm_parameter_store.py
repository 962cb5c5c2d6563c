"""A stand-in for SSM Parameter Store's GetParameter (JSON 1.1 protocol), for boto3 to call over HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ParameterStore:
    """Holds SecureString parameters; records each GetParameter as (name, WithDecryption)."""

    def __init__(self, parameters: dict[str, str]) -> None:
        self.parameters = dict(parameters)
        self.requests: list[tuple[str, bool]] = []
        self.available = True
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["X-Amz-Target"] == "AmazonSSM.GetParameter"
                assert self.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
                name = request["Name"]
                store.requests.append((name, bool(request.get("WithDecryption"))))
                if not store.available or name not in store.parameters:
                    self._answer(400, {"__type": "ParameterNotFound", "message": f"{name} not found"})
                    return
                self._answer(
                    200,
                    {
                        "Parameter": {
                            "Name": name,
                            "Type": "SecureString",
                            "Value": store.parameters[name],
                            "Version": 1,
                        }
                    },
                )

            def _answer(self, status: int, document: dict) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ParameterStore:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
