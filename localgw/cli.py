"""``python -m localgw``: serve a Chalice project's WebSocket API locally, as API Gateway would."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from localgw.embedded_redis import EmbeddedRedis
from localgw.gateway import Gateway, serve
from localgw.limits import Limits
from localgw.log import Log, redact
from localgw.outbox import DEFAULT_LIMIT_BYTES
from localgw.project import (
    FUNCTION_NAMES,
    REST_ROUTE_KEY,
    ProjectConfig,
    ProjectError,
    apply_environment,
    default_project_dir,
    ensure_aws_environment,
    read_config,
)
from localgw.runtime import Runtime
from localgw.sqs import EventSourceMapping
from testing.apigw import (
    API_GATEWAY_IDLE_TIMEOUT_SECONDS,
    API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS,
    API_GATEWAY_MAX_CONNECTION_SECONDS,
    API_GATEWAY_MAX_MESSAGE_BYTES,
    ROUTE_DEFAULT,
)
from testing.sqs import SqsStandIn, create_queue_with_dlq, queue_url

DEFAULT_API_ID = "localgw001"  # 10 characters, like a real API id
# Handlers running at once in the one runtime process. Lambda runs one invocation per container and
# as many containers as there are requests in flight; here they share one process, so the app's
# per-process pools (redis-py's holds 100 connections) see up to this many users at once.
DEFAULT_CONCURRENCY = 128
# SQS event source mappings: short enough that a failed batch comes back while you watch.
DEFAULT_SQS_VISIBILITY_TIMEOUT_SECONDS = 5
DEFAULT_SQS_MAX_RECEIVE_COUNT = 3
DEFAULT_SQS_POLLERS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localgw",
        description="Serve a Chalice app's WebSocket API locally, the way API Gateway and Lambda run it.",
    )
    where = parser.add_argument_group("where")
    where.add_argument(
        "--project-dir", type=Path, default=default_project_dir(), help="Chalice project (app.py)"
    )
    where.add_argument(
        "--stage",
        default=None,
        help="API Gateway stage: the URL path and the events' stage "
        "(default: the Chalice stage's api_gateway_stage, else api)",
    )
    where.add_argument(
        "--chalice-stage",
        default="dev",
        help="Chalice stage whose .chalice/config.json settings to use (default: dev, as `chalice local`)",
    )
    where.add_argument("--host", default="localhost", help="address to listen on (default: localhost)")
    where.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    where.add_argument("--api-id", default=DEFAULT_API_ID, help="the apiId put into events")
    where.add_argument(
        "--page", type=Path, default=None, help="an HTML file to serve at GET / (make run: the sample client)"
    )
    limits = parser.add_argument_group("limits (API Gateway's by default)")
    limits.add_argument("--idle-timeout-seconds", type=float, default=API_GATEWAY_IDLE_TIMEOUT_SECONDS)
    limits.add_argument("--max-connection-seconds", type=float, default=API_GATEWAY_MAX_CONNECTION_SECONDS)
    limits.add_argument("--max-message-bytes", type=int, default=API_GATEWAY_MAX_MESSAGE_BYTES)
    limits.add_argument(
        "--integration-timeout-seconds", type=float, default=API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS
    )
    limits.add_argument(
        "--max-outbound-bytes",
        type=int,
        default=DEFAULT_LIMIT_BYTES,
        help="bytes queued for a client that is not reading before it is closed with 1008 "
        f"(default {DEFAULT_LIMIT_BYTES}: eight 128 KB messages; at least --max-message-bytes)",
    )
    limits.add_argument(
        "--handler-timeout-seconds",
        type=float,
        default=None,
        help="override every function's lambda_timeout (default: from .chalice/config.json, else 60)",
    )
    bench = parser.add_argument_group("benchmarks")
    bench.add_argument(
        "--post-latency-ms",
        type=float,
        default=0.0,
        help="answer each Management API post after this long, as a real round trip takes (default 0)",
    )
    bench.add_argument(
        "--management-api-endpoint",
        metavar="URL",
        help="where the app posts instead of this gateway's own endpoint: a TLS-terminating proxy "
        "in front of it, so that the posts go over HTTPS as on AWS (default: this gateway)",
    )
    parser.add_argument(
        "--concurrency",
        "--workers",
        dest="concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="handler invocations running at once in the one runtime process "
        f"(default {DEFAULT_CONCURRENCY}; Lambda runs one per container)",
    )
    sqs = parser.add_argument_group("SQS event sources (@app.on_sqs_message)")
    sqs.add_argument(
        "--sqs-visibility-timeout-seconds",
        type=int,
        default=DEFAULT_SQS_VISIBILITY_TIMEOUT_SECONDS,
        help="each queue's visibility timeout: how long a failed batch waits before it is received again "
        f"(default {DEFAULT_SQS_VISIBILITY_TIMEOUT_SECONDS})",
    )
    sqs.add_argument(
        "--sqs-max-receive-count",
        type=int,
        default=DEFAULT_SQS_MAX_RECEIVE_COUNT,
        help="receives before SQS moves a message to the queue's <name>-dlq "
        f"(its redrive policy's maxReceiveCount; default {DEFAULT_SQS_MAX_RECEIVE_COUNT})",
    )
    sqs.add_argument(
        "--sqs-pollers",
        type=int,
        default=DEFAULT_SQS_POLLERS,
        help="batches of one queue invoked at once (default "
        f"{DEFAULT_SQS_POLLERS}; a lower maximum_concurrency in the decorator lowers it)",
    )
    output = parser.add_argument_group("terminal output")
    output.add_argument("--verbose", action="store_true", help="also log every Management API call")
    output.add_argument(
        "--app-logs", action="store_true", help="also show the app's JSON log lines (hidden by default)"
    )
    args = parser.parse_args(argv)
    if args.max_outbound_bytes < args.max_message_bytes:
        parser.error("--max-outbound-bytes must hold one message: at least --max-message-bytes")
    return args


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, all on one port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    for family, kind, proto, _, address in infos:
        if (family, address[0]) in seen:
            continue
        seen.add((family, address[0]))
        if sockets:  # the first socket chose the port
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            if not sockets:
                raise
            continue
        sock.listen(1024)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _endpoint_host(sock: socket.socket) -> str:
    address = sock.getsockname()[0]
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "[::1]"
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True)
class Site:
    """Where the gateway listens: its sockets (one port), the stage path, the Management API's URL."""

    sockets: list[socket.socket]
    stage: str

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"http://{_endpoint_host(self.sockets[0])}:{self.port}/{self.stage}"


