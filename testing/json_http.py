"""A small real HTTP server on 127.0.0.1 answering JSON, for the stand-ins of the services AWS runs
(an identity provider's JWKS, SSM Parameter Store, an IAM-authorized REST route)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (method, path, headers, body) -> (status, JSON document)
Handle = Callable[[str, str, object, bytes], tuple[int, dict]]


class JsonHttpServer:
    """Serves ``handle`` in a thread from ``__enter__`` to ``__exit__``; ``url`` is its base URL."""

    def __init__(self, handle: Handle, content_type: str = "application/json") -> None:
        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, document = handle(self.command, self.path, self.headers, body)
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> JsonHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
