"""RS256 verification on the standard library, against what cryptography signs and what an attacker
forges: every valid signature verifies, and nothing else does (RFC 8017's encode-and-compare)."""

from __future__ import annotations

import base64
import functools
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.jwk import UnusableKey, public_key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@functools.cache
def private_key(bits: int, exponent: int, number: int = 0) -> rsa.RSAPrivateKey:
    """A key of that size and exponent (``number`` tells several apart)."""
    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


def jwk_of(key: rsa.RSAPrivateKey) -> dict:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": "k", "n": b64url_int(numbers.n), "e": b64url_int(numbers.e)}


def sign(key: rsa.RSAPrivateKey, message: bytes, digest=None, scheme=None) -> bytes:
    return key.sign(message, scheme or padding.PKCS1v15(), digest or hashes.SHA256())


KEYS = st.sampled_from([(2048, 65537), (3072, 65537), (4096, 65537), (2048, 3)])


@settings(max_examples=40, deadline=None)
@given(KEYS, st.binary(max_size=300), st.data())
def test_what_cryptography_signs_verifies_and_any_one_bit_changed_does_not(size, message, data):
    key = private_key(*size)
    verifier = public_key(jwk_of(key))
    signature = sign(key, message)
    assert verifier.verifies(message, signature)
    bit = data.draw(st.integers(min_value=0, max_value=8 * len(signature) - 1))
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verifier.verifies(message, bytes(flipped))
    assert not verifier.verifies(message + b"x", signature)


def test_a_signature_with_another_digest_or_padding_is_refused():
    key = private_key(2048, 65537)
    verifier = public_key(jwk_of(key))
    message = b"header.claims"
    assert not verifier.verifies(message, sign(key, message, hashes.SHA512()))
    assert not verifier.verifies(message, sign(key, message, hashes.SHA1()))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    assert not verifier.verifies(message, sign(key, message, scheme=pss))


def test_a_signature_of_another_length_is_refused():
    key = private_key(2048, 65537)
    verifier = public_key(jwk_of(key))
    message = b"header.claims"
    signature = sign(key, message)
    assert not verifier.verifies(message, b"\x00" + signature)
    assert not verifier.verifies(message, signature[1:])
    assert not verifier.verifies(message, b"")


def test_a_valid_signature_plus_the_modulus_is_refused():
    """Equal to a valid signature modulo n, but not below n: a second form of it (RFC 8017, 5.2.2)."""
    # a modulus well below 2^2048 leaves room above it for some signature plus the modulus
    key = next(k for k in (private_key(2048, 65537, n) for n in range(40)) if k.key_size == 2048
               and k.public_key().public_numbers().n < 3 << 2046)  # fmt: skip
    verifier = public_key(jwk_of(key))
    modulus = key.public_key().public_numbers().n
    message, signature = next(
        (m, sig) for m in (b"claims-%d" % n for n in range(200))
        if int.from_bytes(sig := sign(key, m), "big") + modulus < 1 << 2048
    )  # fmt: skip
    assert verifier.verifies(message, signature)
    assert not verifier.verifies(message, (int.from_bytes(signature, "big") + modulus).to_bytes(256, "big"))


def integer_cube_root(value: int) -> int:
    low, high = 0, 1 << (value.bit_length() // 3 + 2)
    while low < high:
        middle = (low + high + 1) // 2
        if middle**3 <= value:
            low = middle
        else:
            high = middle - 1
    return low


def test_bleichenbachers_forgery_against_a_lenient_parser_is_refused():
    """With e = 3, a verifier that parses the padding and ignores what follows the digest accepts a
    cube root an attacker computes without the private key (Bleichenbacher, CRYPTO 2006)."""
    key = private_key(2048, 3)
    verifier = public_key(jwk_of(key))
    message = b"header.forged-claims"
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message).digest()
    prefix = b"\x00\x01\xff\x00" + digest_info
    garbage_bits = 8 * (256 - len(prefix))
    target = int.from_bytes(prefix, "big") << garbage_bits
    root = integer_cube_root(target + (1 << garbage_bits) - 1)
    forged = root.to_bytes(256, "big")
    assert pow(root, 3).to_bytes(256, "big").startswith(prefix), "the forgery a lenient parser would accept"
    assert not verifier.verifies(message, forged)


@pytest.mark.parametrize("exponent", [1, 2, 0, 65536])
def test_a_key_with_an_exponent_that_cannot_be_rsa_is_unusable(exponent):
    entry = {**jwk_of(private_key(2048, 65537)), "e": b64url_int(exponent) if exponent else ""}
    with pytest.raises(UnusableKey):
        public_key(entry)
