"""Running the local gateway as a subprocess for end-to-end tests, and driving clients against it.

Nothing here sleeps to wait: readiness and every later condition are lines the gateway prints
(read by a thread and signalled through a condition variable), or frames a client receives.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import subprocess
import threading
import time

from testing.gateway_process import REPO, GatewayProcess

WSCAT = REPO / "node_modules" / ".bin" / "wscat"

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{15}=$")
REQUEST_TIME_PATTERN = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")


def run(coro, timeout: float = 30):
    """Run one asyncio scenario from a plain pytest test, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def assert_same_shape(actual, expected, path: str = "event", *, free_keys: tuple[str, ...] = ()) -> None:
    """Same keys at every level and same JSON types at the leaves; values are not compared.

    ``free_keys`` names dicts whose keys legitimately differ (a client's own headers).
    """
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        if path.rsplit(".", 1)[-1] in free_keys:
            return
        assert sorted(actual) == sorted(expected), (
            f"{path}: keys {sorted(actual)} != recorded {sorted(expected)}"
        )
        for key in expected:
            assert_same_shape(actual[key], expected[key], f"{path}.{key}", free_keys=free_keys)
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
    else:
        assert type(actual) is type(expected), (
            f"{path}: {type(actual).__name__} != recorded {type(expected).__name__}"
        )


def _without_prompts(line: str) -> str:
    # wscat writes its "> " prompt even without a terminal, without a newline, after each line it sends.
    return re.sub(r"^(> )+", "", line)


class LineReader:
    """Reads a subprocess's stdout on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(_without_prompts(line.rstrip("\n")))
                self._changed.notify_all()

    def wait_line(self, index: int, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.lines) <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line {index} within {timeout} s; got {self.lines}")
                self._changed.wait(left)
            return self.lines[index]

    def take_first(self, timeout: float = 10) -> str:
        """Wait for the first line and remove it, as though it had never been read."""
        self.wait_line(0, timeout)
        with self._changed:
            return self.lines.pop(0)


_OPEN_PROBE = "wscat is open"


def open_wscats(gw: GatewayProcess, count: int, *options: str) -> list[Wscat]:
    """Start wscat clients one by one, each open (``Wscat.opened``) before the next starts."""
    clients = []
    for _ in range(count):
        mark = gw.mark()
        clients.append(Wscat(gw.url, *options))
        connection_id = gw.wait_for(r"connected\s+(\S+) from", after=mark).group(1)
        clients[-1].opened(gw, connection_id)
    return clients


class Wscat:
    """The real wscat CLI with a stdin pipe held open (it quits when its stdin closes).

    Without a terminal wscat prints only what it receives, one message per line, and errors on stderr.
    """

    def __init__(self, url: str, *options: str) -> None:
        self.proc = subprocess.Popen(
            [str(WSCAT), "-c", url, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.out = LineReader(self.proc.stdout)
        self.err = LineReader(self.proc.stderr)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def received(self, index: int, timeout: float = 10) -> str:
        return self.out.wait_line(index, timeout)

    def opened(self, gw: GatewayProcess, connection_id: str) -> None:
        """Return once this wscat's socket is open. wscat takes lines from its stdin only from then on
        (one sent before is dropped) and, without a terminal, prints nothing when it opens; the gateway's
        "connected" line comes a moment earlier. So the gateway posts it a probe, and this waits until
        wscat prints it (the probe is then taken out of what it received)."""
        gw.management_client().post_to_connection(ConnectionId=connection_id, Data=_OPEN_PROBE.encode())
        assert self.out.take_first() == _OPEN_PROBE

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def open_raw(gw: GatewayProcess, query: str = "", *, receive_buffer: int | None = None) -> socket.socket:
    """A client that sends the upgrade request itself and reads nothing after it (reads nothing at all
    when ``query`` makes ``$connect`` slow). ``receive_buffer``: a small kernel buffer, so a client that
    stops reading is felt by the server at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", gw.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /{gw.stage}{query} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def read_handshake(sock: socket.socket) -> bytes:
    """The server's answer to ``open_raw``'s upgrade request, up to the end of its headers."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)  # one byte at a time: nothing after the headers is consumed
        if not chunk:
            break
        answer += chunk
    return answer
