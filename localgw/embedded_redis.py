"""An in-process Redis for ``make run`` when no ``REDIS_URL`` is given: fakeredis's ``TcpFakeServer``.

It speaks the Redis protocol on a free loopback port, so the app's unchanged redis-py client talks to
it over TCP exactly as it would to ElastiCache. Data lives in memory and dies with the gateway.
"""

from __future__ import annotations

import threading

from fakeredis import TcpFakeServer


class EmbeddedRedis:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = TcpFakeServer((host, 0), server_type="redis")
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-redis", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()  # sets fakeredis' own stop event too, so client threads end
        self._server.server_close()
        self._thread.join(timeout=5)