def event_source_mappings(runtime: Runtime, args: argparse.Namespace, log: Log) -> list[EventSourceMapping]:
    """Each SQS event source's queue and dead-letter queue at AWS_ENDPOINT_URL_SQS, and its pollers."""
    if not runtime.sqs_sources:
        return []
    import boto3

    client = boto3.client("sqs", region_name=os.environ["AWS_REGION"])  # AWS_ENDPOINT_URL_SQS: the stand-in
    mappings = []
    for key, source in sorted(runtime.sqs_sources.items()):
        function = runtime.functions[key]
        queue = create_queue_with_dlq(
            client,
            source.queue,
            visibility_timeout_seconds=args.sqs_visibility_timeout_seconds,
            max_receive_count=args.sqs_max_receive_count,
        )
        account = queue.arn.split(":")[4]
        log.info(
            f"queue {queue_url(source.queue, region=os.environ['AWS_REGION'], account_id=account)} "
            f"(dead letters: {queue.dlq_url.rsplit('/', 1)[-1]} after {args.sqs_max_receive_count} receives, "
            f"visibility timeout {args.sqs_visibility_timeout_seconds} s) -> {function.name}"
        )
        timeout = args.handler_timeout_seconds or function.timeout_seconds
        if args.sqs_visibility_timeout_seconds < timeout:
            log.info(
                f"warning: {source.queue}'s visibility timeout ({args.sqs_visibility_timeout_seconds} s) is "
                f"shorter than {function.name}'s timeout ({timeout:g} s): AWS refuses such a mapping; here a "
                "batch that runs longer is received again meanwhile"
            )
        mapping = EventSourceMapping(
            function,
            source,
            queue,
            client=client,
            invoke=runtime.invoke,
            timeout_seconds=timeout,
            pollers=max(1, min(source.maximum_concurrency or args.sqs_pollers, args.sqs_pollers)),
            max_receive_count=args.sqs_max_receive_count,
            log_line=log.line,
        )
        log.info(
            f"{mapping.pollers} poller(s), batches of up to {source.batch_size}"
            + (
                f" gathered for up to {source.maximum_batching_window_seconds:g} s"
                if source.maximum_batching_window_seconds
                else ""
            )
        )
        mappings.append(mapping)
    return mappings


