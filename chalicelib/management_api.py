"""The API Gateway Management API (``POST /@connections/{id}``): endpoint, client and error mapping.

The only module that talks to API Gateway. A post is signed by botocore's own SigV4 signer with the
session's credential chain (session tokens and refresh included), exactly as boto3's client would
sign it, and sent on a keep-alive HTTP/1.1 connection of the calling thread. That skips boto3's
per-call machinery (parameter validation, endpoint rules, event hooks, response parsing), about two
thirds of a post's CPU time; ``bench/`` measures it against ``post_to_connection``.

Failures come out as one small exception tree keyed by what the caller must do: ``Gone`` (forget the
connection), ``Throttled`` (retry later) and ``DeliveryError`` for everything else (log and count).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import get_cert_path

from chalicelib.settings import Settings

# The name API Gateway's Management API signs under (botocore's model: signingName).
SIGNING_SERVICE = "execute-api"
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
_MAX_HEADER_LINES = 100


class DeliveryError(Exception):
    """A post failed; ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, connection_id: str, status: int | None, reason: str) -> None:
        super().__init__(f"{connection_id}: {status or 'no answer'} {reason}")
        self.connection_id = connection_id
        self.status = status
        self.reason = reason


class Gone(DeliveryError):
    """410: the connection is closed; it must leave the registry."""


class Throttled(DeliveryError):
    """429: API Gateway throttled the account; retry with backoff."""


def endpoint_url(settings: Settings, api_id: str, stage: str) -> str:
    """Where to post, derived as Chalice does from the event; botocore's variable wins when set.

    Using the execute-api host (not the event's ``domainName``) keeps posts working behind custom
    domain names, whose base path mappings do not serve ``@connections``.
    """
    if settings.management_api_endpoint_override:
        return settings.management_api_endpoint_override
    suffix = ".amazonaws.com.cn" if settings.aws_region.startswith("cn-") else ".amazonaws.com"
    return f"https://{api_id}.execute-api.{settings.aws_region}{suffix}/{stage}"


