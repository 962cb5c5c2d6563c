"""The thin socket loop under a post: a connection dialled as botocore dials one, a request written,
an answer read, every step bounded by the caller's deadline.

Connections are dialled by urllib3 as botocore dials them (its proxy settings: ``HTTPS_PROXY`` /
``NO_PROXY`` or the client config's ``proxies``, tunnelled with CONNECT; its CA bundle:
``AWS_CA_BUNDLE``, ``ca_bundle``, ``REQUESTS_CA_BUNDLE``), and each is checked for a drop before reuse,
as urllib3's pool does. What goes over them is ``http11``'s.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import NamedTuple
from urllib.parse import urlsplit

import boto3
import urllib3
from botocore.config import Config
from botocore.httpsession import ProxyConfiguration, create_urllib3_context, get_cert_path
from botocore.utils import get_environ_proxies

from chalicelib.management_api.http11 import AnswerReader, ProtocolError

CONNECT_TIMEOUT_SECONDS = 2.0
# The longest wait for one whole answer (not per read: a server trickling bytes is cut off too).
READ_TIMEOUT_SECONDS = 5.0


class TransportFailure(Exception):
    """No answer: ``reason`` for the log; ``unanswered``: the connection ended before any byte of one;
    ``retryable``: nothing was sent (the dial failed), so sending again is safe."""

    def __init__(self, reason: str, *, unanswered: bool = False, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unanswered = unanswered
        self.retryable = retryable


class Dialer(NamedTuple):
    """How botocore would reach the endpoint: its proxy for the URL (or none), its CA bundle.

    The bundle is loaded once, into one TLS context every connection shares (``SSLContext`` is
    thread-safe): loading a bundle of a hundred certificates costs tens of milliseconds of CPU, which
    64 connections dialled after a cold start would otherwise pay each (bench/README.md, "TLS").
    """

    host: str
    port: int
    https: bool
    verify: bool  # False: no verification (botocore's verify=False)
    tls_context: ssl.SSLContext | None  # https only
    proxy: urllib3.util.Url | None
    proxy_headers: dict[str, str]
    proxy_ssl_context: ssl.SSLContext | None

    @classmethod
    def for_endpoint(cls, session: boto3.session.Session, endpoint: str, config: Config | None) -> Dialer:
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
        tls_context = None
        if parts.scheme == "https":
            tls_context = create_urllib3_context()
            if verify is not False:
                ca_certs = get_cert_path(verify)
                if os.path.isdir(ca_certs):  # as botocore takes a directory (its ca_cert_dir)
                    tls_context.load_verify_locations(capath=ca_certs)
                else:
                    tls_context.load_verify_locations(cafile=ca_certs)
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            https=parts.scheme == "https",
            verify=verify is not False,
            tls_context=tls_context,
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
        timeout = min(CONNECT_TIMEOUT_SECONDS, time_left(deadline))
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
                cert_reqs="CERT_REQUIRED" if self.verify else "CERT_NONE",
                ssl_context=self.tls_context,
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
            raise TransportFailure(type(error).__name__, retryable=retryable) from error
        return connection


def _requests_ca_bundle() -> str | bool:
    """botocore's fallback when no ca_bundle is configured (EndpointCreator._get_verify_value)."""
    return os.environ.get("REQUESTS_CA_BUNDLE", True)


class Connection:
    """One keep-alive HTTP/1.1 connection over a socket urllib3 dialled: a request sent, its answer read
    (``http11.AnswerReader``). Every send and read waits at most until the deadline given."""

    def __init__(self, dialled: urllib3.connection.HTTPConnection) -> None:
        self._dialled = dialled
        self._socket = dialled.sock
        self.reused = False  # an answer was read on it before: a drop by the server may race a request
        self.closed = False

    def usable(self) -> bool:
        """Open, and not dropped while idle (FIN, TLS close_notify or RST pending), as urllib3 checks."""
        return not self.closed and self._dialled.is_connected

    def send(self, request: bytes, deadline: float) -> None:
        try:
            self._socket.settimeout(time_left(deadline))
            self._socket.sendall(request)
        except OSError as error:
            self.close()
            reset = isinstance(error, ConnectionResetError | BrokenPipeError)
            raise TransportFailure(type(error).__name__, unanswered=reset) from error

    def receive(self, deadline: float) -> tuple[int, dict[str, str]]:
        """The answer's status and headers, within READ_TIMEOUT_SECONDS and the deadline."""
        until = min(deadline, time.monotonic() + READ_TIMEOUT_SECONDS)
        reader = AnswerReader()
        answer = None
        try:
            while answer is None:
                answer = reader.feed(self._receive_some(until, started=reader.started))
        except ProtocolError as error:
            raise TransportFailure(str(error)) from None
        self.reused = True
        if not answer.reusable:
            self.close()
        return answer.status, answer.headers

    def _receive_some(self, until: float, *, started: bool) -> bytes:
        try:
            self._socket.settimeout(time_left(until))
            chunk = self._socket.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as error:
            raise TransportFailure(type(error).__name__, unanswered=not started) from error
        except OSError as error:
            raise TransportFailure(type(error).__name__) from error
        if not chunk:
            raise TransportFailure("connection closed before an answer", unanswered=not started)
        return chunk

    def close(self) -> None:
        self.closed = True
        self._dialled.close()


def time_left(until: float) -> float:
    """Seconds until ``until`` (a ``time.monotonic()`` value); a timeout once it has passed."""
    left = until - time.monotonic()
    if left <= 0:
        raise TransportFailure("TimeoutError")
    return left
