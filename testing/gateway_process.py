"""``python -m localgw`` as a subprocess, for the end-to-end tests and the benchmarks.

Nothing here sleeps to wait: readiness and every later condition are lines the gateway prints, read
by a thread and signalled through a condition variable.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import boto3

from testing import REPO

FIXTURE_APP = REPO / "tests" / "e2e" / "fixture_app"


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
