"""A real HTTP server speaking the API Gateway Management API, for the app's client and boto3's.

``POST /{stage}/@connections/{id}`` 200, ``GET`` 200 with the connection, ``DELETE`` 204; 410 for
an id it does not know, 413 over 128 KB, 403 for a request not signed as API Gateway requires (for
this server's region and host, dated within 5 minutes, with the session token issued: testing.sigv4).
Tests open connections, read what each one received (waiting on a condition, never sleeping), can
make a connection answer 429 for its next few posts, or give the server a fault schedule (``Storm``:
429 to a share of the posts for a while). Every post's arrival time and answer is kept (``post_log``).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from testing import aws
from testing.apigw import API_GATEWAY_MAX_MESSAGE_BYTES as MAX_POST_BYTES
from testing.sigv4 import Expected, signature_problem

# Given a post's connection id and which of that connection's posts it is (1, 2, ...), the status to
# answer instead of delivering it (429, 503, ...), or None to serve it.
FaultSchedule = Callable[[str, int], int | None]


class Storm:
    """A throttling storm: 429 to every ``every``-th post of each connection (the 1st, the 1+every-th,
    ...; every=1: all of them), to the connections in ``only`` or to all, for ``seconds`` from the
    first post it sees, on ``clock``: a fault schedule, so a test needs no real time to end it."""

    def __init__(
        self,
        *,
        seconds: float = 10.0,
        every: int = 2,
        only: frozenset[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.every = every
        self.only = only
        self.clock = clock
        self._started: float | None = None

    def __call__(self, connection_id: str, number: int) -> int | None:
        now = self.clock()
        if self._started is None:
            self._started = now
        raging = now - self._started < self.seconds
        chosen = self.only is None or connection_id in self.only
        return 429 if raging and chosen and (number - 1) % self.every == 0 else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a fan-out dials up to 64 connections at once, and a SYN
    # the full backlog drops is sent again only after 1 s, which a short deadline cannot wait for.
    request_queue_size = 256


class ManagementApiServer:
    def __init__(
        self,
        stage: str = "api",
        tls: ssl.SSLContext | None = None,
        accept_any_connection: bool = False,
        region: str = aws.REGION,
    ) -> None:
        self.stage = stage
        self.region = region
        # For benchmarks: every id counts as open, and nothing received is kept.
        self.accept_any_connection = accept_any_connection
        # The keys issued (access key -> secret, session token): the dummy ones of testing.aws.
        self.keys: dict[str, tuple[str, str | None]] = {
            aws.ACCESS_KEY_ID: (aws.SECRET_ACCESS_KEY, aws.SESSION_TOKEN)
        }
        self.access_keys_seen: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self._open: dict[str, datetime] = {}
        self._received: dict[str, list[bytes]] = defaultdict(list)
        self._throttle: dict[str, int] = defaultdict(int)
        self._opening: dict[str, int] = {}
        self.faults: FaultSchedule | None = None
        self._post_numbers: dict[str, int] = defaultdict(int)
        # (connection id, time.monotonic() at arrival, status answered) of every signed post.
        self.post_log: list[tuple[str, float, int]] = []
        self.posts = 0
        self.tcp_connections = 0
        # How it ends a response: keep the connection ("keep-alive"), announce "close", close "silently"
        # (as a load balancer drops an idle connection), or send the body "chunked".
        self.response_style = "keep-alive"
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        if tls is not None:
            # Each handshake on its handler's thread, not the accepting one: a pool's 64 dials at once
            # are served side by side, as API Gateway serves them.
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if isinstance(self._server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{port}/{self.stage}"

    def __enter__(self) -> ManagementApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def open(self, connection_id: str) -> None:
        with self._changed:
            self._open[connection_id] = datetime.now(UTC)

    def close(self, connection_id: str) -> None:
        with self._changed:
            self._open.pop(connection_id, None)

    def throttle(self, connection_id: str, times: int) -> None:
        """Answer the next ``times`` posts to this connection with 429."""
        with self._changed:
            self._throttle[connection_id] = times

    def handshake(self, connection_id: str, posts: int) -> None:
        """Answer the next ``posts`` posts to this connection with 410, then open it: API Gateway's window
        between ``$connect`` returning and the connection taking posts."""
        with self._changed:
            self._open.pop(connection_id, None)
            self._opening[connection_id] = posts

    def received(self, connection_id: str) -> list[dict]:
        with self._changed:
            return [json.loads(body) for body in self._received[connection_id]]

    def wait_for(self, connection_id: str, count: int, timeout: float = 10.0) -> list[dict]:
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self._received[connection_id]) >= count, timeout)
        assert arrived, f"{connection_id} received {len(self._received[connection_id])} of {count} messages"
        return self.received(connection_id)

    def _handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        prefix = f"/{self.stage}/@connections/"
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}
        origin = self.endpoint.removesuffix(f"/{self.stage}")
        expected = Expected(keys=self.keys, region=self.region, host=origin.split("://")[1])
        problem = signature_problem(method, origin + path, headers, body, expected)
        if problem:
            return 403, {"message": f"Forbidden: {problem}"}
        self.access_keys_seen.append(headers["Authorization"].split("Credential=")[1].split("/")[0])
        connection_id = unquote(path[len(prefix) :])
        with self._changed:
            self.headers_seen.append(dict(headers.items()))
            self.posts += method == "POST"
            if self.accept_any_connection and method == "POST" and len(body) <= MAX_POST_BYTES:
                return 200, {}
            if self._opening.get(connection_id, 0) > 0:
                self._opening[connection_id] -= 1
                if not self._opening[connection_id]:
                    self._open[connection_id] = datetime.now(UTC)
                return 410, {"message": "GoneException"}
            if connection_id not in self._open:
                return 410, {"message": "GoneException"}
            if method == "GET":
                connected_at = self._open[connection_id].isoformat()
                return 200, {
                    "connectedAt": connected_at,
                    "lastActiveAt": connected_at,
                    "identity": {"sourceIp": "127.0.0.1", "userAgent": "tests"},
                }
            if method == "DELETE":
                del self._open[connection_id]
                return 204, {}
            status = self._post_status(connection_id, body)
            self.post_log.append((connection_id, time.monotonic(), status))
            if status == 413:
                return 413, {"message": "PayloadTooLargeException"}
            if status == 429:
                return 429, {"message": "LimitExceededException"}
            if status != 200:
                return status, {"message": "InternalServerErrorException"}
            self._received[connection_id].append(body)
            self._changed.notify_all()
            return 200, {}

    def _post_status(self, connection_id: str, body: bytes) -> int:
        """What a post to an open connection is answered: the fault schedule's say first."""
        self._post_numbers[connection_id] += 1
        if len(body) > MAX_POST_BYTES:
            return 413
        fault = self.faults(connection_id, self._post_numbers[connection_id]) if self.faults else None
        if fault is not None:
            return fault
        if self._throttle[connection_id] > 0:
            self._throttle[connection_id] -= 1
            return 429
        return 200

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self
        error_types = {410: "GoneException", 413: "PayloadTooLargeException", 429: "LimitExceededException"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server._changed:
                    server.tcp_connections += 1

            def handle(self) -> None:
                if isinstance(self.connection, ssl.SSLSocket):
                    try:
                        self.connection.do_handshake()
                    except OSError:  # a client that does not trust the CA, or went away
                        return
                super().handle()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, document = server._handle(self.command, self.path, self.headers, body)
                payload = json.dumps(document).encode() if status != 204 else b""
                style = server.response_style
                self.send_response(status)
                if status in error_types:
                    self.send_header("x-amzn-ErrorType", error_types[status])
                self.send_header("Content-Type", "application/json")
                if style == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload) if payload else b"0\r\n\r\n"
                else:
                    self.send_header("Content-Length", str(len(payload)))
                if style == "close":
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                if style in ("close", "silently"):
                    self.close_connection = True

            do_POST = do_GET = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
