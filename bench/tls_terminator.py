"""A TLS-terminating proxy in a process of its own, in front of the local gateway's Management API,
so that the app's posts go over HTTPS as on AWS while its TLS work is not counted in ours.

``python -m bench.tls_terminator FOLDER``: listens with the certificate testing.tls made in FOLDER and
prints its port; the first line of standard input is the port to forward the decrypted bytes to (the
gateway's, known only once it started, after it was told this proxy's endpoint). Serves until its
standard input ends.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testing.tcp_proxy import TcpProxy
from testing.tls import TlsFiles

REPO = Path(__file__).resolve().parent.parent
_NOWHERE = ("127.0.0.1", 9)  # nothing connects before the target is known


class TlsTerminator:
    """This module as a subprocess: its ``port``, and ``forward_to`` once the target's port is known."""

    def __init__(self, tls: TlsFiles) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.tls_terminator", str(tls.server_cert.parent)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self._process.stdout.readline())

    def forward_to(self, port: int) -> None:
        self._process.stdin.write(f"{port}\n")
        self._process.stdin.flush()

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()


if __name__ == "__main__":
    with TcpProxy(_NOWHERE, tls=TlsFiles.in_folder(Path(sys.argv[1])).server_context()) as proxy:
        print(proxy.port, flush=True)
        proxy.switch(("127.0.0.1", int(sys.stdin.readline())))
        sys.stdin.read()
