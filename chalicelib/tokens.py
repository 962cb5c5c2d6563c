"""JWT verification: keys from a JWKS (RS256, ES256) or one HS256 secret, claims, and when to fetch.

Imported only when ``AUTH_MODE=jwt``. Tokens are parsed and HS256 checked on the standard library
(``chalicelib.jose``); RS256/ES256 keys come from ``chalicelib.jwk`` (RS256 on the standard library,
ES256 on cryptography's primitives), imported only by a stage with a JWKS. The accepted algorithms come from the configuration, never from the token:
with a JWKS only RS256 and ES256, with a secret only HS256; ``alg: none`` and anything else is refused
before any key is looked at. Key sources sit behind a small seam (``fetch``/``load`` callables) so that
tests serve real keys from a real local HTTP server, and nothing here knows where a key came from.

Every fetch is timed on the wall clock (``time.time``): Lambda's monotonic clock stands still while a
container is frozen between invocations, and a key set must age through those hours too.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from chalicelib import jose
from chalicelib.auth import AuthUnavailable, Unauthorized
from chalicelib.log import logger
from chalicelib.settings import AuthSettings, SettingsError, check_secret_length

JWKS_ALGORITHMS = ("RS256", "ES256")
SECRET_ALGORITHMS = ("HS256",)
# A token naming a key we do not know refetches the JWKS at most this often after the last fetch (a
# key rotation shows up within it; a client sending made-up key ids cannot make us hammer the provider).
UNKNOWN_KID_REFETCH_SECONDS = 60.0
# The JWKS is fetched again once it is this old, so that a key the provider removed stops being
# trusted (providers rotate keys over days; Cognito, Auth0 and Okta publish the next key in advance).
KEYS_MAX_AGE_SECONDS = 600.0
# After a failed fetch (JWKS or SSM), nothing is fetched for this long, per container: connects are
# refused with 503 at once (or use the keys already held) instead of each waiting on the outage.
FAILED_FETCH_RETRY_SECONDS = 5.0
_FETCH_TIMEOUT_SECONDS = 3.0
_UNAVAILABLE = "the service cannot check tokens right now; retry shortly"


class RetryPause:
    """Whether a failed fetch was less than ``FAILED_FETCH_RETRY_SECONDS`` ago (a clock set back ends it)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failed_at = -math.inf

    def failed(self) -> None:
        self._failed_at = self._clock()

    @property
    def active(self) -> bool:
        return 0 <= self._clock() - self._failed_at < FAILED_FETCH_RETRY_SECONDS


class KeySource:
    """Gives the key for a token's header; ``algorithms`` are the only ones it accepts."""

    algorithms: tuple[str, ...] = ()

    def key_for(self, header: Mapping[str, Any]) -> jose.VerifyingKey:
        raise NotImplementedError