@dataclass
class Services:
    """What the gateway runs beside it: the Redis and SQS stand-ins it started (none when the
    environment names real ones), the app's runtime process and its SQS pollers."""

    redis: EmbeddedRedis | None = None
    sqs: SqsStandIn | None = None
    runtime: Runtime | None = None
    mappings: list[EventSourceMapping] = field(default_factory=list)

    def start(self, project: ProjectConfig, args: argparse.Namespace, *, endpoint: str, log: Log) -> None:
        """Start each in turn; each is kept as it starts, so that ``stop`` after a failure stops those."""
        use_project_environment(project, management_api=args.management_api_endpoint or endpoint, log=log)
        self.redis = start_redis_unless_given(log)
        self.sqs = start_sqs_unless_given(log)
        self.runtime = Runtime(
            project.project_dir,
            chalice_stage=args.chalice_stage,
            endpoint=endpoint,
            region=os.environ["AWS_REGION"],
            workers=args.concurrency,
            log=log.info,
            output=log.app,
        )
        self.mappings = event_source_mappings(self.runtime, args, log)

    def stop(self) -> None:
        """Stop what started: the pollers first (they invoke the runtime), the stand-ins last."""
        for mapping in self.mappings:
            mapping.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.sqs is not None:
            self.sqs.stop()
        if self.redis is not None:
            self.redis.stop()


def use_project_environment(project: ProjectConfig, *, management_api: str, log: Log) -> None:
    """The project's environment variables, AWS's (dummy ones unless set) and our Management API's."""
    apply_environment(project.environment, os.environ)
    for conflict in project.conflicts:
        log.info(f"warning: {conflict}; one process shares one environment, the first value is used")
    ensure_aws_environment(os.environ)
    # The app's own Management API client (botocore honours this standard variable) must reach us.
    os.environ["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] = management_api


def start_redis_unless_given(log: Log) -> EmbeddedRedis | None:
    """The REDIS_URL the environment gives, or an embedded fakeredis started (and put into REDIS_URL)."""
    if os.environ.get("REDIS_URL", "").strip():
        log.info(f"redis: {redact(os.environ['REDIS_URL'])} (REDIS_URL)")
        return None
    embedded = EmbeddedRedis().start()
    os.environ["REDIS_URL"] = embedded.url
    log.info(f"redis: embedded in-process fakeredis at {embedded.url} (set REDIS_URL to use a real one)")
    return embedded


def start_sqs_unless_given(log: Log) -> SqsStandIn | None:
    """The AWS_ENDPOINT_URL_SQS the environment gives, or moto's SQS started (and put into it)."""
    if os.environ.get("AWS_ENDPOINT_URL_SQS", "").strip():
        log.info(f"sqs: {os.environ['AWS_ENDPOINT_URL_SQS']} (AWS_ENDPOINT_URL_SQS)")
        return None
    stand_in = SqsStandIn().start()
    os.environ["AWS_ENDPOINT_URL_SQS"] = stand_in.endpoint
    log.info(f"sqs: moto in a process of its own at {stand_in.endpoint} (AWS_ENDPOINT_URL_SQS)")
    return stand_in


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        idle_timeout_seconds=args.idle_timeout_seconds,
        max_connection_seconds=args.max_connection_seconds,
        max_message_bytes=args.max_message_bytes,
        integration_timeout_seconds=args.integration_timeout_seconds,
        handler_timeout_seconds=args.handler_timeout_seconds,
        simulated_post_latency_seconds=args.post_latency_ms / 1000,
        max_outbound_bytes=args.max_outbound_bytes,
    )


