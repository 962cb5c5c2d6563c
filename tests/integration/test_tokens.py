"""JWT verification against a real JWKS server: every way a token can be wrong is refused with 401."""

from __future__ import annotations

import time

import jwt
import pytest

from chalicelib.auth import AuthUnavailable, Unauthorized
from chalicelib.settings import AuthSettings, SettingsError
from chalicelib.tokens import (
    FAILED_FETCH_RETRY_SECONDS,
    KEYS_MAX_AGE_SECONDS,
    UNKNOWN_KID_REFETCH_SECONDS,
    JwksKeys,
    JwtVerifier,
    SecretKey,
    verifier_from_settings,
)
from testing.identity_provider import (
    AUDIENCE,
    ISSUER,
    SECRET,
    IdentityProvider,
    SigningKey,
    claims_with,
    hmac_token,
    secret_token,
    unsigned_token,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp():
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(idp, clock) -> JwtVerifier:
    keys = JwksKeys(lambda: _get(idp.jwks_url), clock=clock)
    return JwtVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=3) as response:
        return response.read()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_valid_token_gives_its_claims(idp, verifier, algorithm):
    key = idp.rsa if algorithm == "RS256" else idp.ec
    claims = verifier.verify(key.token(sub="alice"))
    assert claims["sub"] == "alice"


def test_keys_are_fetched_once_per_container(idp, verifier):
    for _ in range(5):
        verifier.verify(idp.rsa.token())
    assert idp.requests == 1


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"iat": int(time.time()) + 600}, "issued in the future"),
        ({"iss": "https://someone-else.example"}, "issuer"),
        ({"aud": "another-service"}, "audience"),
        ({"exp": None}, "no expiry"),
        ({"sub": None}, "no subject"),
    ],
)
def test_a_token_with_wrong_claims_is_refused(idp, verifier, claims, why):
    with pytest.raises(Unauthorized):
        verifier.verify(idp.rsa.token(**claims))


def test_the_leeway_tolerates_small_clock_skew(idp, verifier):
    verifier.verify(idp.rsa.token(exp=int(time.time()) - 10, nbf=int(time.time()) + 10))


def test_cognito_access_tokens_match_the_audience_by_client_id(idp, verifier):
    assert verifier.verify(idp.rsa.token(aud=None, client_id=AUDIENCE))["sub"] == "user-1"
    with pytest.raises(Unauthorized):
        verifier.verify(idp.rsa.token(aud=None, client_id="another-app"))


def test_an_audience_list_is_accepted_when_it_names_the_service(idp, verifier):
    verifier.verify(idp.rsa.token(aud=["other", AUDIENCE]))


def test_alg_none_is_refused(idp, verifier):
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": idp.rsa.kid}, claims_with())
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(token)


def test_hs256_signed_with_the_rsa_public_key_is_refused(idp, verifier):
    # The classic confusion attack: the public key (which anyone can fetch) used as an HMAC secret.
    token = hmac_token(idp.rsa.public_pem(), {"alg": "HS256", "typ": "JWT", "kid": idp.rsa.kid})
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(token)


def test_a_token_signed_by_a_key_of_another_algorithm_than_its_kid_is_refused(idp, verifier):
    # An ES256 signature claiming the RSA key's kid.
    token = jwt.encode(claims_with(), idp.ec.private, algorithm="ES256", headers={"kid": idp.rsa.kid})
    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_a_forged_signature_is_refused(idp, verifier):
    impostor = SigningKey("RS256")
    impostor.kid = idp.rsa.kid
    with pytest.raises(Unauthorized, match="not valid"):
        verifier.verify(impostor.token())


def test_garbage_is_refused(verifier):
    for token in ("", "not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"):
        with pytest.raises(Unauthorized):
            verifier.verify(token)


def test_an_unknown_kid_refetches_at_most_once_a_minute_then_refuses(idp, verifier, clock):
    verifier.verify(idp.rsa.token())
    unknown = SigningKey("RS256")
    # WHEN tokens with an unknown kid keep coming within a minute THEN one refetch in all, each refused
    clock.now += UNKNOWN_KID_REFETCH_SECONDS
    for _ in range(5):
        with pytest.raises(Unauthorized, match="does not know"):
            verifier.verify(unknown.token())
    assert idp.requests == 2
    # WHEN the provider rotates that key in THEN it is found at the next refetch, a minute later
    idp.rotate_in(unknown)
    with pytest.raises(Unauthorized):
        verifier.verify(unknown.token())
    clock.now += UNKNOWN_KID_REFETCH_SECONDS
    assert verifier.verify(unknown.token())["sub"] == "user-1"
    assert idp.requests == 3


