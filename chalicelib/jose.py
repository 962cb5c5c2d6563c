"""The JOSE this service reads: compact JWS tokens, and HS256 keys that verify them.

On the standard library alone (base64, json, hmac). RS256 and ES256 keys come from ``chalicelib.jwk``,
imported only by a stage with a JWKS. PyJWT, which this replaces, imports cryptography's X.509 and
serialization modules whatever the algorithm: time of ``$connect``'s cold start that an HS256 stage
does not need (bench/README.md, "Figures once written in the code", and README, Performance).
Nothing here decides what a token may be (``chalicelib.tokens`` does): it parses strictly and checks
signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any, NamedTuple, Protocol

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class MalformedToken(ValueError):
    """Not a compact JWS: three base64url parts, a JSON object header and payload."""


class VerifyingKey(Protocol):
    algorithm: str

    def verifies(self, signing_input: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's over ``signing_input``."""


class Jws(NamedTuple):
    """A token's parts, parsed but not verified: nothing in ``claims`` may be trusted yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse(token: str) -> Jws:
    """Split a compact JWS (RFC 7515, 7.1); raise ``MalformedToken`` for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("a JWT has three parts separated by dots")
    header, payload, signature = parts
    return Jws(
        header=_json_object(b64url_decode(header)),
        claims=_json_object(b64url_decode(payload)),
        signing_input=f"{header}.{payload}".encode("ascii"),
        signature=b64url_decode(signature),
    )


def b64url_decode(text: Any) -> bytes:
    """Unpadded base64url (RFC 7515, 2), strictly: another alphabet, padding or length is malformed."""
    if not isinstance(text, str) or not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedToken("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedToken("a JWT's header and payload are JSON objects") from None
    if not isinstance(document, dict):
        raise MalformedToken("a JWT's header and payload are JSON objects")
    return document


def _no_constant(name: str) -> None:
    """NaN and Infinity are not JSON (RFC 8259): a claim that holds one is malformed, not a number."""
    raise ValueError(name)


class HmacKey:
    """An HS256 secret (RFC 7518, 3.2), compared in constant time."""

    algorithm = "HS256"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "HmacKey(<secret>)"

    def verifies(self, signing_input: bytes, signature: bytes) -> bool:
        expected = hmac.new(self._secret, signing_input, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
