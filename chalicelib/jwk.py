"""RS256 and ES256 public keys from an identity provider's JWKs (RFC 7517, 7518), through
cryptography's primitives alone: no X.509, no PEM, nothing imported that a JWK does not need.

An entry that cannot verify our tokens (an encryption key, another algorithm or curve, a short RSA
modulus, a point off the curve, a value that does not parse) raises ``UnusableKey`` saying why, so
that the key set skips it and keeps the rest: providers list encryption keys beside their signing keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from chalicelib.jose import MalformedToken, b64url_decode

# RFC 7518, 3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS = 2048
_P256_COORDINATE_BYTES = 32


class UnusableKey(ValueError):
    """This JWK cannot verify an RS256 or ES256 signature; the message says why (no key material)."""


class PublicKey:
    """A JWK's public key and the one algorithm it verifies."""

    def __init__(self, algorithm: str, check: Callable[[bytes, bytes], None]) -> None:
        self.algorithm = algorithm
        self._check = check

    def verifies(self, signing_input: bytes, signature: bytes) -> bool:
        try:
            self._check(signing_input, signature)
        except InvalidSignature:
            return False
        return True


def public_key(entry: Any) -> PublicKey:
    """The signature key a JWKS entry holds; ``UnusableKey`` when it holds none we accept."""
    if not isinstance(entry, dict):
        raise UnusableKey("not a JSON object")
    if entry.get("use", "sig") != "sig":
        raise UnusableKey(f"use {entry.get('use')!r}: not a signature key")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise UnusableKey(f"key_ops {key_ops!r}: not for verifying")
    kty, crv = entry.get("kty"), entry.get("crv")
    if kty == "RSA":
        algorithm, build = "RS256", _rsa
    elif kty == "EC" and crv == "P-256":
        algorithm, build = "ES256", _p256
    else:
        raise UnusableKey(
            f"kty {kty!r}" + (f" crv {crv!r}" if crv is not None else "") + ": not RS256 or ES256"
        )
    if entry.get("alg", algorithm) != algorithm:
        raise UnusableKey(
            f"alg {entry.get('alg')!r}: not a signature algorithm accepted ({algorithm} keys only)"
        )
    try:
        return PublicKey(algorithm, build(entry))
    except (MalformedToken, ValueError, TypeError, KeyError) as error:
        raise UnusableKey(f"{kty} key does not parse ({type(error).__name__})") from None


def _rsa(entry: dict) -> Callable[[bytes, bytes], None]:
    modulus = int.from_bytes(b64url_decode(entry["n"]), "big")
    exponent = int.from_bytes(b64url_decode(entry["e"]), "big")
    if modulus.bit_length() < MIN_RSA_BITS:
        raise ValueError(f"an RSA modulus of {modulus.bit_length()} bits")
    key = rsa.RSAPublicNumbers(exponent, modulus).public_key()

    def check(signing_input: bytes, signature: bytes) -> None:
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    return check


def _p256(entry: dict) -> Callable[[bytes, bytes], None]:
    x, y = b64url_decode(entry["x"]), b64url_decode(entry["y"])
    if len(x) != _P256_COORDINATE_BYTES or len(y) != _P256_COORDINATE_BYTES:
        raise ValueError("P-256 coordinates are 32 bytes")
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()

    def check(signing_input: bytes, signature: bytes) -> None:
        # JWS carries R || S, 32 bytes each (RFC 7518, 3.4); cryptography takes DER.
        if len(signature) != 2 * _P256_COORDINATE_BYTES:
            raise InvalidSignature
        r, s = signature[:_P256_COORDINATE_BYTES], signature[_P256_COORDINATE_BYTES:]
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))

    return check
