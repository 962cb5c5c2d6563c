"""The tests' Management API server in a process of its own, so its CPU is not counted as ours.

Prints its endpoint on the first line of standard output, then serves until killed.
"""

import sys
import threading

from testing.management_api import ManagementApiServer

if __name__ == "__main__":
    with ManagementApiServer(accept_any_connection=True) as server:
        print(server.endpoint, flush=True)
        threading.Event().wait() if sys.stdin is None else sys.stdin.read()