def log_functions(runtime: Runtime, log: Log) -> None:
    for route_key, function in sorted(runtime.functions.items()):
        log.info(
            f"{route_key:<12} -> {function.handler_string} ({function.function_name}, "
            f"timeout {function.timeout_seconds:g} s, {function.memory_mb} MB)"
        )


def announce_and_start_pollers(
    args: argparse.Namespace, project: ProjectConfig, services: Services, site: Site, log: Log
) -> None:
    """Once the gateway listens: where everything is served, then the SQS pollers start."""
    host = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    log.info(f"serving {project.app_name} at ws://{host}:{site.port}/{site.stage}")
    log.info(f"Management API at {site.endpoint}/@connections/{{connection_id}}")
    if REST_ROUTE_KEY in services.runtime.functions:
        log.info(f"REST routes at http://{host}:{site.port}/ (as chalice local serves them)")
    if args.page is not None:
        log.info(f"page at http://{host}:{site.port}/ ({args.page})")
    log.info(f"up to {args.concurrency} handlers at once in one runtime process (--concurrency)")
    for mapping in services.mappings:
        mapping.start()


async def serve_until_signalled(
    gateway: Gateway, sockets: list[socket.socket], *, on_ready: Callable[[], None], log: Log
) -> None:
    """Serve until SIGINT or SIGTERM, then close every connection; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = []

    def begin_stopping(signum: int) -> None:
        log.info(f"{signal.Signals(signum).name}: closing {len(gateway.connections)} connection(s)")
        stop.set()

    def on_signal(signum: int, _frame) -> None:
        """The first signal asks the loop to stop; a second one ends the process at once, wherever
        the shutdown is: the loop may be closed by then (the pollers and the runtime stop after
        it), so the second is handled here, not on the loop."""
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            # Not through the Log: its lock may be held by the very line this signal interrupted.
            os.write(sys.stdout.fileno(), b"localgw: second signal: exiting now\n")
            os._exit(130)
        loop.call_soon_threadsafe(begin_stopping, signum)

    # Not loop.add_signal_handler: it learns of a signal through the loop's self-pipe, which
    # thousands of handler completions (call_soon_threadsafe) can fill, and a signal whose
    # wakeup byte finds the pipe full is lost. A plain handler runs in the main thread however
    # busy the pipe is, and call_soon_threadsafe queues its callback even when it cannot write.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    await serve(gateway, sockets, on_ready=on_ready, stop=stop)


def _unservable(reason: object) -> int:
    """Say why the project cannot be served; returns the exit status that says so."""
    print(f"localgw: {reason}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse the options, read the project, listen, start what the app needs, serve until a signal,
    stop it all."""
    args = parse_args(argv)
    log = Log(verbose=args.verbose, app_logs=args.app_logs)
    try:
        project = read_config(args.project_dir.resolve(), args.chalice_stage)
    except ProjectError as exc:
        return _unservable(exc)
    stage = args.stage or project.scoped(FUNCTION_NAMES[ROUTE_DEFAULT]).api_gateway_stage or "api"
    try:
        site = Site(bind(args.host, args.port), stage)
    except OSError as exc:
        return _unservable(f"cannot listen on {args.host}:{args.port}: {exc}")

    services = Services()
    try:
        services.start(project, args, endpoint=site.endpoint, log=log)
    except (ProjectError, BotoCoreError, ClientError) as exc:
        status = _unservable(exc)
        services.stop()
        return status
    runtime = services.runtime
    gateway = Gateway(
        runtime.functions,
        invoke=runtime.invoke,
        runtime_exited=lambda: runtime.exited,
        stage=stage,
        api_id=args.api_id,
        limits=limits_from(args),
        log=log,
        page=args.page,
    )
    log_functions(runtime, log)
    try:
        asyncio.run(
            serve_until_signalled(
                gateway,
                site.sockets,
                on_ready=lambda: announce_and_start_pollers(args, project, services, site, log),
                log=log,
            )
        )
    finally:
        services.stop()
    log.info("stopped")
    return 0
