"""The first publish after a cold start against a warm one, both to the same recipients over HTTPS.

A container's first publish builds the service (settings, the Redis client, the Management API
transport) and dials every connection its posts in flight need: FANOUT_WORKERS = 64 TCP connections,
each with its TLS handshake (verifying the certificate against the whole CA bundle, as on AWS). Later
publishes reuse them. Each round drops the service (``app.configured``'s cache, so the transport and
its connections go with it), then times one publish (the first) and one more (warm); process CPU and
wall-clock time, medians over the rounds. The same over HTTP shows what of the first publish's cost is
the handshakes. The Management API stand-in answers at once from another process: on AWS each dial
also waits for its round trips (TCP, then TLS), which this does not model.
"""

from __future__ import annotations

import statistics
import time

from bench.common import Figure, https_files
from bench.cpu_per_recipient import process_cpu_seconds, publishing_app
from testing.tls import TlsFiles

RECIPIENTS = 1000
ROUNDS = 7


def cold_and_warm(tmp_dir, tls: TlsFiles | None) -> dict[str, float]:
    """Median CPU and wall milliseconds of the first publish after a cold start and of a warm one."""
    from testing.lambda_context import LambdaContext

    samples: dict[str, list[float]] = {"cold cpu": [], "cold wall": [], "warm cpu": [], "warm wall": []}
    with publishing_app(tmp_dir, RECIPIENTS, tls=tls) as (app, connections, _endpoint):
        event = connections[0].message_event('{"type": 99, "data": "data to publish"}')

        def publish(kind: str) -> None:
            cpu, wall = process_cpu_seconds(), time.perf_counter()
            assert app.message(event, LambdaContext()) == {"statusCode": 200}
            samples[f"{kind} cpu"].append((process_cpu_seconds() - cpu) * 1000)
            samples[f"{kind} wall"].append((time.perf_counter() - wall) * 1000)

        publish("warm")  # the interpreter's own first time through the code is no container's cold start
        for values in samples.values():
            values.clear()
        for _ in range(ROUNDS):
            app.configured.cache_clear()
            publish("cold")
            publish("warm")
    return {name: statistics.median(values) for name, values in samples.items()}


def run(tmp_dir) -> list[Figure]:
    medians = {
        "http": cold_and_warm(tmp_dir, None),
        "https": cold_and_warm(tmp_dir, https_files(tmp_dir / "tls")),
    }
    case = f"first publish to {RECIPIENTS} after a cold start"
    figures = [
        Figure("first publish", f"{case}, {scheme}, {what}", "ms", ms[f"cold {what}"], ms[f"warm {what}"],
               f"a warm publish, {scheme}")
        for scheme, ms in medians.items()
        for what in ("cpu", "wall")
    ]  # fmt: skip
    # What the 64 handshakes add to a cold start: the same first publish without TLS.
    return [
        *figures,
        *(
            Figure("first publish", f"{case}, https against http, {what}", "ms", medians["https"][f"cold {what}"],
                   medians["http"][f"cold {what}"], "the first publish over http")
            for what in ("cpu", "wall")
        ),
    ]  # fmt: skip
