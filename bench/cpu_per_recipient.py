"""CPU per recipient of a publish: our handler against a plain boto3 post_to_connection loop, over
HTTP and over HTTPS (as every post on AWS is), each against boto3 over the same scheme.

Process CPU time (all threads) around the whole publish handler, divided by deliveries. The
Management API server runs in another process, so only the sender's CPU is counted. Over HTTPS it has
a certificate from a throwaway CA, trusted through AWS_CA_BUNDLE (bench.common.https_files).
Connections are kept alive across publishes: the handshakes of a cold start are bench.first_publish's.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import REPO, Figure, at_most, https_files
from testing.aws import use_dummy_aws
from testing.tls import TlsFiles

RECIPIENTS = 1000
REPEATS = 7


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(publishes: dict, deliveries: int) -> dict[str, float]:
    """Median CPU milliseconds per delivery of each way to publish, over REPEATS rounds.

    The ways take turns within each round (after one warm-up round), so a busier or quieter moment
    of the machine falls on all of them alike.
    """
    samples: dict[str, list[float]] = {name: [] for name in publishes}
    for round_number in range(REPEATS + 1):
        for name, publish in publishes.items():
            started = process_cpu_seconds()
            publish()
            if round_number:
                samples[name].append((process_cpu_seconds() - started) * 1000 / deliveries)
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def publishing_app(
    tmp_dir, recipients: int, *, tls: TlsFiles | None = None, **env: str
) -> Iterator[tuple[object, list, str]]:
    """The app wired to a real redis-server and the Management API stand-in (in another process, so
    its CPU is not counted), ``recipients`` + 1 connections registered: (app, connections, endpoint).
    With ``tls``, the stand-in serves HTTPS with its certificate and AWS_CA_BUNDLE trusts it.
    ``env`` adds settings; the environment is restored afterwards."""
    use_dummy_aws()
    from testing.apigw import Connection
    from testing.lambda_context import LambdaContext
    from testing.redis_server import RedisServer

    server = subprocess.Popen(
        [sys.executable, "-m", "bench.management_server", *([str(tls.server_cert.parent)] if tls else [])],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    redis_server = RedisServer(tmp_dir / f"redis-{uuid.uuid4().hex[:6]}")
    environment = dict(os.environ)
    try:
        endpoint = server.stdout.readline().strip()
        redis_server.start()
        os.environ.update(
            REDIS_URL=redis_server.url,
            REDIS_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:6]}",
            AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI=endpoint,
            AUTH_MODE="none",
            **({"AWS_CA_BUNDLE": str(tls.ca_cert)} if tls else {}),
            **env,
        )
        import app

        app.configured.cache_clear()
        connections = [Connection() for _ in range(recipients + 1)]
        for connection in connections:
            app.connect(connection.connect_event(), LambdaContext())
        yield app, connections, endpoint
        app.configured.cache_clear()
    finally:
        os.environ.clear()
        os.environ.update(environment)
        server.kill()
        redis_server.stop()


def per_recipient_ms(tmp_dir, tls: TlsFiles | None) -> dict[str, float]:
    """Median CPU milliseconds per recipient of each way to publish, over one scheme."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import quote

    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.httpsession import URLLib3Session

    from chalicelib.fanout import Fanout
    from testing.lambda_context import LambdaContext

    # WARNING: the app's INFO lines would mix with the figures printed.
    with publishing_app(tmp_dir, RECIPIENTS, tls=tls, LOG_LEVEL="WARNING") as (app, connections, endpoint):
        sender, recipients = connections[0], [c.connection_id for c in connections[1:]]
        event = sender.message_event('{"type": 99, "data": "data to publish"}')

        def ours():
            assert app.message(event, LambdaContext()) == {"statusCode": 200}

        payload = b'{"type":99,"data":"data to publish","received":1795654176}'
        # boto3 trusts the stand-in's CA through AWS_CA_BUNDLE, as ours does.
        boto3_client = boto3.client(
            "apigatewaymanagementapi", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1})
        )

        def boto3_loop():
            for connection_id in recipients:
                boto3_client.post_to_connection(ConnectionId=connection_id, Data=payload)

        pooled_client = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            config=Config(retries={"total_max_attempts": 1}, max_pool_connections=32),
        )
        fanout = Fanout(posts_in_flight=32)

        def boto3_in_our_fanout():
            def post_many(connection_ids, data, deadline):
                for connection_id in connection_ids:  # boto3 has no batch: one post after another per thread
                    pooled_client.post_to_connection(ConnectionId=connection_id, Data=data)
                return [None] * len(connection_ids)

            report = fanout.deliver(post_many, payload, recipients, deadline=time.monotonic() + 600)
            assert report.delivered == len(recipients)

        # The library transport we measured ours against: botocore's own urllib3 session, signed by the
        # same SigV4Auth, with 64 posts in flight (one thread each: urllib3 waits for each answer).
        http_session = URLLib3Session(verify=str(tls.ca_cert) if tls else True, max_pool_connections=64)
        credentials = boto3.session.Session().get_credentials()
        threads = ThreadPoolExecutor(max_workers=64)

        def urllib3_post(connection_id):
            request = AWSRequest(
                method="POST", url=f"{endpoint}/@connections/{quote(connection_id, safe='')}", data=payload
            )
            SigV4Auth(credentials.get_frozen_credentials(), "execute-api", "us-east-1").add_auth(request)
            assert http_session.send(request.prepare()).status_code == 200

        def urllib3_threads():
            list(threads.map(urllib3_post, recipients))

        try:
            return measure(
                {"ours": ours, "loop": boto3_loop, "pooled": boto3_in_our_fanout, "urllib3": urllib3_threads},
                RECIPIENTS,
            )
        finally:
            threads.shutdown()
            http_session.close()


