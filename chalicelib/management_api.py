"""The API Gateway Management API (``POST /@connections/{id}``): endpoint, client and error mapping.

The only module that talks to API Gateway. A post is signed by botocore's own ``SigV4Auth`` with the
session's credential chain (session tokens and refresh included), exactly as boto3's
``post_to_connection`` signs it. Connections are dialled by urllib3 as botocore dials them (its
proxy settings: ``HTTPS_PROXY``/``NO_PROXY`` or the client config's ``proxies``, tunnelled with
CONNECT; its CA bundle: ``AWS_CA_BUNDLE``, ``ca_bundle``, ``REQUESTS_CA_BUNDLE``), and each is checked
for a drop before reuse, as urllib3's pool does. The request and its answer's head are our own few
lines: urllib3's request path costs more CPU per post than boto3's whole client saves (README,
Performance), and it cannot keep several posts in flight on one thread.

Every socket operation is bounded by the time left to the caller's deadline, so no post outlives
the publish that started it. Failures come out as one small exception tree keyed by what the caller
must do: ``Gone`` (forget the connection), ``DeliveryError.retryable`` (post again after a backoff:
429, 502, 503, or a dial that failed before anything was sent) and everything else (log and count).
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import boto3
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.endpoint_provider import EndpointProvider
from botocore.handlers import add_recursion_detection_header
from botocore.httpsession import ProxyConfiguration, create_urllib3_context, get_cert_path
from botocore.loaders import create_loader
from botocore.utils import get_environ_proxies

from chalicelib.settings import Settings

# The service the Management API signs under and its botocore name (endpoint rules).
SIGNING_SERVICE = "execute-api"
SERVICE_NAME = "apigatewaymanagementapi"
CONNECT_TIMEOUT_SECONDS = 2.0
# The longest wait for one whole answer (not per read: a server trickling bytes is cut off too).
READ_TIMEOUT_SECONDS = 5.0
# Not delivered, so safe to send again. 500 and 504 may have been delivered: they are not retried.
RETRYABLE_STATUSES = frozenset({429, 502, 503})
_MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class DeliveryError(Exception):
    """A post failed; ``status`` is the HTTP status, or None when no answer came.

    ``retryable``: the post was certainly (429, a failed dial) or most likely (502, 503) not
    delivered, so the caller may send it again after a backoff.
    """

    def __init__(self, connection_id: str, status: int | None, reason: str, *, retryable: bool = False):
        super().__init__(f"{connection_id}: {status or 'no answer'} {reason}")
        self.connection_id = connection_id
        self.status = status
        self.reason = reason
        self.retryable = retryable


class Gone(DeliveryError):
    """410: the connection is closed; it must leave the registry."""


def endpoint_url(settings: Settings, api_id: str, stage: str) -> str:
    """Where to post, derived as Chalice does from the event; botocore's variable wins when set.

    Using the execute-api host (not the event's ``domainName``) keeps posts working behind custom
    domain names, whose base path mappings do not serve ``@connections``. The host of each partition
    (``amazonaws.com.cn``, ``c2s.ic.gov``, ...) comes from botocore's endpoint rules for the service.
    """
    if settings.management_api_endpoint_override:
        return settings.management_api_endpoint_override
    return f"https://{api_id}.{_execute_api_host(settings.aws_region)}/{stage}"


@functools.cache
def _execute_api_host(region: str) -> str:
    """``execute-api.{region}.{partition's DNS suffix}``, as botocore's rules resolve it."""
    loader = create_loader()
    provider = EndpointProvider(
        loader.load_service_model(SERVICE_NAME, "endpoint-rule-set-1"), loader.load_data("partitions")
    )
    return urlsplit(provider.resolve_endpoint(Region=region, UseFIPS=False, UseDualStack=False).url).netloc


class ManagementApi:
    """Posts to one endpoint. Thread-safe: each thread keeps its own connections, so the fan-out's
    threads form a connection pool exactly as large as the posts it keeps in flight."""

    def __init__(
        self, session: boto3.session.Session, endpoint: str, *, region: str, config: Config | None = None
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        default_port = {"http": 80, "https": 443}[parts.scheme]
        self._host_header = parts.hostname if parts.port in (None, default_port) else parts.netloc
        self._dialer = _Dialer.for_endpoint(session, self.endpoint, config)
        self._credentials = session.get_credentials()
        self._region = region
        self._local = threading.local()

    def post(self, connection_id: str, data: bytes, *, deadline: float | None = None) -> None:
        """Post once (no retry); ``deadline`` is a ``time.monotonic()`` value."""
        if deadline is None:
            deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS
        failure = self.post_many([connection_id], data, deadline)[0]
        if failure is not None:
            raise failure

    def post_many(
        self, connection_ids: Sequence[str], data: bytes, deadline: float
    ) -> list[DeliveryError | None]:
        """Post ``data`` to each id, each on its own connection of this thread; None where delivered.

        Every request is written before any answer is read, so one thread keeps all of them in flight:
        the same concurrency with a few threads instead of one per post, and far fewer hand-offs of the
        interpreter lock. Nothing here blocks past ``deadline`` (a ``time.monotonic()`` value).
        """
        trace = {}
        add_recursion_detection_header({"headers": trace})  # X-Amzn-Trace-Id in Lambda, as botocore sends it
        posts = [_Post(connection_id) for connection_id in connection_ids]
        for index, post in enumerate(posts):
            try:
                post.request = self._signed(post.connection_id, data, trace)
                post.connection = self._send(index, post.request, deadline)
            except _Failure as failure:
                post.failure = failure.error(post.connection_id)
        return [post.failure or self._answer(index, post, deadline) for index, post in enumerate(posts)]

    def _send(self, index: int, request: bytes, deadline: float, *, again: bool = False) -> _Connection:
        """Send on this thread's ``index``-th connection; the connection the answer will come on."""
        connection = self._connection(index, deadline)
        try:
            connection.send(request, deadline)
        except _Failure as failure:
            if again or not (failure.unanswered and connection.reused):
                raise
            return self._send(index, request, deadline, again=True)
        return connection

    def _signed(self, connection_id: str, data: bytes, extra_headers: dict[str, str]) -> bytes:
        """The whole request, signed by botocore's SigV4 signer with fresh (refreshed) credentials."""
        if self._credentials is None:
            raise _Failure("NoCredentialsError")
        path = f"{self._base_path}/@connections/{quote(connection_id, safe='')}"
        request = AWSRequest(
            method="POST", url=self._origin + path, data=data, headers={"Host": self._host_header}
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), SIGNING_SERVICE, self._region).add_auth(request)
        head = [f"POST {self._dialer.request_target(self._origin, path)} HTTP/1.1"]
        head += [f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in self._dialer.headers.items())]
        head += [f"{name}: {value}" for name, value in {**request.headers, **extra_headers}.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + data

    def _answer(self, index: int, post: _Post, deadline: float) -> DeliveryError | None:
        """Read the answer to a sent post.

        A kept-alive connection that ends (FIN or RST) before any byte of the answer is the race with a
        server or NAT gateway dropping an idle connection: the request is sent once more on a new
        connection. The client cannot know that the first one was not read, so this one case may
        deliver twice (README: delivery guarantee).
        """
        connection = post.connection
        try:
            status, headers = connection.receive(deadline)
        except _Failure as failure:
            connection.close()
            if not (failure.unanswered and connection.reused):
                return failure.error(post.connection_id)
            try:
                connection = self._send(index, post.request, deadline, again=True)
                status, headers = connection.receive(deadline)
            except _Failure as again:
                connection.close()
                return again.error(post.connection_id)
        if 200 <= status < 300:
            return None
        reason = headers.get("x-amzn-errortype", "").split(":")[0] or f"HTTP {status}"
        if status == 410:
            return Gone(post.connection_id, status, reason)
        return DeliveryError(post.connection_id, status, reason, retryable=status in RETRYABLE_STATUSES)

    def _connection(self, index: int, deadline: float) -> _Connection:
        """This thread's ``index``-th connection; dialled anew when it has none or it was dropped."""
        connections = self._local.__dict__.setdefault("connections", [])
        if index == len(connections):
            connections.append(None)
        connection = connections[index]
        if connection is None or not connection.usable():
            if connection is not None:
                connection.close()
            connection = connections[index] = _Connection(self._dialer.dial(deadline))
        return connection


@dataclass
class _Post:
    connection_id: str
    request: bytes = b""
    connection: _Connection | None = None
    failure: DeliveryError | None = None


class _Failure(Exception):
    """No answer: ``reason`` for the log; ``unanswered``: the connection ended before any byte of one;
    ``retryable``: nothing was sent (the dial failed), so sending again is safe."""

    def __init__(self, reason: str, *, unanswered: bool = False, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unanswered = unanswered
        self.retryable = retryable

    def error(self, connection_id: str) -> DeliveryError:
        return DeliveryError(connection_id, None, self.reason, retryable=self.retryable)


@dataclass(frozen=True)
class _Dialer:
    """How botocore would reach the endpoint: its proxy for the URL (or none), its CA bundle."""

    host: str
    port: int
    https: bool
    ca_certs: str | None  # None: no verification (botocore's verify=False)
    proxy: urllib3.util.Url | None
    proxy_headers: dict[str, str]
    proxy_ssl_context: ssl.SSLContext | None

    @classmethod
    def for_endpoint(cls, session: boto3.session.Session, endpoint: str, config: Config | None) -> _Dialer:
        parts = urlsplit(endpoint)
        # The same resolution as botocore's EndpointCreator: the config's proxies, else the environment's
        # (HTTPS_PROXY, NO_PROXY); the session's ca_bundle (AWS_CA_BUNDLE), else REQUESTS_CA_BUNDLE.
        # boto3 has no public accessor for the session's ca_bundle: botocore's session method it is.
        proxies = ProxyConfiguration(
            (config and config.proxies) or get_environ_proxies(endpoint), config and config.proxies_config
        )
        proxy_url = proxies.proxy_url_for(endpoint)
        verify = session._session.get_config_variable("ca_bundle")
        if verify is None:
            verify = _requests_ca_bundle()
        proxy_ssl_context = None
        proxy_ca_bundle = proxies.settings.get("proxy_ca_bundle")
        if proxy_ca_bundle:
            proxy_ssl_context = create_urllib3_context()
            proxy_ssl_context.load_verify_locations(cafile=proxy_ca_bundle)
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            https=parts.scheme == "https",
            ca_certs=get_cert_path(verify) if verify is not False else None,
            proxy=urllib3.util.parse_url(proxy_url) if proxy_url else None,
            proxy_headers=proxies.proxy_headers_for(proxy_url) if proxy_url else {},
            proxy_ssl_context=proxy_ssl_context,
        )

    @property
    def headers(self) -> dict[str, str]:
        """Headers every request carries: a forwarding proxy's authorization, none through a tunnel."""
        return self.proxy_headers if self.proxy and not self.https else {}

    def request_target(self, origin: str, path: str) -> str:
        """A forwarding proxy (plain-HTTP endpoint) wants the absolute URL, as botocore sends it."""
        return origin + path if self.proxy and not self.https else path

    def dial(self, deadline: float) -> urllib3.connection.HTTPConnection:
        """A connected urllib3 connection: TCP, the proxy's CONNECT tunnel, TLS with verification."""
        timeout = min(CONNECT_TIMEOUT_SECONDS, _time_left(deadline))
        options = [*urllib3.connection.HTTPConnection.default_socket_options]
        host, port = (self.host, self.port)
        if self.proxy:
            host, port = self.proxy.host, self.proxy.port or {"http": 80, "https": 443}[self.proxy.scheme]
        if self.https:
            connection = urllib3.connection.HTTPSConnection(
                host,
                port,
                timeout=timeout,
                socket_options=options,
                proxy=self.proxy,
                proxy_config=urllib3.connection.ProxyConfig(self.proxy_ssl_context, False, None, None)
                if self.proxy
                else None,
                cert_reqs="CERT_REQUIRED" if self.ca_certs else "CERT_NONE",
                ca_certs=self.ca_certs,
                ssl_context=create_urllib3_context(),
            )
            if self.proxy:
                connection.set_tunnel(self.host, self.port, self.proxy_headers, scheme=self.proxy.scheme)
        else:
            connection = urllib3.connection.HTTPConnection(
                host, port, timeout=timeout, socket_options=options, proxy=self.proxy
            )
        try:
            connection.connect()
        except (OSError, urllib3.exceptions.HTTPError) as error:
            connection.close()
            # A refused or timed-out dial sent nothing; a TLS or proxy refusal will not pass on a retry.
            retryable = isinstance(error, urllib3.exceptions.ConnectTimeoutError | socket.timeout)
            raise _Failure(type(error).__name__, retryable=retryable) from error
        return connection


def _requests_ca_bundle() -> str | bool:
    """botocore's fallback when no ca_bundle is configured (EndpointCreator._get_verify_value)."""
    return os.environ.get("REQUESTS_CA_BUNDLE", True)


class _Connection:
    """One keep-alive HTTP/1.1 connection over a socket urllib3 dialled; reads an answer's head and
    skips its body. Every send and read waits at most until the deadline given."""

    def __init__(self, dialled: urllib3.connection.HTTPConnection) -> None:
        self._dialled = dialled
        self._socket = dialled.sock
        self._buffer = bytearray()
        self.reused = False  # an answer was read on it before: a drop by the server may race a request
        self.closed = False

    def usable(self) -> bool:
        """Open, and not dropped while idle (FIN, TLS close_notify or RST pending), as urllib3 checks."""
        return not self.closed and self._dialled.is_connected

    def send(self, request: bytes, deadline: float) -> None:
        try:
            self._socket.settimeout(_time_left(deadline))
            self._socket.sendall(request)
        except OSError as error:
            self.close()
            reset = isinstance(error, ConnectionResetError | BrokenPipeError)
            raise _Failure(type(error).__name__, unanswered=reset) from error

    def receive(self, deadline: float) -> tuple[int, dict[str, str]]:
        """The answer's status and headers, within READ_TIMEOUT_SECONDS and the deadline."""
        until = min(deadline, time.monotonic() + READ_TIMEOUT_SECONDS)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise _Failure("answer head too large")
            self._fill(until)
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        try:
            version, status, *_ = lines[0].split(" ", 2)
            status_code = int(status)
        except ValueError:
            raise _Failure(f"bad status line {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.reused = True
        self._skip_body(status_code, headers, until)
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return status_code, headers

    def _skip_body(self, status: int, headers: dict[str, str], until: float) -> None:
        """Read a Content-Length body; any other body (chunked, or to the end) ends the connection:
        the status says all we need, so waiting for such a body would only risk the deadline."""
        if status in _NO_BODY_STATUSES:
            length = 0
        elif "content-length" in headers and "transfer-encoding" not in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _Failure("bad Content-Length") from None
        else:
            self.close()
            return
        while len(self._buffer) < length:
            self._fill(until)
        del self._buffer[:length]
        if self._buffer:  # more than one answer to one request: the stream cannot be trusted
            self.close()

    def _fill(self, until: float) -> None:
        try:
            self._socket.settimeout(_time_left(until))
            chunk = self._socket.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as error:
            raise _Failure(type(error).__name__, unanswered=not self._buffer) from error
        except OSError as error:
            raise _Failure(type(error).__name__) from error
        if not chunk:
            raise _Failure("connection closed before an answer", unanswered=not self._buffer)
        self._buffer += chunk

    def close(self) -> None:
        self.closed = True
        self._dialled.close()


def _time_left(until: float) -> float:
    """Seconds until ``until`` (a ``time.monotonic()`` value); a timeout once it has passed."""
    left = until - time.monotonic()
    if left <= 0:
        raise _Failure("TimeoutError")
    return left


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