def test_an_unreachable_jwks_refuses_with_503_and_recovers(idp, verifier, clock):
    idp.available = False
    with pytest.raises(AuthUnavailable):
        verifier.verify(idp.rsa.token())
    # Within the retry pause nothing is fetched; after it the provider is asked again.
    with pytest.raises(AuthUnavailable):
        verifier.verify(idp.rsa.token())
    assert idp.requests == 1
    idp.available = True
    clock.now += 5
    assert verifier.verify(idp.rsa.token())["sub"] == "user-1"


def test_a_jwks_url_with_nothing_listening_refuses_with_503():
    keys = JwksKeys(lambda: _get("http://127.0.0.1:9/jwks.json"))
    verifier = JwtVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30)
    with pytest.raises(AuthUnavailable):
        verifier.verify(SigningKey("RS256").token())


def test_the_hs256_secret_mode_accepts_only_hs256():
    verifier = JwtVerifier(SecretKey(lambda: SECRET), issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30)
    assert verifier.verify(secret_token(sub="bob"))["sub"] == "bob"
    with pytest.raises(Unauthorized):
        verifier.verify(secret_token(secret="another-secret-that-is-at-least-32-bytes"))
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(SigningKey("RS256").token())


def test_the_secret_comes_from_ssm_parameter_store_once(ssm_parameter_store):
    # GIVEN prod's settings: the HS256 secret named by AUTH_JWT_SECRET_PARAMETER
    import boto3

    settings = AuthSettings(
        mode="jwt", jwt_secret_parameter="/ws-broadcast/prod/jwt-secret", issuer=ISSUER, audience=AUDIENCE
    )
    verifier = verifier_from_settings(settings, boto3.session.Session())
    # WHEN tokens arrive THEN the parameter is read once, decrypted, and used
    for _ in range(3):
        assert verifier.verify(secret_token())["sub"] == "user-1"
    assert ssm_parameter_store.requests == [("/ws-broadcast/prod/jwt-secret", True)]


def test_an_unreadable_ssm_parameter_refuses_with_503(ssm_parameter_store):
    import boto3

    ssm_parameter_store.available = False
    settings = AuthSettings(mode="jwt", jwt_secret_parameter="/missing", issuer=ISSUER, audience=AUDIENCE)
    verifier = verifier_from_settings(settings, boto3.session.Session())
    with pytest.raises(AuthUnavailable):
        verifier.verify(secret_token())


# ------------------------------------------------------------------- outages: back off, per container
def test_while_the_identity_provider_is_down_unknown_kids_fetch_once_not_each(idp, verifier, clock):
    # GIVEN keys fetched, then the provider goes down and a minute passes
    verifier.verify(idp.rsa.token())
    idp.available = False
    clock.now += UNKNOWN_KID_REFETCH_SECONDS
    # WHEN 20 tokens with unknown kids arrive at once THEN one fetch in all, each refused with 401
    for _ in range(20):
        with pytest.raises(Unauthorized, match="does not know"):
            verifier.verify(SigningKey("RS256").token())
    assert idp.requests == 2
    # and tokens signed with the keys it knows are still accepted, with nothing fetched
    assert verifier.verify(idp.rsa.token())["sub"] == "user-1"
    assert idp.requests == 2


def test_an_ssm_outage_refuses_with_503_and_reads_again_only_after_the_pause(ssm_parameter_store, clock):
    import boto3

    ssm_parameter_store.available = False
    settings = AuthSettings(
        mode="jwt", jwt_secret_parameter="/ws-broadcast/prod/jwt-secret", issuer=ISSUER, audience=AUDIENCE
    )
    verifier = verifier_from_settings(settings, boto3.session.Session(), clock=clock)
    # WHEN connects keep coming during the outage THEN SSM is read once per pause, each refused with 503
    for _ in range(20):
        with pytest.raises(AuthUnavailable):
            verifier.verify(secret_token())
    assert len(ssm_parameter_store.requests) == 1
    ssm_parameter_store.available = True
    clock.now += FAILED_FETCH_RETRY_SECONDS - 0.5
    with pytest.raises(AuthUnavailable):
        verifier.verify(secret_token())
    assert len(ssm_parameter_store.requests) == 1
    # WHEN the pause is over THEN the secret is read again, and used
    clock.now += 0.5
    assert verifier.verify(secret_token())["sub"] == "user-1"
    assert len(ssm_parameter_store.requests) == 2