def signing_us() -> dict[str, float]:
    """Median CPU microseconds to sign one post, ours (``sigv4.PostSigner``) and botocore's
    ``SigV4Auth`` on an ``AWSRequest`` (what we signed with before), taking turns over REPEATS rounds."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    from chalicelib.management_api.sigv4 import PostSigner, payload_hash

    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", "a-session-token")
    host, path = "abc123.execute-api.eu-west-1.amazonaws.com", "/api/@connections/L0SM9cOFvHcCIhw%3D"
    payload = b'{"type":99,"data":"data to publish","received":1795654176}'
    signer = PostSigner(host=host, region="eu-west-1", service="execute-api")
    body_hash = payload_hash(payload)

    def ours():
        signer.headers(credentials, path, body_hash)

    def botocores():
        request = AWSRequest(method="POST", url=f"https://{host}{path}", data=payload, headers={"Host": host})
        SigV4Auth(credentials, "execute-api", "eu-west-1").add_auth(request)

    signs = 2000
    samples: dict[str, list[float]] = {"ours": [], "botocore": []}
    for round_number in range(REPEATS + 1):
        for name, sign in (("ours", ours), ("botocore", botocores)):
            started = process_cpu_seconds()
            for _ in range(signs):
                sign()
            if round_number:
                samples[name].append((process_cpu_seconds() - started) * 1e6 / signs)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(tmp_dir) -> list[Figure]:
    signing = signing_us()
    medians = {
        "http": per_recipient_ms(tmp_dir, None),
        "https": per_recipient_ms(tmp_dir, https_files(tmp_dir / "tls")),
    }
    figures = []
    for scheme, ms in medians.items():
        loop = f"boto3 post loop, {scheme}"
        figures += [
            Figure("cpu per recipient", f"{RECIPIENTS} recipients, whole handler, {scheme}", "ms", ms["ours"],
                   ms["loop"], loop, at_most(0.333)),
            Figure("cpu per recipient", f"urllib3 transport, 64 in flight, {scheme}", "ms", ms["urllib3"],
                   ms["loop"], loop, measured_name="botocore's URLLib3Session"),
            Figure("cpu per recipient", f"boto3 client in our 32-worker fan-out, {scheme}", "ms", ms["pooled"],
                   ms["loop"], loop, measured_name="boto3's client"),
        ]  # fmt: skip
    # What TLS adds to each, once its connections are open: the encryption of every post and answer.
    http, https = medians["http"], medians["https"]
    return [
        # Our own signer's reason to be (README, Performance): else botocore's SigV4Auth would do.
        Figure("cpu per recipient", "SigV4 of one post", "us", signing["ours"], signing["botocore"],
               "botocore's SigV4Auth on an AWSRequest", at_most(0.5, "else botocore's")),
        *figures,
        Figure("cpu per recipient", "whole handler, https against http", "ms", https["ours"], http["ours"],
               "ours over http"),
        Figure("cpu per recipient", "boto3 post loop, https against http", "ms", https["loop"], http["loop"],
               "boto3 over http", measured_name="boto3"),
    ]  # fmt: skip
