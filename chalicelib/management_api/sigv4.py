"""SigV4 for a post: botocore's ``SigV4Auth`` signature, computed without building a request object.

botocore signs any request: for each post it builds an ``AWSRequest``, parses its URL twice and files
its headers in ``email.message`` maps: 46 to 48 µs of CPU, a quarter of a recipient's in a fan-out
(``make bench cpu``; README, Performance). A post is always one shape: ``POST``, a path, no query,
and the headers ``host``, ``x-amz-date`` and, with temporary credentials, ``x-amz-security-token``.
So its canonical request is one format string, the payload's hash is computed once per publish, and
the signing key (four HMACs) once per day, secret and region. botocore still supplies the clock, the timestamp format
and the path normalization, and the tests prove the headers are exactly ``SigV4Auth``'s for any
connection id, payload, credentials, region and moment (tests/unit/test_sigv4.py).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from botocore import auth as botocore_auth
from botocore.credentials import ReadOnlyCredentials
from botocore.utils import normalize_url_path

_ALGORITHM = "AWS4-HMAC-SHA256"


def payload_hash(payload: bytes) -> str:
    """The hex SHA-256 a signature commits to; the same for every post of one publish."""
    return hashlib.sha256(payload).hexdigest()


class PostSigner:
    """Signs posts to one host for one region and service; thread-safe (its one cache is replaced whole)."""

    def __init__(self, *, host: str, region: str, service: str) -> None:
        self._host = _trimmed(host)
        self._region = region
        self._service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)

    def headers(self, credentials: ReadOnlyCredentials, path: str, body_hash: str) -> dict[str, str]:
        """The headers ``SigV4Auth.add_auth`` adds to a POST of a body hashing to ``body_hash`` to ``path``
        (already percent-encoded, as it goes on the request line), in the order it adds them."""
        timestamp = botocore_auth.get_current_datetime().strftime(botocore_auth.SIGV4_TIMESTAMP)
        day = timestamp[:8]
        added = {"X-Amz-Date": timestamp}
        canonical_headers = f"host:{self._host}\nx-amz-date:{timestamp}\n"
        signed_headers = "host;x-amz-date"
        if credentials.token:
            added["X-Amz-Security-Token"] = credentials.token
            canonical_headers += f"x-amz-security-token:{_trimmed(credentials.token)}\n"
            signed_headers += ";x-amz-security-token"
        canonical_path = quote(normalize_url_path(path), safe="/~")
        canonical_request = f"POST\n{canonical_path}\n\n{canonical_headers}\n{signed_headers}\n{body_hash}"
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        string_to_sign = (
            f"{_ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()
        added["Authorization"] = (
            f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return added

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = f"AWS4{secret}".encode()
        for part in (day, self._region, self._service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = (secret, day, key)
        return key


def _trimmed(value: str) -> str:
    """A header's value as SigV4 canonicalizes it: outer whitespace gone, inner runs made one space."""
    return " ".join(value.split())
