"""JWT verification with PyJWT: keys from a JWKS (RS256, ES256) or one HS256 secret.

Imported only when ``AUTH_MODE=jwt`` (PyJWT with ``cryptography`` costs tens of milliseconds at
import). The accepted algorithms come from the configuration, never from the token: with a JWKS only
RS256 and ES256, with a secret only HS256; ``alg: none`` and anything else is refused before any key
is looked at. Key sources sit behind a small seam (``fetch``/``load`` callables) so that tests serve
real keys from a real local HTTP server, and nothing here knows where a key came from.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from chalicelib.auth import AuthUnavailable, Unauthorized
from chalicelib.log import logger
from chalicelib.settings import AuthSettings

JWKS_ALGORITHMS = ("RS256", "ES256")
SECRET_ALGORITHMS = ("HS256",)
# A token naming a key we do not know refetches the JWKS at most this often (a key rotation shows
# up within it; a client sending made-up key ids cannot make us hammer the identity provider).
UNKNOWN_KID_REFETCH_SECONDS = 60.0
# After a failed fetch, connects are refused with 503 for this long before the next try.
FAILED_FETCH_RETRY_SECONDS = 5.0
_FETCH_TIMEOUT_SECONDS = 3.0


class KeySource:
    """Gives the key for a token's header; ``algorithms`` are the only ones it accepts."""

    algorithms: tuple[str, ...] = ()

    def key_for(self, header: Mapping[str, Any]) -> Any:
        raise NotImplementedError


class SecretKey(KeySource):
    """One HS256 secret, loaded on first use (an SSM read at cold start must not crash the handler)."""

    algorithms = SECRET_ALGORITHMS

    def __init__(self, load: Callable[[], str]) -> None:
        self._load = load
        self._secret: str | None = None
        self._lock = threading.Lock()

    def key_for(self, header: Mapping[str, Any]) -> str:
        with self._lock:
            if self._secret is None:
                try:
                    self._secret = self._load()
                except Exception as error:
                    logger.error("token secret unavailable", extra={"reason": _describe(error)})
                    raise AuthUnavailable(
                        "the service cannot check tokens right now; retry shortly"
                    ) from None
            return self._secret


class JwksKeys(KeySource):
    """An identity provider's public keys, fetched once per container and refetched for unknown kids."""

    algorithms = JWKS_ALGORITHMS

    def __init__(self, fetch: Callable[[], bytes], *, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._lock = threading.Lock()

    def key_for(self, header: Mapping[str, Any]) -> Any:
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("the token names no key (kid)")
        with self._lock:
            if self._keys is None or (
                kid not in self._keys and self._clock() - self._fetched_at >= UNKNOWN_KID_REFETCH_SECONDS
            ):
                self._refresh()
            key = self._keys.get(kid) if self._keys is not None else None
        if key is None:
            raise Unauthorized("the token is signed with a key this service does not know")
        if key.algorithm_name != header.get("alg"):
            raise Unauthorized(f"the token's algorithm does not match its key ({key.algorithm_name})")
        return key.key

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._failed_at < FAILED_FETCH_RETRY_SECONDS and self._keys is None:
            raise AuthUnavailable("the service cannot fetch its signing keys; retry shortly")
        try:
            document = json.loads(self._fetch())
            keys = {}
            for entry in document["keys"]:
                if entry.get("use", "sig") != "sig" or "kid" not in entry:
                    continue
                key = jwt.PyJWK(entry)
                if key.algorithm_name in JWKS_ALGORITHMS:
                    keys[entry["kid"]] = key
        except Exception as error:
            self._failed_at = now
            logger.error("JWKS fetch failed", extra={"reason": _describe(error)})
            if self._keys is None:
                raise AuthUnavailable("the service cannot fetch its signing keys; retry shortly") from None
            return
        self._keys = keys
        self._fetched_at = now


class JwtVerifier:
    """Checks signature, algorithm, ``exp``/``nbf``/``iat`` (with leeway), ``iss`` and ``aud``."""

    def __init__(self, keys: KeySource, *, issuer: str, audience: str, leeway_seconds: float) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds

    def verify(self, token: str) -> Mapping[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._keys.algorithms:
            raise Unauthorized(
                f"the token's algorithm {algorithm!r} is not accepted (accepted: {', '.join(self._keys.algorithms)})"
            )
        key = self._keys.key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub"], "verify_aud": False},
            )
        except jwt.PyJWTError as error:
            raise Unauthorized(f"the token is not valid: {error}") from None
        if not self._audience_matches(claims):
            raise Unauthorized("the token is not meant for this service (aud)")
        return claims

    def _audience_matches(self, claims: Mapping[str, Any]) -> bool:
        """``aud`` (a string or a list), or, in Cognito access tokens, which have none, ``client_id``."""
        audience = claims.get("aud")
        if audience is None:
            return claims.get("client_id") == self._audience
        return self._audience in (audience if isinstance(audience, list) else [audience])


def verifier_from_settings(auth: AuthSettings, session: Any) -> JwtVerifier:
    """The verifier a stage's settings describe; nothing is fetched until the first token arrives."""
    if auth.jwks_url:
        keys: KeySource = JwksKeys(lambda: _http_get(auth.jwks_url))
    elif auth.jwt_secret_parameter:
        keys = SecretKey(lambda: _ssm_secret(session, auth.jwt_secret_parameter))
    else:
        secret = auth.jwt_secret
        keys = SecretKey(lambda: secret)
    return JwtVerifier(keys, issuer=auth.issuer, audience=auth.audience, leeway_seconds=auth.leeway_seconds)


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_SECONDS) as response:
        return response.read()


def _ssm_secret(session: Any, name: str) -> str:
    """The HS256 secret from an SSM SecureString: the only read the functions' role is granted."""
    client = session.client("ssm")
    return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
