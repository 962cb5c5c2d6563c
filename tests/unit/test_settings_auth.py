"""Settings for who may connect and how much each may send: AUTH_*, ALLOWED_ORIGINS, the limits."""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings, SettingsError

BASE = {"REDIS_URL": "redis://localhost:6379/0", "AWS_REGION": "eu-west-1"}
SECRET = "s" * 32
JWT = {"AUTH_MODE": "jwt", "AUTH_ISSUER": "https://issuer.example", "AUTH_AUDIENCE": "ws-broadcast"}


def test_auth_mode_must_be_written_explicitly():
    with pytest.raises(SettingsError, match="AUTH_MODE must be jwt or none"):
        Settings.from_env(BASE)


def test_none_admits_anyone():
    assert Settings.from_env({**BASE, "AUTH_MODE": "none"}).auth.mode == "none"


@pytest.mark.parametrize(
    "source",
    [
        {"AUTH_JWKS_URL": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json"},
        {"AUTH_JWT_SECRET_PARAMETER": "/ws-broadcast/prod/jwt-secret"},
        {"AUTH_JWT_SECRET": SECRET},
    ],
)
def test_jwt_takes_exactly_one_key_source(source):
    auth = Settings.from_env({**BASE, **JWT, **source}).auth
    assert auth.mode == "jwt"
    assert auth.issuer == "https://issuer.example"
    assert auth.audience == "ws-broadcast"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({**JWT}, ["exactly one key source", "AUTH_JWKS_URL"]),
        ({**JWT, "AUTH_JWT_SECRET": SECRET, "AUTH_JWKS_URL": "https://x/jwks.json"}, ["exactly one"]),
        ({**JWT, "AUTH_ISSUER": "", "AUTH_JWT_SECRET": SECRET}, ["AUTH_ISSUER is not set"]),
        ({**JWT, "AUTH_AUDIENCE": "", "AUTH_JWT_SECRET": SECRET}, ["AUTH_AUDIENCE is not set"]),
        ({**JWT, "AUTH_JWT_SECRET": "short"}, ["AUTH_JWT_SECRET must be at least 32 bytes"]),
        ({**JWT, "AUTH_JWKS_URL": "http://idp.example/jwks.json"}, ["AUTH_JWKS_URL must be an https"]),
        ({"AUTH_MODE": "none", "AUTH_JWT_SECRET": SECRET}, ["AUTH_JWT_SECRET is set but AUTH_MODE is none"]),
        ({"AUTH_MODE": "oauth"}, ["AUTH_MODE must be jwt or none"]),
    ],
)
def test_an_inconsistent_auth_setting_fails_naming_the_variable_and_the_fix(env, words):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**BASE, **env})
    for word in words:
        assert word in str(error.value)


def test_the_secret_never_appears_in_the_settings_repr():
    settings = Settings.from_env({**BASE, **JWT, "AUTH_JWT_SECRET": SECRET})
    assert SECRET not in repr(settings)


def test_allowed_origins_and_limits():
    settings = Settings.from_env(
        {
            **BASE,
            "AUTH_MODE": "none",
            "ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000/",
            "PUBLISH_RATE_PER_SECOND": "2.5",
            "PUBLISH_BURST": "5",
            "MAX_POSTS_PER_SECOND": "0",
        }
    )
    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.publish_rate_per_second == 2.5
    assert settings.publish_burst == 5
    assert settings.max_posts_per_second == 0


def test_limits_have_defaults():
    settings = Settings.from_env({**BASE, "AUTH_MODE": "none"})
    assert (settings.publish_rate_per_second, settings.publish_burst, settings.max_posts_per_second) == (
        5,
        20,
        5000,
    )


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_an_origin_must_be_scheme_host_and_port(origin):
    with pytest.raises(SettingsError, match="ALLOWED_ORIGINS"):
        Settings.from_env({**BASE, "AUTH_MODE": "none", "ALLOWED_ORIGINS": origin})


def test_a_plain_secret_is_refused_in_lambda():
    # Lambda sets AWS_EXECUTION_ENV; the dev-jwt stage's published secret must never guard a deployed API.
    lambda_env = {**BASE, **JWT, "AUTH_JWT_SECRET": SECRET, "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11"}
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET_PARAMETER"):
        Settings.from_env(lambda_env)


def test_allowed_origins_are_kept_in_the_form_browsers_send():
    settings = Settings.from_env(
        {**BASE, "AUTH_MODE": "none", "ALLOWED_ORIGINS": "HTTPS://App.Example.com:443, http://LOCALHOST:3000"}
    )
    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")


@pytest.mark.parametrize(
    "origin", ["https://user@app.example.com", "https://app.example.com:99999", "https://x?y"]
)
def test_an_origin_with_credentials_a_bad_port_or_a_query_is_refused(origin):
    with pytest.raises(SettingsError, match="ALLOWED_ORIGINS"):
        Settings.from_env({**BASE, "AUTH_MODE": "none", "ALLOWED_ORIGINS": origin})
