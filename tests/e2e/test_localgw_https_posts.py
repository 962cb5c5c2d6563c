"""The benchmarks' HTTPS set-up: ``--management-api-endpoint`` sends our app's posts to a TLS-terminating
proxy in front of the gateway (bench.tls_terminator), with a CA the app trusts only through
AWS_CA_BUNDLE, as every post on AWS goes over TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager

import websockets

from bench.common import https_files
from bench.tls_terminator import TlsTerminator
from tests.e2e.localgw_harness import GatewayProcess, run

MESSAGE = '{"echo": false, "type": 99, "data": "over https"}'


@contextmanager
def gateway_behind_terminator(tmp_path, *, trust_ca: bool) -> Iterator[GatewayProcess]:
    """Our app (as ``make run`` serves it) posting to a TLS terminator in front of its gateway."""
    tls = https_files(tmp_path / "tls")
    terminator = TlsTerminator(tls)
    try:
        gw = GatewayProcess(
            "--stage", "api", "--management-api-endpoint", f"https://127.0.0.1:{terminator.port}/api", "--app-logs",
            project_dir=None, tmp_path=tmp_path, env={"AWS_CA_BUNDLE": str(tls.ca_cert)} if trust_ca else {},
        )  # fmt: skip
        try:
            terminator.forward_to(gw.port)
            yield gw
        finally:
            gw.stop()
    finally:
        terminator.stop()


def test_our_apps_posts_go_over_https_through_the_terminator_and_arrive(tmp_path):
    with gateway_behind_terminator(tmp_path, trust_ca=True) as gw:

        async def scenario():
            async with websockets.connect(gw.url) as sender, websockets.connect(gw.url) as recipient:
                await sender.send(MESSAGE)
                return json.loads(await recipient.recv())

        assert run(scenario())["data"] == "over https"


def test_the_posts_are_refused_without_the_ca_bundle_so_they_went_over_tls(tmp_path):
    with gateway_behind_terminator(tmp_path, trust_ca=False) as gw:

        async def scenario():
            async with websockets.connect(gw.url) as sender, websockets.connect(gw.url):
                await sender.send(MESSAGE)
                return await asyncio.to_thread(
                    gw.wait_for, r'"delivery failed".*"reason": "([^"]+)"', timeout=20
                )

        assert run(scenario()).group(1) == "no answer SSLCertVerificationError"