class SecretKey(KeySource):
    """One HS256 secret, loaded on first use (an SSM read at cold start must not crash the handler).

    A failed load is retried after the pause; a secret shorter than 32 bytes raises ``SettingsError``
    naming ``source`` (a misconfiguration, not an outage: the invocation fails, as a bad setting does),
    and is read again after the pause too, so that fixing the parameter heals a running container.
    """

    algorithms = SECRET_ALGORITHMS

    def __init__(
        self,
        load: Callable[[], str],
        *,
        source: str = "the HS256 secret",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._source = source
        self._key: jose.HmacKey | None = None
        self._pause = RetryPause(clock)
        self._failure: Exception = AuthUnavailable(_UNAVAILABLE)
        self._lock = threading.Lock()

    def key_for(self, header: Mapping[str, Any]) -> jose.HmacKey:
        with self._lock:
            if self._key is None:
                if self._pause.active:
                    raise type(self._failure)(str(self._failure))
                self._key = self._loaded()
            return self._key

    def _loaded(self) -> jose.HmacKey:
        try:
            secret = self._load()
        except Exception as error:
            self._fail(AuthUnavailable(_UNAVAILABLE), "token secret unavailable", _describe(error))
        try:
            check_secret_length(secret, self._source)
        except SettingsError as error:
            self._fail(error, "token secret unusable", str(error))
        return jose.HmacKey(secret.encode())

    def _fail(self, failure: Exception, message: str, reason: str) -> NoReturn:
        self._pause.failed()
        self._failure = failure
        logger.error(message, extra={"reason": reason})
        raise type(failure)(str(failure)) from None


class JwksKeys(KeySource):
    """An identity provider's public keys: fetched on first use, again once ``KEYS_MAX_AGE_SECONDS``
    old, and for a token naming an unknown kid at most every ``UNKNOWN_KID_REFETCH_SECONDS``; after a
    failed fetch, not again for ``FAILED_FETCH_RETRY_SECONDS`` (the keys held are used meanwhile)."""

    algorithms = JWKS_ALGORITHMS

    def __init__(self, fetch: Callable[[], bytes], *, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self.clock = clock
        self._keys: dict[str, jose.VerifyingKey] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._pause = RetryPause(clock)
        self._lock = threading.Lock()

    def key_for(self, header: Mapping[str, Any]) -> jose.VerifyingKey:
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("the token names no key (kid)")
        with self._lock:
            if self._due(kid):
                self._refresh()
            if self._keys is None:
                raise AuthUnavailable("the service cannot fetch its signing keys; retry shortly")
            key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("the token is signed with a key this service does not know")
        return key

    def _due(self, kid: str) -> bool:
        if self._pause.active:
            return False
        if self._keys is None:
            return True
        now = self.clock()
        if not 0 <= now - self._fetched_at < KEYS_MAX_AGE_SECONDS:
            return True
        return kid not in self._keys and not 0 <= now - self._attempted_at < UNKNOWN_KID_REFETCH_SECONDS

    def _refresh(self) -> None:
        self._attempted_at = self.clock()
        try:
            keys = usable_keys(json.loads(self._fetch()))
        except Exception as error:
            self._pause.failed()
            logger.error("JWKS fetch failed", extra={"reason": _describe(error)})
            return
        self._keys = keys
        self._fetched_at = self._attempted_at


def usable_keys(document: Any) -> dict[str, jose.VerifyingKey]:
    """The JWKS's signature keys by kid; entries that are none (``jwk.UnusableKey``) are skipped and
    logged, and only a set with no usable key at all is refused."""
    from chalicelib import jwk

    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('a JWKS is a JSON object with a "keys" list')
    keys: dict[str, jose.VerifyingKey] = {}
    skipped = []
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        try:
            if not isinstance(kid, str) or not kid:
                raise jwk.UnusableKey("no kid")
            keys.setdefault(kid, jwk.public_key(entry))
        except jwk.UnusableKey as reason:
            skipped.append(f"{kid or '(no kid)'}: {reason}")
    if skipped:
        logger.warning("JWKS entries skipped", extra={"skipped": skipped})
    if not keys:
        raise ValueError(f"the JWKS holds no usable RS256 or ES256 signature key ({len(skipped)} skipped)")
    return keys


class JwtVerifier:
    """Checks signature, algorithm, ``exp``/``nbf``/``iat`` (with leeway), ``iss`` and ``aud``."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock

    def verify(self, token: str) -> Mapping[str, Any]:
        try:
            jws = jose.parse(token)
        except jose.MalformedToken:
            raise Unauthorized("the token is not a JWT") from None
        algorithm = jws.header.get("alg")
        if algorithm not in self._keys.algorithms:
            raise Unauthorized(
                f"the token's algorithm {algorithm!r} is not accepted (accepted: {', '.join(self._keys.algorithms)})"
            )
        if "crit" in jws.header:
            # RFC 7515, 4.1.11: extensions the recipient does not understand make the token invalid.
            raise Unauthorized(
                "the token is not valid: it requires header extensions (crit) this service lacks"
            )
        key = self._keys.key_for(jws.header)
        if key.algorithm != algorithm:
            raise Unauthorized(f"the token's algorithm does not match its key ({key.algorithm})")
        if not key.verifies(jws.signing_input, jws.signature):
            raise Unauthorized("the token is not valid: Signature verification failed")
        problem = claims_problem(jws.claims, issuer=self._issuer, now=self._clock(), leeway=self._leeway)
        if problem:
            raise Unauthorized(f"the token is not valid: {problem}")
        if not self._audience_matches(jws.claims):
            raise Unauthorized("the token is not meant for this service (aud)")
        return jws.claims

    def _audience_matches(self, claims: Mapping[str, Any]) -> bool:
        """``aud`` (a string or a list), or, in Cognito access tokens, which have none, ``client_id``."""
        audience = claims.get("aud")
        if audience is None:
            return claims.get("client_id") == self._audience
        return self._audience in (audience if isinstance(audience, list) else [audience])


def claims_problem(claims: Mapping[str, Any], *, issuer: str, now: float, leeway: float) -> str | None:
    """What is wrong with a signed token's registered claims (RFC 7519, 4.1), or None."""
    for name in ("exp", "iat", "sub"):
        if name not in claims:
            return f"it has no {name!r} claim"
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"its {name!r} claim is not a number"
    if claims["exp"] <= now - leeway:
        return "it has expired (exp)"
    if claims.get("nbf", -math.inf) > now + leeway:
        return "it is not valid yet (nbf)"
    if claims["iat"] > now + leeway:
        return "it is issued in the future (iat)"
    if claims.get("iss") != issuer:
        return "its issuer is not accepted (iss)"
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        return "its subject is not a string (sub)"
    return None


def verifier_from_settings(
    auth: AuthSettings, session: Any, *, clock: Callable[[], float] = time.time
) -> JwtVerifier:
    """The verifier a stage's settings describe; nothing is fetched until the first token arrives.
    ``clock`` times the key sources' fetches (tests move it; claims are always checked at ``time.time``)."""
    if auth.jwks_url:
        keys: KeySource = JwksKeys(lambda: _http_get(auth.jwks_url), clock=clock)
    elif auth.jwt_secret_parameter:
        name = auth.jwt_secret_parameter
        keys = SecretKey(
            lambda: _ssm_secret(session, name),
            source=f"the SSM parameter {name} (AUTH_JWT_SECRET_PARAMETER)",
            clock=clock,
        )
    else:
        secret = auth.jwt_secret
        keys = SecretKey(lambda: secret, source="AUTH_JWT_SECRET", clock=clock)
    return JwtVerifier(keys, issuer=auth.issuer, audience=auth.audience, leeway_seconds=auth.leeway_seconds)


def _http_get(url: str) -> bytes:
    import urllib.request  # here: only a stage with a JWKS fetches over HTTP

    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_SECONDS) as response:
        return response.read()


def _ssm_secret(session: Any, name: str) -> str:
    """The HS256 secret from an SSM SecureString: the only read the functions' role is granted."""
    client = session.client("ssm")
    return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
