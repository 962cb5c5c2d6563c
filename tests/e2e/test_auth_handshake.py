"""Who may connect, through a real handshake: our app behind the local gateway with AUTH_MODE=jwt,
keys from a real JWKS server, real WebSocket clients. Every refusal is the HTTP status the client sees.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from testing.identity_provider import (
    AUDIENCE,
    ISSUER,
    IdentityProvider,
    SigningKey,
    claims_with,
    hmac_token,
    unsigned_token,
)
from tests.e2e.localgw_harness import REPO, GatewayProcess, open_wscats, run

ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def idp():
    with IdentityProvider() as provider:
        yield provider


def jwt_env(jwks_url: str) -> dict:
    return {
        "AUTH_MODE": "jwt",
        "AUTH_JWKS_URL": jwks_url,
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "ALLOWED_ORIGINS": ALLOWED_ORIGIN,
    }


@pytest.fixture(scope="module")
def gateway(idp, tmp_path_factory):
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path_factory.mktemp("auth"), env=jwt_env(idp.jwks_url))
    yield gw
    gw.stop()


async def handshake(url: str, **options) -> int:
    """The HTTP status of the handshake: 101 when the connection opened."""
    try:
        async with websockets.connect(url, open_timeout=10, **options):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def status_with_token(gateway, token: str) -> int:
    return run(handshake(gateway.url, additional_headers={"Authorization": f"Bearer {token}"}))


def test_a_valid_token_opens_the_connection_from_each_of_its_three_places(gateway, idp):
    token = idp.rsa.token(sub="alice")
    assert run(handshake(gateway.url, subprotocols=["wsbroadcast", f"bearer.{token}"])) == 101
    assert run(handshake(gateway.url, additional_headers={"Authorization": f"Bearer {token}"})) == 101
    assert run(handshake(f"{gateway.url}?token={token}")) == 101
    assert status_with_token(gateway, idp.ec.token()) == 101


@pytest.mark.parametrize(
    ("make_token", "why"),
    [
        (lambda idp: SigningKey("RS256").token(), "signed by another key"),
        (lambda idp: idp.rsa.token(exp=1), "expired"),
        (lambda idp: idp.rsa.token(nbf=claims_with()["iat"] + 3600), "not yet valid"),
        (lambda idp: idp.rsa.token(iss="https://someone-else.example"), "wrong issuer"),
        (lambda idp: idp.rsa.token(aud="another-service"), "wrong audience"),
        (lambda idp: unsigned_token({"alg": "none", "kid": idp.rsa.kid}, claims_with()), "alg none"),
        (
            lambda idp: hmac_token(idp.rsa.public_pem(), {"alg": "HS256", "kid": idp.rsa.kid}),
            "HS256 with the RSA key",
        ),
        (lambda idp: "not-a-token", "garbage"),
    ],
)
def test_a_bad_token_is_refused_with_401_at_the_handshake(gateway, idp, make_token, why):
    assert status_with_token(gateway, make_token(idp)) == 401, why


def test_no_token_is_refused_with_401_and_the_gateway_says_why(gateway):
    mark = gateway.mark()
    assert run(handshake(gateway.url)) == 401
    gateway.wait_for(r"\$connect.*401", after=mark)


def test_an_unknown_kid_is_refused_without_hammering_the_identity_provider(gateway, idp):
    stranger = SigningKey("RS256")
    before = idp.requests
    for _ in range(5):
        assert status_with_token(gateway, stranger.token()) == 401
    assert idp.requests - before <= 1, "at most one refetch a minute, whatever the number of unknown kids"


def test_the_origin_allow_list(gateway, idp):
    token = idp.rsa.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert run(handshake(gateway.url, additional_headers=headers, origin=ALLOWED_ORIGIN)) == 101
    assert run(handshake(gateway.url, additional_headers=headers, origin="https://evil.example")) == 403


def test_wscat_connects_with_a_header_token_and_publishes(gateway, idp, wscat_available):
    token = idp.rsa.token()
    # Both open: the handshake is done, the gateway takes posts to both, and wscat reads what to send
    sender, receiver = open_wscats(gateway, 2, "-H", f"Authorization: Bearer {token}")
    try:
        sender.send('{"type": 99, "data": "authenticated"}')
        assert json.loads(receiver.received(0))["data"] == "authenticated"
    finally:
        sender.close()
        receiver.close()


def test_an_unreachable_jwks_refuses_with_503(tmp_path):
    down = jwt_env("http://127.0.0.1:9/jwks.json")
    gw = GatewayProcess(project_dir=None, tmp_path=tmp_path, env=down)
    try:
        assert status_with_token(gw, SigningKey("RS256").token()) == 503
    finally:
        gw.stop()


def test_make_token_mints_what_the_dev_jwt_stage_accepts(tmp_path):
    # GIVEN `make run RUN_STAGE=dev-jwt` (this repository's config, its local HS256 secret)
    gw = GatewayProcess("--chalice-stage", "dev-jwt", project_dir=None, tmp_path=tmp_path)
    try:
        # WHEN a token comes from `make token`
        made = subprocess.run(
            ["make", "--no-print-directory", "token", "sub=alice"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip()
        # THEN it opens the connection, and the printed wscat line carries it; without it: 401
        assert f'wscat -c ws://localhost:8000/api -H "Authorization: Bearer {token}"' in made.stderr
        assert status_with_token(gw, token) == 101
        assert run(handshake(gw.url)) == 401
    finally:
        gw.stop()
