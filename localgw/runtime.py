"""The Lambda side of the local gateway: the app runs in a process of its own.

In AWS, API Gateway and the Lambda functions run on different machines. Running the app in the
gateway's process instead would make the two share one interpreter lock: the gateway's work on each
Management API post would slow the app's fan-out, and a benchmark would measure the emulator. So the
gateway starts this runtime process, which loads the project as Lambda does (environment first, then
``import app``), and sends it one message per invocation over a pipe. The runtime runs invocations
concurrently in a thread pool and answers each with the handler's response or its error.

The runtime ignores SIGINT and SIGTERM: the gateway, which receives them with it (one process group),
still has every connection's ``$disconnect`` to run, and stops the runtime itself afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from localgw.lambdaenv import HandlerError, LambdaFunction, invoke
from localgw.project import (
    ProjectError,
    import_app,
    point_websocket_api_at,
    read_config,
    websocket_functions,
)

_STOP = None


class Runtime:
    """The gateway's handle on the runtime process: ``invoke`` returns a future of the response.

    When the process dies (a handler called ``os._exit``, a C extension crashed), its invocations in
    flight fail, and the next invocation starts a new process, as Lambda replaces a container whose
    runtime exited; that start blocks the gateway for the length of a cold start.
    """

    def __init__(
        self,
        project_dir: Path,
        *,
        chalice_stage: str,
        endpoint: str,
        region: str,
        workers: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self._arguments = (str(project_dir), chalice_stage, endpoint, region, workers)
        self._log = log
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[Connection, Future]] = {}
        self.functions = self._start()

    def _start(self) -> dict[str, LambdaFunction]:
        """Start a runtime process (a cold start); return its functions once the app is loaded."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a new container is
        connection, child_end = context.Pipe()
        process = context.Process(
            target=_serve, args=(child_end, *self._arguments), name="localgw-runtime", daemon=True
        )
        process.start()
        child_end.close()
        try:
            kind, payload = connection.recv()
        except EOFError:
            raise ProjectError("the runtime process exited while loading the app") from None
        if kind == "error":
            process.join(5)
            raise ProjectError(payload)
        self._process, self._connection = process, connection
        threading.Thread(
            target=self._read_answers, args=(connection,), name="localgw-runtime-reader", daemon=True
        ).start()
        return {route: LambdaFunction(**fields, handler=None) for route, fields in payload.items()}

    def invoke(self, function: LambdaFunction, event: dict, *, timeout_seconds: float) -> Future:
        future: Future = Future()
        with self._lock:
            if not self._process.is_alive():
                self._log(f"the runtime process exited ({self._process.exitcode}): starting a new one")
                try:
                    self._start()
                except ProjectError as error:
                    future.set_exception(HandlerError(str(error)))
                    return future
            invocation = next(self._ids)
            self._pending[invocation] = (self._connection, future)
            try:
                self._connection.send((invocation, function.name, event, timeout_seconds))
            except (OSError, ValueError) as error:
                del self._pending[invocation]
                future.set_exception(HandlerError(f"the runtime process is gone: {error}"))
        return future

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):  # already gone
            self._connection.send(_STOP)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _read_answers(self, connection: Connection) -> None:
        """Resolve the futures of one runtime process; when it exits, fail those it left unanswered."""
        while True:
            try:
                invocation, response, error = connection.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                _, future = self._pending.pop(invocation, (None, None))
            if future is None:
                continue
            if error is None:
                future.set_result(response)
            else:
                future.set_exception(HandlerError(error))
        with self._lock:
            orphans = [invocation for invocation, (owner, _) in self._pending.items() if owner is connection]
            futures = [self._pending.pop(invocation)[1] for invocation in orphans]
        for future in futures:
            future.set_exception(
                HandlerError("Runtime exited: the runtime process ended during the invocation")
            )


def _serve(
    connection, project_dir: str, chalice_stage: str, endpoint: str, region: str, workers: int
) -> None:
    """The runtime process: load the app, then run invocations until told to stop or the gateway is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        project = read_config(Path(project_dir), chalice_stage)
        app = import_app(Path(project_dir))
        functions = websocket_functions(app, project, region=region)
        point_websocket_api_at(app, endpoint)
    except ProjectError as error:
        connection.send(("error", str(error)))
        return
    by_name = {function.name: function for function in functions.values()}
    metadata = {
        route: {
            f.name: getattr(function, f.name) for f in dataclasses.fields(function) if f.name != "handler"
        }
        for route, function in functions.items()
    }
    connection.send(("ready", metadata))
    sending = threading.Lock()

    def run(invocation: int, name: str, event: dict, timeout_seconds: float) -> None:
        try:
            response, error = invoke(by_name[name], event, timeout_seconds=timeout_seconds)[0], None
        except HandlerError as failure:
            response, error = None, str(failure)
        with sending:
            connection.send((invocation, response, error))

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda")
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            break
        if message is _STOP:
            break
        pool.submit(run, *message)
    # A handler still running (one that outlived its timeout) must not keep the process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
