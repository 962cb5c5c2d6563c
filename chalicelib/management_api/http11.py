"""The few lines of HTTP/1.1 a post needs, without I/O: a request's bytes out, an answer's bytes in.

Our own rather than urllib3's or h11's request path: a post is one request line, a few headers and a
body, and its answer is read only for its status and headers, so these lines cost a fraction of a
general client's CPU per post (README, Performance). The answer reader takes bytes as they come, in
any pieces, and says when the answer is whole; its body is skipped. Everything about sockets and
deadlines is in ``transport``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 this client can read; the connection cannot be trusted further."""


def encode_request(request_line: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The whole request: its line, ``headers`` (Content-Length is added), a blank line, ``body``."""
    head = [request_line, f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Answer(NamedTuple):
    """An answer's status and headers (names lowercased); ``reusable``: the connection may carry the
    next request (HTTP/1.1 keep-alive, a body of known length read whole, nothing after it)."""

    status: int
    headers: dict[str, str]
    reusable: bool


class AnswerReader:
    """One answer, fed as its bytes arrive. A body of known length (Content-Length, or none for 204 and
    304) is read and skipped; any other body (chunked, or until the end) is not waited for: the status
    says all a post needs, and the answer is whole with ``reusable`` false."""

    __slots__ = ("_body_left", "_buffer", "_head")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str], bool] | None = None
        self._body_left = 0

    @property
    def started(self) -> bool:
        """Whether any byte of the answer has arrived (a connection that ends before is "unanswered")."""
        return bool(self._buffer) or self._head is not None

    def feed(self, data: bytes) -> Answer | None:
        """Take the next bytes; the answer once it is whole, else None (feed more)."""
        self._buffer += data
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError("answer head too large")
                return None
            self._head, self._body_left = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if self._body_left < 0:  # a body of unknown length: not waited for
                return self._finish(reusable=False)
        if len(self._buffer) < self._body_left:
            return None
        del self._buffer[: self._body_left]
        # more than one answer to one request: the stream cannot be trusted
        return self._finish(reusable=not self._buffer)

    def _finish(self, *, reusable: bool) -> Answer:
        status, headers, keep_alive = self._head
        return Answer(status, headers, reusable=reusable and keep_alive)


def _parse_head(head: bytes) -> tuple[tuple[int, dict[str, str], bool], int]:
    """(status, headers, keep-alive) and the body's length, -1 when it has none known."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        version, status, *_ = lines[0].split(" ", 2)
        status_code = int(status)
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = version != "HTTP/1.0" and headers.get("connection", "").lower() != "close"
    if status_code in _NO_BODY_STATUSES:
        length = 0
    elif "content-length" in headers and "transfer-encoding" not in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError("bad Content-Length") from None
        if length < 0:
            raise ProtocolError("bad Content-Length")
    else:
        length = -1
    return (status_code, headers, keep_alive), length
