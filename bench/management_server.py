"""The tests' Management API server in a process of its own, so its CPU is not counted as ours.

``python -m bench.management_server [FOLDER]``: over HTTPS with the certificate testing.tls made in
FOLDER, else HTTP. Prints its endpoint on the first line of standard output, then serves until killed.
"""

import sys
import threading
from pathlib import Path

from testing.management_api import ManagementApiServer
from testing.tls import TlsFiles

if __name__ == "__main__":
    tls = TlsFiles.in_folder(Path(sys.argv[1])).server_context() if len(sys.argv) > 1 else None
    with ManagementApiServer(tls=tls, accept_any_connection=True) as server:
        print(server.endpoint, flush=True)
        threading.Event().wait() if sys.stdin is None else sys.stdin.read()
