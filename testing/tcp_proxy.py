"""A TCP proxy that misbehaves on demand, for fault tests: an endpoint whose target moves (a DNS name
after a failover), connections it cuts with RST (a failed node, a NAT gateway's idle timeout) and
answers it delays (a slow server).

One asyncio loop on a thread of its own owns every socket, so a cut never races a read. Only the
answers (target -> client) are delayed: requests reach the target at once, as on a slow server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import Future

_CHUNK = 65536
# SO_LINGER on, 0 s: close() sends RST and drops what was unsent, as a reset flow does.
_RST = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()


class _Flow:
    """One client's connection and its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.last_active = time.monotonic()

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and forwards each connection to ``target`` (host, port); with
    ``tls``, it terminates TLS and forwards the plain bytes, as a load balancer in front of a server."""

    def __init__(self, target: tuple[str, int], *, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.answer_delay_seconds = 0.0
        self.answers_to_lose = 0
        self.accepted = 0
        self._flows: set[_Flow] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls))
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _run(self, function, *args):
        """Run ``function`` on the loop's thread and return its result."""
        done: Future = Future()

        def call() -> None:
            try:
                done.set_result(function(*args))
            except BaseException as error:  # handed to the caller's thread
                done.set_exception(error)

        self._loop.call_soon_threadsafe(call)
        return done.result(10)

    def switch(self, target: tuple[str, int]) -> None:
        """New connections go to ``target`` from now on; existing ones are left as they are."""
        self._run(setattr, self, "target", target)

    def delay_answers(self, seconds: float) -> None:
        """Hold every answer from the target this long before passing it on (0: at once)."""
        self._run(setattr, self, "answer_delay_seconds", seconds)

    def lose_next_answers(self, count: int = 1) -> None:
        """Drop the next ``count`` answers from the target and reset their connections: the target did
        the work, the client never hears of it (as when a reply is lost to a failover or a NAT reset)."""
        self._run(setattr, self, "answers_to_lose", count)

    def cut_all(self) -> int:
        """Reset every connection (both sides, RST), as a node that died; how many there were."""
        return self._run(self._reset_where, lambda flow: True)

    def reset_idle(self, idle_seconds: float = 0.0) -> int:
        """Reset every connection quiet for at least ``idle_seconds``, as a NAT gateway resets a flow idle
        for 350 s; how many there were."""
        cutoff = time.monotonic() - idle_seconds
        return self._run(self._reset_where, lambda flow: flow.last_active <= cutoff)

    def open_connections(self) -> int:
        return self._run(len, self._flows)

    def _reset_where(self, condition) -> int:
        chosen = [flow for flow in self._flows if condition(flow)]
        for flow in chosen:
            self._flows.discard(flow)
            flow.reset()
        return len(chosen)

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:  # the target is down: the client sees its connection reset
            _reset(client)
            return
        flow = _Flow(client, upstream)
        self._flows.add(flow)
        try:
            await asyncio.gather(
                self._pump(flow, client_reader, upstream, delayed=False),
                self._pump(flow, upstream_reader, client, delayed=True),
            )
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (a cancelled serving task is logged as an error)
        finally:
            if flow in self._flows:
                self._flows.discard(flow)
                flow.reset()

    async def _pump(
        self, flow: _Flow, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                flow.last_active = time.monotonic()
                if delayed and self.answer_delay_seconds:
                    await asyncio.sleep(self.answer_delay_seconds)
                if delayed and self.answers_to_lose:
                    self.answers_to_lose -= 1
                    break  # the flow is reset below, the answer unsent
                writer.write(data)
                await writer.drain()
                flow.last_active = time.monotonic()
        except (ConnectionError, OSError):
            pass
        # One side ended (or was reset): end the other, so the flow's second pump ends too.
        if flow in self._flows:
            self._flows.discard(flow)
            flow.reset()

    def close(self) -> None:
        self.cut_all()
        self._run(self._server.close)  # on the loop: a flow that ends meanwhile touches the server too
        self._call(self._finish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _finish(self) -> None:
        """End every flow's task (a held answer's among them), then the server."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
