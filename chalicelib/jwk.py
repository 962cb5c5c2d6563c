"""RS256 and ES256 public keys from an identity provider's JWKs (RFC 7517, 7518): no X.509, no PEM,
nothing imported that a JWK does not need.

RS256 is verified with the standard library: the signature raised to the public exponent, compared
whole with the one encoding a valid signature of this input can have (RFC 8017, 8.2.2:
EMSA-PKCS1-v1_5 encoded and compared, never parsed, so no leniency in parsing can be forged against).
That keeps cryptography's native bindings (about 35 ms of a cold start, bench/README.md) out of
``$connect`` for the identity providers that sign with RS256 (Cognito, Auth0, Okta, Entra ID, Google).
ES256 uses cryptography's primitives, imported when a key set first holds a P-256 key.

An entry that cannot verify our tokens (an encryption key, another algorithm or curve, a short RSA
modulus, a point off the curve, a value that does not parse) raises ``UnusableKey`` saying why, so
that the key set skips it and keeps the rest: providers list encryption keys beside their signing keys.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from chalicelib.jose import MalformedToken, b64url_decode

# RFC 7518, 3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS = 2048
_P256_COORDINATE_BYTES = 32
# The DER of a SHA-256 DigestInfo's algorithm and the digest's header (RFC 8017, 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class UnusableKey(ValueError):
    """This JWK cannot verify an RS256 or ES256 signature; the message says why (no key material)."""


class PublicKey:
    """A JWK's public key and the one algorithm it verifies."""

    def __init__(self, algorithm: str, check: Callable[[bytes, bytes], bool]) -> None:
        self.algorithm = algorithm
        self._check = check

    def verifies(self, signing_input: bytes, signature: bytes) -> bool:
        return self._check(signing_input, signature)


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


def _rsa(entry: dict) -> Callable[[bytes, bytes], bool]:
    modulus = int.from_bytes(b64url_decode(entry["n"]), "big")
    exponent = int.from_bytes(b64url_decode(entry["e"]), "big")
    if modulus.bit_length() < MIN_RSA_BITS:
        raise ValueError(f"an RSA modulus of {modulus.bit_length()} bits")
    if exponent < 3 or exponent % 2 == 0 or exponent >= modulus:
        raise ValueError("an RSA public exponent out of range")
    size = (modulus.bit_length() + 7) // 8
    padding = (
        b"\x00\x01" + b"\xff" * (size - 3 - len(_SHA256_DIGEST_INFO) - 32) + b"\x00" + _SHA256_DIGEST_INFO
    )

    def check(signing_input: bytes, signature: bytes) -> bool:
        # RFC 8017, 8.2.2: the signature is as long as the modulus and below it.
        if len(signature) != size:
            return False
        representative = int.from_bytes(signature, "big")
        if representative >= modulus:
            return False
        encoded = pow(representative, exponent, modulus).to_bytes(size, "big")
        return hmac.compare_digest(encoded, padding + hashlib.sha256(signing_input).digest())

    return check


def _p256(entry: dict) -> Callable[[bytes, bytes], bool]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    x, y = b64url_decode(entry["x"]), b64url_decode(entry["y"])
    if len(x) != _P256_COORDINATE_BYTES or len(y) != _P256_COORDINATE_BYTES:
        raise ValueError("P-256 coordinates are 32 bytes")
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()

    def check(signing_input: bytes, signature: bytes) -> bool:
        # JWS carries R || S, 32 bytes each (RFC 7518, 3.4); cryptography takes DER.
        if len(signature) != 2 * _P256_COORDINATE_BYTES:
            return False
        r, s = signature[:_P256_COORDINATE_BYTES], signature[_P256_COORDINATE_BYTES:]
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        try:
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return check
