"""Running the local gateway as a subprocess for end-to-end tests, and driving clients against it.

Nothing here sleeps to wait: readiness and every later condition are lines the gateway prints
(read by a thread and signalled through a condition variable), or frames a client receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[2]
FIXTURE_APP = REPO / "tests" / "e2e" / "fixture_app"
WSCAT = REPO / "node_modules" / ".bin" / "wscat"

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{15}=$")
REQUEST_TIME_PATTERN = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")


class GatewayProcess:
    """``python -m localgw`` on a free port; its stdout lines are collected and can be waited for."""

    def __init__(
        self,
        *args: str,
        project_dir: Path | None = FIXTURE_APP,
        tmp_path: Path,
        env: dict | None = None,
        command: list[str] | None = None,
        ready_timeout: float = 30,
    ):
        """``project_dir=None``: this repository's app with ``make run``'s defaults; ``command``: run that.

        The gateway gets a session (process group) of its own, so ``stop`` reaches ``make`` and its child.
        It never outlives the test that started it: a gateway that never became ready is killed at once;
        one left running is killed when this process exits, whatever way (``stop`` not reached, an
        uncaught error), and by the kernel when this process is killed (SIGKILL, for the direct child).
        """
        self.event_log = tmp_path / f"events-{id(self)}.jsonl"
        # The stage decides these (as `make run` does), not the test process's own defaults.
        full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "AUTH_MODE")}
        full_env.update({"FIXTURE_EVENT_LOG": str(self.event_log), "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        if command is None:
            command = [sys.executable, "-m", "localgw"]
            if project_dir is not None:
                command += ["--project-dir", str(project_dir)]
            command += ["--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        weakref.finalize(self, _kill_group, self.proc)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self.wait_for(r"serving \S+ at ws://127\.0\.0\.1:(\d+)/(\S+)", timeout=ready_timeout)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.port = int(ready.group(1))
        self.stage = ready.group(2)
        self.url = f"ws://127.0.0.1:{self.port}/{self.stage}"
        self.endpoint = f"http://127.0.0.1:{self.port}/{self.stage}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def mark(self) -> int:
        """A position in the output; ``wait_for(..., after=mark)`` looks only at later lines."""
        with self._changed:
            return len(self.lines)

    def wait_for(self, pattern: str, *, timeout: float = 10, after: int = 0, count: int = 1) -> re.Match:
        """Block until ``count`` lines after ``after`` match; returns the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [m for line in self.lines[after:] if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"gateway printed {len(matches)}/{count} lines matching {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(left)

    def events(self, kind: str | None = None, connection_id: str | None = None) -> list[dict]:
        """What the fixture app's handlers received (event and Lambda context), in order."""
        if not self.event_log.exists():
            return []
        # Only whole lines: a handler may be writing the next one while the test reads (a $disconnect).
        complete = self.event_log.read_text().split("\n")[:-1]
        records = [json.loads(line) for line in complete if line]
        return [
            r
            for r in records
            if (kind is None or r["kind"] == kind)
            and (connection_id is None or r["event"]["requestContext"]["connectionId"] == connection_id)
        ]

    def management_client(self):
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._reader.join(5)


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the test process dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    """A finalizer: kill the gateway's process group if the gateway still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
