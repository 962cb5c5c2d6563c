"""The Lambda side of the local gateway: the app runs in a process of its own.

In AWS, API Gateway and the Lambda functions run on different machines. Running the app in the
gateway's process instead would make the two share one interpreter lock: the gateway's work on each
Management API post would slow the app's fan-out, and a benchmark would measure the emulator. So the
gateway starts this runtime process, which loads the project as Lambda does (environment first, then
``import app``), and sends it one message per invocation over a pipe. The runtime runs invocations
concurrently in a thread pool and answers each with the handler's response or its error.

The runtime's stdout and stderr (the app's log lines, a handler's traceback) come back to the gateway
over a pipe of their own, line-buffered, and the gateway prints each whole line through its one writer:
two processes writing to one terminal would splice their lines under load.

The runtime ignores SIGINT and SIGTERM: the gateway, which receives them with it (one process group),
still has every connection's ``$disconnect`` to run, and stops the runtime itself afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from localgw import rest
from localgw.lambdaenv import HandlerError, LambdaFunction, invoke
from localgw.project import (
    REST_FUNCTION_NAME,
    REST_ROUTE_KEY,
    ProjectError,
    SqsSource,
    import_app,
    point_websocket_api_at,
    read_config,
    rest_function,
    sqs_functions,
    websocket_functions,
)

_STOP = None


class Runtime:
    """The gateway's handle on the runtime process: ``invoke`` returns a future of the response.

    When the process dies (a handler called ``os._exit``, a C extension crashed), its invocations in
    flight fail, and the next invocation starts a new process, as Lambda replaces a container whose
    runtime exited; that start blocks the gateway for the length of a cold start. The process counts as
    dead from the moment its pipe closes (the reader sees it first; ``is_alive`` may lag behind).
    ``output`` receives each whole line the runtime prints. ``functions`` holds every function by the
    key the gateway knows it by; ``sqs_sources`` the event source mapping of each SQS one (same key).
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
        output: Callable[[str], None] = print,
    ) -> None:
        self._arguments = (str(project_dir), chalice_stage, endpoint, region, workers)
        self._log = log
        self._output = output
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[Connection, Future]] = {}
        self._exited = False  # the current process's pipe has closed
        self.sqs_sources: dict[str, SqsSource] = {}
        self.functions = self._start()

    @property
    def exited(self) -> bool:
        """True when the next invocation will start a new process (a cold start for every function)."""
        return self._exited or not self._process.is_alive()

    def _start(self) -> dict[str, LambdaFunction]:
        """Start a runtime process (a cold start); return its functions once the app is loaded."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a new container is
        connection, child_end = context.Pipe()
        output_read, output_write = context.Pipe(duplex=False)
        process = context.Process(
            target=_serve,
            args=(child_end, output_write, *self._arguments),
            name="localgw-runtime",
            daemon=True,
        )
        process.start()
        child_end.close()
        output_write.close()
        threading.Thread(
            target=self._read_output, args=(output_read,), name="localgw-runtime-output", daemon=True
        ).start()
        try:
            kind, payload = connection.recv()
        except EOFError:
            raise ProjectError("the runtime process exited while loading the app") from None
        if kind == "error":
            process.join(5)
            raise ProjectError(payload)
        self._process, self._connection, self._exited = process, connection, False
        threading.Thread(
            target=self._read_answers, args=(connection,), name="localgw-runtime-reader", daemon=True
        ).start()
        self.sqs_sources = {key: SqsSource(**fields) for key, fields in payload["sqs"].items()}
        return {key: LambdaFunction(**fields, handler=None) for key, fields in payload["functions"].items()}

    def invoke(self, function: LambdaFunction, event: dict, *, timeout_seconds: float) -> Future:
        future: Future = Future()
        with self._lock:
            if self.exited:
                self._process.join(5)  # its pipe is closed: the exit code follows at once
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
            if future is not None:
                _settle(future, response, error)
        with self._lock:
            if connection is self._connection:
                self._exited = True
            orphans = [invocation for invocation, (owner, _) in self._pending.items() if owner is connection]
            futures = [self._pending.pop(invocation)[1] for invocation in orphans]
        for future in futures:
            _settle(future, None, "Runtime exited: the runtime process ended during the invocation")

    def _read_output(self, pipe: Connection) -> None:
        """Hand each whole line the runtime prints to ``output``, until the process is gone."""
        with open(pipe.fileno(), "rb", closefd=False) as stream:
            for raw in stream:
                self._output(raw.decode("utf-8", "replace").rstrip("\n"))
        pipe.close()


def _settle(future: Future, response: object, error: str | None) -> None:
    """Resolve an invocation's future, unless the gateway gave up on it (cancelled at its timeout)."""
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: nobody waits for it any more
        if error is None:
            future.set_result(response)
        else:
            future.set_exception(HandlerError(error))


class _Lines(io.TextIOBase):
    """A stdout for many handler threads: each thread's text goes out one whole line per write.

    Lambda runs one invocation per container, so a handler's ``print`` never meets another's; here
    handlers share a process, and a plain stream would splice two threads' text inside a line.
    """

    _lock = threading.Lock()  # stdout and stderr share one pipe

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = threading.local()

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:
        *lines, rest = (getattr(self._pending, "text", "") + text).split("\n")
        self._pending.text = rest
        if lines:
            self._emit("".join(line + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        """Emit this thread's unfinished line as a line of its own."""
        rest, self._pending.text = getattr(self._pending, "text", ""), ""
        if rest:
            self._emit(rest + "\n")

    def _emit(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]


def _print_to(output: Connection) -> None:
    """Send this process's stdout and stderr (C code's too) to the gateway's output pipe."""
    for fd in (1, 2):
        os.dup2(output.fileno(), fd)
    output.close()
    sys.stdout, sys.stderr = _Lines(1), _Lines(2)


def _serve(
    connection,
    output: Connection,
    project_dir: str,
    chalice_stage: str,
    endpoint: str,
    region: str,
    workers: int,
) -> None:
    """The runtime process: load the app, then run invocations until told to stop or the gateway is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _print_to(output)  # before the app is imported: its loggers keep the sys.stdout they find
    try:
        project = read_config(Path(project_dir), chalice_stage)
        app = import_app(Path(project_dir))
        functions = websocket_functions(app, project, region=region)
        sqs = sqs_functions(app, project, region=region)
        functions.update({key: function for key, (function, _) in sqs.items()})
        rest_api = None
        if app.routes:
            functions[REST_ROUTE_KEY] = rest_function(project, region=region)
            rest_api = rest.RestApi(app, project.scoped(REST_FUNCTION_NAME))
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
    sources = {key: dataclasses.asdict(source) for key, (_, source) in sqs.items()}
    connection.send(("ready", {"functions": metadata, "sqs": sources}))
    sending = threading.Lock()

    def run(invocation: int, name: str, event: dict, timeout_seconds: float) -> None:
        try:
            if name == REST_FUNCTION_NAME:
                response, error = rest_api.handle(**event), None
            else:
                response, error = invoke(by_name[name], event, timeout_seconds=timeout_seconds)[0], None
        except HandlerError as failure:
            response, error = None, str(failure)
        except Exception as failure:  # a REST handler's own error: Chalice turns most into a 500 itself
            response, error = None, f"{type(failure).__name__}: {failure}"
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