class ManagementApi:
    """Posts to one endpoint. Thread-safe: each thread keeps its own connection, so the fan-out's
    workers form a connection pool exactly as large as the worker pool."""

    def __init__(self, session: boto3.session.Session, endpoint: str, *, region: str) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        default_port = {"http": 80, "https": 443}[parts.scheme]
        self._host_header = parts.hostname if parts.port in (None, default_port) else parts.netloc
        # botocore's own CA bundle setting (AWS_CA_BUNDLE or ca_bundle in the config), as its client uses.
        self._tls = (
            ssl.create_default_context(
                cafile=get_cert_path(session._session.get_config_variable("ca_bundle") or True)
            )
            if parts.scheme == "https"
            else None
        )
        self._credentials = session.get_credentials()
        self._region = region
        self._local = threading.local()

    def post(self, connection_id: str, data: bytes) -> None:
        failure = self.post_many([connection_id], data)[0]
        if failure is not None:
            raise failure

    def post_many(self, connection_ids: Sequence[str], data: bytes) -> list[DeliveryError | None]:
        """Post ``data`` to each id, each on its own connection of this thread; None where delivered.

        Every request is written before any answer is read, so one thread keeps all of them in flight:
        the same concurrency with a few threads instead of one per post, and far fewer hand-offs of the
        interpreter lock (bench/: 0.15 ms of CPU per post with 4 connections a thread, 0.20-0.26 with 1).
        """
        posts = [_Post(connection_id) for connection_id in connection_ids]
        for index, post in enumerate(posts):
            path = f"{self._base_path}/@connections/{quote(post.connection_id, safe='')}"
            try:
                post.request = self._signed(path, data, post.connection_id)
                self._connection(index).send(post.request)
            except DeliveryError as failure:
                post.failure = failure
            except OSError as error:  # the dial failed
                post.failure = DeliveryError(post.connection_id, None, type(error).__name__)
        return [post.failure or self._answer(index, post) for index, post in enumerate(posts)]

    def _signed(self, path: str, data: bytes, connection_id: str) -> bytes:
        """The whole request, signed by botocore's SigV4 signer with fresh (refreshed) credentials."""
        if self._credentials is None:
            raise DeliveryError(connection_id, None, "NoCredentialsError")
        request = AWSRequest(
            method="POST", url=self._origin + path, data=data, headers={"Host": self._host_header}
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), SIGNING_SERVICE, self._region).add_auth(request)
        head = [f"POST {path} HTTP/1.1", f"Content-Length: {len(data)}"]
        head += [f"{name}: {value}" for name, value in request.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + data

    def _answer(self, index: int, post: _Post) -> DeliveryError | None:
        """Read the answer to a sent post; a kept-alive connection the server closed is redialled once."""
        connection = self._connection(index)
        try:
            status, headers = connection.receive()
        except (OSError, _ProtocolError) as error:
            connection.close()
            # Sending again is safe only when the server closed an idle connection before reading it.
            if not (isinstance(error, _IdleClosed) and connection.used):
                return DeliveryError(post.connection_id, None, type(error).__name__)
            try:
                connection = self._connection(index)
                connection.send(post.request)
                status, headers = connection.receive()
            except (OSError, _ProtocolError) as again:
                connection.close()
                return DeliveryError(post.connection_id, None, type(again).__name__)
        if 200 <= status < 300:
            return None
        reason = headers.get("x-amzn-errortype", "").split(":")[0] or f"HTTP {status}"
        kind = {410: Gone, 429: Throttled}.get(status, DeliveryError)
        return kind(post.connection_id, status, reason)

    def _connection(self, index: int) -> _Connection:
        """This thread's ``index``-th connection, dialled when it has none or it was closed."""
        connections = self._local.__dict__.setdefault("connections", [])
        if index == len(connections):
            connections.append(None)
        connection = connections[index]
        if connection is None or connection.closed:
            connection = connections[index] = _Connection(self._address, self._host_header, self._tls)
        return connection


@dataclass
class _Post:
    connection_id: str
    request: bytes = b""
    failure: DeliveryError | None = None


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


class _IdleClosed(_ProtocolError):
    """The server closed a kept-alive connection without answering: the request was never read."""


class _Connection:
    """One keep-alive HTTP/1.1 connection; reads a response's status and headers, skips its body."""

    def __init__(self, address: tuple[str, int], host: str, tls: ssl.SSLContext | None) -> None:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=address[0])
        sock.settimeout(READ_TIMEOUT_SECONDS)
        self._socket = sock
        self._reader = sock.makefile("rb")
        self.used = False
        self.closed = False
        self._send_failure: Exception | None = None

    def send(self, request: bytes) -> None:
        """Write a request; a failure is kept for ``receive`` to report, in the order of the answers."""
        try:
            self._socket.sendall(request)
            self._send_failure = None
        except (ConnectionResetError, BrokenPipeError) as error:
            self._send_failure = _IdleClosed(str(error))
        except OSError as error:
            self._send_failure = error

    def receive(self) -> tuple[int, dict[str, str]]:
        if self._send_failure is not None:
            raise self._send_failure
        try:
            status_line = self._reader.readline(65537)
        except (ConnectionResetError, BrokenPipeError) as error:
            raise _IdleClosed(str(error)) from error
        if not status_line:
            raise _IdleClosed("connection closed before a response")
        self.used = True
        try:
            version, status, *_ = status_line.decode("latin-1").split(" ", 2)
            status_code = int(status)
        except ValueError:
            raise _ProtocolError(f"bad status line {status_line[:80]!r}") from None
        headers = self._read_headers()
        self._skip_body(headers)
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return status_code, headers

    def _read_headers(self) -> dict[str, str]:
        headers = {}
        for _ in range(_MAX_HEADER_LINES):
            line = self._reader.readline(65537)
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise _ProtocolError("connection closed in the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise _ProtocolError("too many header lines")

    def _skip_body(self, headers: dict[str, str]) -> None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int(self._reader.readline(1026).split(b";")[0], 16):
                self._reader.read(size + 2)
            while self._reader.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        elif "content-length" in headers:
            self._reader.read(int(headers["content-length"]))
        else:
            self._reader.read()  # the body runs to the end of the connection
            headers["connection"] = "close"

    def close(self) -> None:
        self.closed = True
        self._reader.close()
        self._socket.close()


class ManagementApis:
    """The clients of one container, one per endpoint, created on first use and then reused."""

    def __init__(self, settings: Settings, session: boto3.session.Session) -> None:
        self._settings = settings
        self._session = session
        self._clients: dict[str, ManagementApi] = {}
        self._lock = threading.Lock()

    def for_event(self, api_id: str, stage: str) -> ManagementApi:
        endpoint = endpoint_url(self._settings, api_id, stage)
        with self._lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = ManagementApi(
                    self._session, endpoint, region=self._settings.aws_region
                )
            return self._clients[endpoint]