# ----------------------------------------------------------------------------- keys leave the JWKS
def test_a_key_removed_from_the_jwks_is_refused_after_the_scheduled_refetch(idp, verifier, clock):
    token = idp.rsa.token()
    verifier.verify(token)
    idp.rotate_out(idp.rsa)
    # Until the keys are due again, the one known is still trusted, and nothing is fetched.
    clock.now += KEYS_MAX_AGE_SECONDS - 1
    verifier.verify(token)
    assert idp.requests == 1
    # WHEN the keys are due THEN they are fetched again, and the removed key is no longer trusted
    clock.now += 1
    with pytest.raises(Unauthorized, match="does not know"):
        verifier.verify(token)
    assert idp.requests == 2


def test_a_failed_scheduled_refetch_keeps_the_keys_and_pauses(idp, verifier, clock):
    verifier.verify(idp.rsa.token())
    idp.available = False
    clock.now += KEYS_MAX_AGE_SECONDS
    for _ in range(5):
        assert verifier.verify(idp.rsa.token())["sub"] == "user-1"
    assert idp.requests == 2
    clock.now += FAILED_FETCH_RETRY_SECONDS
    verifier.verify(idp.rsa.token())
    assert idp.requests == 3


def test_keys_are_timed_on_the_wall_clock():
    # Lambda's monotonic clock stands still while a container is frozen: a frozen hour would not count.
    keys = JwksKeys(lambda: b'{"keys": []}')
    assert keys.clock is time.time


# ------------------------------------------------------------------------ entries that are not keys
def _unusable_entries(idp) -> list[dict]:
    encryption = {**idp.rsa.jwk(), "kid": "enc-1", "alg": "RSA-OAEP"}
    encryption.pop("use")
    return [
        encryption,  # an encryption key without `use`: Cognito and Azure AD list such keys
        {**idp.ec.jwk(), "kid": "enc-2", "use": "enc"},
        {**idp.rsa.jwk(), "kid": "ps-1", "alg": "PS256"},  # a signature alg we do not accept
        {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"},
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "broken", "n": "not base64!", "e": "AQAB"},
        {"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": "AQ", "y": "AQ"},
        {"kty": "RSA", "n": idp.rsa.jwk()["n"], "e": "AQAB"},  # no kid
        "not an object",
    ]


def test_entries_that_are_not_usable_signature_keys_are_skipped(idp, verifier):
    # GIVEN a JWKS listing, beside its signing keys, entries that cannot verify our tokens
    idp.extra_entries = _unusable_entries(idp)
    # THEN tokens signed by the usable keys are accepted, and one naming a skipped entry is refused
    assert verifier.verify(idp.rsa.token())["sub"] == "user-1"
    assert verifier.verify(idp.ec.token())["sub"] == "user-1"
    forged = jwt.encode(claims_with(), idp.rsa.private, algorithm="RS256", headers={"kid": "enc-1"})
    with pytest.raises(Unauthorized, match="does not know"):
        verifier.verify(forged)


def test_a_jwks_with_no_usable_key_refuses_with_503(idp, verifier):
    idp.extra_entries = _unusable_entries(idp)
    idp.keys = []
    with pytest.raises(AuthUnavailable):
        verifier.verify(SigningKey("RS256").token())


# ------------------------------------------------------------------------------- the secret's length
def test_a_short_secret_from_ssm_fails_naming_the_parameter_never_the_secret(ssm_parameter_store, clock):
    import boto3

    ssm_parameter_store.parameters["/ws-broadcast/short/jwt-secret"] = "abc"
    settings = AuthSettings(
        mode="jwt", jwt_secret_parameter="/ws-broadcast/short/jwt-secret", issuer=ISSUER, audience=AUDIENCE
    )
    verifier = verifier_from_settings(settings, boto3.session.Session(), clock=clock)
    token = jwt.encode(claims_with(), "abc", algorithm="HS256")
    for _ in range(3):
        with pytest.raises(SettingsError) as error:
            verifier.verify(token)
        assert "/ws-broadcast/short/jwt-secret" in str(error.value)
        assert "at least 32 bytes" in str(error.value)
        assert "abc" not in str(error.value)
    # Read once per pause, as an outage is: fixing the parameter heals the container without a deploy.
    assert len(ssm_parameter_store.requests) == 1
