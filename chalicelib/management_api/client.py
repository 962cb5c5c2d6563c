"""The client: a post signed and sent, its answer mapped to what the caller must do.

A post is signed as botocore's ``SigV4Auth`` signs it (``sigv4``: the same headers, for a fraction of
its CPU), with the session's credential chain (session tokens and refresh included), exactly as
boto3's ``post_to_connection`` signs it. Failures come out as one
small exception tree keyed by what the caller must do: ``Gone`` (forget the connection),
``DeliveryError.retryable`` (post again after a backoff: 429, 502, 503, or a dial that failed before
anything was sent) and everything else (log and count).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import boto3
from botocore.config import Config
from botocore.handlers import add_recursion_detection_header

from chalicelib.management_api.endpoint import endpoint_url
from chalicelib.management_api.http11 import encode_request
from chalicelib.management_api.sigv4 import PostSigner, payload_hash
from chalicelib.management_api.transport import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    Connection,
    Dialer,
    TransportFailure,
)
from chalicelib.settings import Settings

# The service the Management API signs under.
SIGNING_SERVICE = "execute-api"
# Not delivered, so safe to send again. 500 and 504 may have been delivered: they are not retried.
RETRYABLE_STATUSES = frozenset({429, 502, 503})


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
        self._dialer = Dialer.for_endpoint(session, self.endpoint, config)
        self._credentials = session.get_credentials()
        self._signer = PostSigner(host=self._host_header, region=region, service=SIGNING_SERVICE)
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
        body_hash = payload_hash(data)
        for index, post in enumerate(posts):
            try:
                post.request = self._signed(post.connection_id, data, body_hash, trace)
                post.connection = self._send(index, post.request, deadline)
            except TransportFailure as failure:
                post.failure = _no_answer(post.connection_id, failure)
        return [post.failure or self._answer(index, post, deadline) for index, post in enumerate(posts)]

    def _send(self, index: int, request: bytes, deadline: float, *, again: bool = False) -> Connection:
        """Send on this thread's ``index``-th connection; the connection the answer will come on."""
        connection = self._connection(index, deadline)
        try:
            connection.send(request, deadline)
        except TransportFailure as failure:
            if again or not (failure.unanswered and connection.reused):
                raise
            return self._send(index, request, deadline, again=True)
        return connection

    def _signed(
        self, connection_id: str, data: bytes, body_hash: str, extra_headers: dict[str, str]
    ) -> bytes:
        """The whole request, signed as botocore signs it, with fresh (refreshed) credentials."""
        if self._credentials is None:
            raise TransportFailure("NoCredentialsError")
        path = f"{self._base_path}/@connections/{quote(connection_id, safe='')}"
        signed = self._signer.headers(self._credentials.get_frozen_credentials(), path, body_hash)
        request_line = f"POST {self._dialer.request_target(self._origin, path)} HTTP/1.1"
        headers = {**self._dialer.headers, "Host": self._host_header, **signed, **extra_headers}
        return encode_request(request_line, headers.items(), data)

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
        except TransportFailure as failure:
            connection.close()
            if not (failure.unanswered and connection.reused):
                return _no_answer(post.connection_id, failure)
            try:
                connection = self._send(index, post.request, deadline, again=True)
                status, headers = connection.receive(deadline)
            except TransportFailure as again:
                connection.close()
                return _no_answer(post.connection_id, again)
        if 200 <= status < 300:
            return None
        reason = headers.get("x-amzn-errortype", "").split(":")[0] or f"HTTP {status}"
        if status == 410:
            return Gone(post.connection_id, status, reason)
        return DeliveryError(post.connection_id, status, reason, retryable=status in RETRYABLE_STATUSES)

    def _connection(self, index: int, deadline: float) -> Connection:
        """This thread's ``index``-th connection; dialled anew when it has none or it was dropped."""
        connections = self._local.__dict__.setdefault("connections", [])
        if index == len(connections):
            connections.append(None)
        connection = connections[index]
        if connection is None or not connection.usable():
            if connection is not None:
                connection.close()
            connection = connections[index] = Connection(self._dialer.dial(deadline))
        return connection


@dataclass
class _Post:
    connection_id: str
    request: bytes = b""
    connection: Connection | None = None
    failure: DeliveryError | None = None


def _no_answer(connection_id: str, failure: TransportFailure) -> DeliveryError:
    return DeliveryError(connection_id, None, failure.reason, retryable=failure.retryable)


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
