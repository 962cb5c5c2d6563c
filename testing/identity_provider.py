"""A real local identity provider for tests: RSA and EC signing keys, a JWKS served over HTTP, tokens.

The JWKS is served by a real HTTP server on 127.0.0.1 (what Cognito, Auth0 or Okta serve at their
``jwks.json``), so the app's fetching, caching and refetching run exactly as in Lambda. The server
counts its requests and can be taken down and brought back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from testing.json_http import JsonHttpServer

ISSUER = "https://idp.test.example"
AUDIENCE = "ws-broadcast-tests"
SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


class SigningKey:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.kid = uuid.uuid4().hex
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict:
        algorithm = jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, **claims) -> str:
        return jwt.encode(
            claims_with(**claims), self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )


def claims_with(**overrides) -> dict:
    """Valid claims for the tests' issuer and audience, one hour long; ``None`` removes a claim."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 3600}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def unsigned_token(header: dict, claims: dict) -> str:
    """A token with no signature at all, whatever its header claims (``alg: none``)."""

    def part(document: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def hmac_token(secret: bytes, header: dict) -> str:
    """An HS256 token keyed with ``secret``, e.g. an RSA public key (PyJWT itself refuses PEM secrets)."""
    signing_input = unsigned_token(header, claims_with())[:-1]
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def secret_token(secret: str = SECRET, **claims) -> str:
    return jwt.encode(claims_with(**claims), secret, algorithm="HS256")


class IdentityProvider:
    """Serves ``/jwks.json`` with the public halves of its keys; ``available = False`` answers 503."""

    def __init__(self) -> None:
        self.keys = [SigningKey("RS256"), SigningKey("ES256")]
        # Served after the keys' JWKs as they are: entries a real provider may list beside its keys.
        self.extra_entries: list[dict] = []
        self.requests = 0
        self.available = True
        self._server = JsonHttpServer(self._handle)
        self.jwks_url = f"{self._server.url}/jwks.json"

    def _handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        self.requests += 1
        if not self.available:
            return 503, {"message": "unavailable"}
        if path != "/jwks.json":
            return 404, {"message": "not found"}
        return 200, {"keys": [key.jwk() for key in self.keys] + self.extra_entries}

    @property
    def rsa(self) -> SigningKey:
        return self.keys[0]

    @property
    def ec(self) -> SigningKey:
        return self.keys[1]

    def rotate_in(self, key: SigningKey) -> None:
        self.keys.append(key)

    def rotate_out(self, key: SigningKey) -> None:
        self.keys.remove(key)

    def __enter__(self) -> IdentityProvider:
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)
