"""CPU of one $connect with RS256 token verification, against one without authentication.

Both ways run the app's real connect handler on API Gateway-shaped events against a real
redis-server; the JWKS comes from a real local HTTP server and is fetched once (warm container).
Process CPU per connect, median of rounds in which the two ways take turns.
"""

from __future__ import annotations

import os
import statistics

from bench.common import Figure
from bench.cpu_per_recipient import process_cpu_seconds
from testing.aws import use_dummy_aws

CONNECTS = 200
ROUNDS = 5


def run(tmp_dir) -> list[Figure]:
    use_dummy_aws()
    from testing.apigw import Connection
    from testing.identity_provider import AUDIENCE, ISSUER, IdentityProvider
    from testing.lambda_context import LambdaContext
    from testing.redis_server import RedisServer

    server = RedisServer(tmp_dir / "connect-cpu")
    server.start()
    environment = dict(os.environ)  # the benchmarks after this one must not inherit its stage
    try:
        with IdentityProvider() as idp:
            import app
            from chalicelib.log import logger

            # One "connected" line per connect would be much of what both ways spend, and fill the output.
            logger.setLevel("WARNING")

            token = idp.rsa.token(sub="bench-user")
            modes = {
                "none": ({"AUTH_MODE": "none"}, {}),
                "jwt": (
                    {
                        "AUTH_MODE": "jwt",
                        "AUTH_JWKS_URL": idp.jwks_url,
                        "AUTH_ISSUER": ISSUER,
                        "AUTH_AUDIENCE": AUDIENCE,
                    },
                    {"Authorization": f"Bearer {token}"},
                ),
            }
            os.environ.update(REDIS_URL=server.url, REDIS_KEY_PREFIX="bench-connect")
            samples: dict[str, list[float]] = {mode: [] for mode in modes}
            for round_number in range(ROUNDS + 1):
                for mode, (env, headers) in modes.items():
                    for name in ("AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE"):
                        os.environ.pop(name, None)
                    os.environ.update(env)
                    app.configured.cache_clear()
                    events = [
                        Connection().connect_event(headers=list(headers.items())) for _ in range(CONNECTS + 1)
                    ]
                    assert app.connect(events[0], LambdaContext())["statusCode"] == 200  # cold: fetches keys
                    started = process_cpu_seconds()
                    for event in events[1:]:
                        app.connect(event, LambdaContext())
                    if round_number:
                        samples[mode].append((process_cpu_seconds() - started) * 1000 / CONNECTS)
            app.configured.cache_clear()
    finally:
        os.environ.clear()
        os.environ.update(environment)
        server.stop()
    return [
        Figure(
            "connect CPU",
            "RS256 token (JWKS cached)",
            "ms",
            statistics.median(samples["jwt"]),
            statistics.median(samples["none"]),
            "AUTH_MODE=none",
        )
    ]
