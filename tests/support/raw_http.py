"""Adversarial HTTP servers on raw sockets (127.0.0.1, TLS optional): each accepted connection runs a
behaviour of the test's, which may answer, stall, trickle, close with FIN, close_notify or RST."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable


class Peer:
    """One accepted connection, as the behaviour sees it."""

    def __init__(self, sock: socket.socket, number: int, server: RawServer) -> None:
        self.sock = sock
        self.number = number  # 0 for the first connection the server accepted
        self.server = server
        self._buffer = b""

    def read_request(self) -> bytes | None:
        """The next request's head and body; None when the client closed the connection."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._recv()
            if not chunk:
                return None
            self._buffer += chunk
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        while len(rest) < length:
            chunk = self._recv()
            if not chunk:
                return None
            rest += chunk
        self._buffer = rest[length:]
        request = head + b"\r\n\r\n" + rest[:length]
        self.server.record(request)
        return request

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, status: int = 200, reason: str = "OK", headers: str = "Content-Length: 0\r\n") -> None:
        self.send(f"HTTP/1.1 {status} {reason}\r\n{headers}\r\n".encode())

    def wait_for_client_close(self) -> None:
        """Hold the connection open, answering nothing, until the client closes it."""
        while self._recv():
            pass

    def close_with_fin(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def close_with_close_notify(self) -> None:
        """TLS close_notify, then FIN: what a TLS server does on an idle timeout."""
        self.sock.settimeout(2)
        with contextlib.suppress(OSError):
            self.sock = self.sock.unwrap()
        self.close_with_fin()

    def close_with_rst(self) -> None:
        """RST instead of FIN (SO_LINGER 0), as a NAT gateway answers a flow it has forgotten."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class RawServer:
    def __init__(self, behaviour: Callable[[Peer], None], *, tls: ssl.SSLContext | None = None) -> None:
        self._behaviour = behaviour
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._changed = threading.Condition()
        self._stop = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def endpoint(self, stage: str = "api") -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}/{stage}"

    def record(self, request: bytes) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def wait_for_connections(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.connections >= count, timeout=10)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop[0].send(b"x")
        self._thread.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        while True:
            readable, _, _ = select.select([self._listener, self._stop[1]], [], [])
            if self._stop[1] in readable:
                return
            sock, _ = self._listener.accept()
            with self._changed:
                number = self.connections
                self.connections += 1
                self._changed.notify_all()
            threading.Thread(target=self._run, args=(sock, number), daemon=True).start()

    def _run(self, sock: socket.socket, number: int) -> None:
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            self._behaviour(Peer(sock, number, self))
        except OSError:
            pass  # the client went away: part of what these servers test
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def serve_forever(answer: Callable[[Peer, bytes], None]) -> Callable[[Peer], None]:
    """A behaviour that reads each request on the connection and lets ``answer`` reply to it."""

    def behaviour(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            answer(peer, request)

    return behaviour


class ConnectProxy:
    """An HTTP proxy that only tunnels (CONNECT host:port), as a VPC's egress proxy does."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        self.server = RawServer(self._tunnel)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> ConnectProxy:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(*exc_info)

    def _tunnel(self, peer: Peer) -> None:
        head = peer.read_request()
        if head is None:
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        if method != "CONNECT":
            peer.answer(405, "Method Not Allowed")
            return
        self.connects.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        peer.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        sockets = [peer.sock, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [])
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is peer.sock else peer.sock).sendall(data)
        finally:
            upstream.close()
