"""The gateway's terminal: one writer for every line the gateway and the runtime print."""

from __future__ import annotations

import sys
import threading
import time
from urllib.parse import urlsplit


class Log:
    """One readable line per connection event and invocation, on stdout, flushed at once.

    Every line (the gateway's and the runtime's) is written whole by this one writer, under a lock.
    The app's JSON log lines are shown only with ``app_logs``; its other output (a print, a traceback)
    always is.
    """

    def __init__(self, stream=None, *, verbose: bool = False, app_logs: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.verbose = verbose
        self.app_logs = app_logs

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def line(self, what: str, connection_id: str, detail: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        self._write(f"{stamp} {what:<12} {connection_id:<16} {detail}")

    def info(self, text: str) -> None:
        self._write(f"localgw: {text}")

    def app(self, text: str) -> None:
        """A line the app's process printed."""
        if self.app_logs or not (text.startswith("{") and text.endswith("}")):
            self._write(text)


def redact(url: str) -> str:
    """A URL with its password hidden, fit for the terminal (a REDIS_URL may carry one)."""
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url


__all__ = ["Log", "redact"]
