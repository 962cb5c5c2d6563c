"""A real redis-server on a free port, for the tests: started, stopped and restarted on demand."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import redis

from testing.tls import TlsFiles

READY_LINE = "Ready to accept connections"


# Ports handed out below the kernel's ephemeral range (ip_local_port_range, 32768 and up by default).
_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port nothing listens on, for a server started a moment later. Not one the kernel would pick for
    port 0: those are also every outgoing connection's, and with a thousand clients of another test
    connecting (flake-check runs two suites at once), one of them could take it first."""
    while True:
        port = random.choice(_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class RedisServer:
    """Debian's redis-server in its own folder; ``make test`` installs it.

    Waits on the server's own log lines ("Ready to accept connections", "Cluster state changed: ok"):
    no polling, no sleeping.
    """

    def __init__(self, workdir: Path, *extra_args: str, tls: TlsFiles | None = None) -> None:
        """``tls``: serve TLS only, on ``port`` (no plain-text port), with these certificates."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra_args = extra_args
        self.tls = tls
        self.process: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._logged = threading.Condition()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again, on the same port and folder) and return once it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._logged:
            self._lines = []
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.tls is not None:
            command[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += [
                "--tls-cert-file",
                str(self.tls.server_cert),
                "--tls-key-file",
                str(self.tls.server_key),
            ]
            command += ["--tls-ca-cert-file", str(self.tls.ca_cert)]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.workdir), *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_log, args=(self.process,), daemon=True).start()
        self.wait_for_log(READY_LINE, timeout)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        with self._logged:
            seen = self._logged.wait_for(
                lambda: any(text in line for line in self._lines) or self.process.poll() is not None, timeout
            )
            log = "".join(self._lines)
        if not seen or not any(text in line for line in log.splitlines()):
            raise RuntimeError(f"redis-server never logged {text!r}:\n{log}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """Die at once (SIGKILL), as a failed node does: nothing is flushed, no client is told."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def admin(self) -> redis.Redis:
        """A client of the server itself, past any proxy, for the test's own checks."""
        return redis.Redis(port=self.port, decode_responses=True)

    def _read_log(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._logged:
                self._lines.append(line)
                self._logged.notify_all()
        with self._logged:
            self._logged.notify_all()


def start_replica(primary: RedisServer, workdir: Path) -> RedisServer:
    """A replica of ``primary`` (``--replicaof``), returned once its first sync is done, as an
    ElastiCache Multi-AZ replica."""
    with primary.admin() as client:  # a diskless sync waits 5 s for more replicas by default
        client.config_set("repl-diskless-sync-delay", 0)
    replica = RedisServer(workdir, "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    replica.wait_for_log("MASTER <-> REPLICA sync: Finished with success")
    return replica


def wait_until_replicated(primary: RedisServer, timeout_seconds: float = 10.0) -> None:
    """Block until every replica has acknowledged every write made so far (WAIT: no polling)."""
    with primary.admin() as client:
        replicas = int(client.info("replication")["connected_slaves"])
        acknowledged = client.wait(replicas, int(timeout_seconds * 1000))
    assert replicas and acknowledged == replicas, f"{acknowledged} of {replicas} replicas caught up"
