"""Settings for Redis authentication: REDIS_AUTH, REDIS_IAM_USER_ID, REDIS_IAM_CACHE_NAME, the region."""

from __future__ import annotations

import pytest

from chalicelib.settings import RedisAuth, Settings, SettingsError

IAM_ENV = {
    "REDIS_URL": "rediss://master.ws.abc.use1.cache.amazonaws.com:6379/0",
    "REDIS_AUTH": "iam",
    "REDIS_IAM_USER_ID": "ws-broadcast-app",
    "REDIS_IAM_CACHE_NAME": "ws-broadcast",
    "AWS_REGION": "us-east-1",
    "AUTH_MODE": "none",
}


def _with(**changes: str | None) -> dict[str, str]:
    env = dict(IAM_ENV)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def test_default_is_no_extra_authentication():
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:6379/0", "AWS_REGION": "us-east-1", "AUTH_MODE": "none"}
    )
    assert settings.redis_auth == RedisAuth(mode="none")


@pytest.mark.parametrize("value", ["none", "NONE", " none ", ""])
def test_none_spelled_any_way(value):
    env = {
        "REDIS_URL": "rediss://:pw@host:6379/0",
        "REDIS_AUTH": value,
        "AWS_REGION": "us-east-1",
        "AUTH_MODE": "none",
    }
    settings = Settings.from_env(env)
    assert settings.redis_auth.mode == "none"


def test_iam_mode_reads_user_and_cache_name():
    settings = Settings.from_env(IAM_ENV)
    assert settings.redis_auth == RedisAuth(mode="iam", user_id="ws-broadcast-app", cache_name="ws-broadcast")
    assert settings.aws_region == "us-east-1"  # the token is signed for the functions' region


def test_cache_name_is_lowercased_as_elasticache_stores_it():
    assert (
        Settings.from_env(_with(REDIS_IAM_CACHE_NAME="WS-Broadcast")).redis_auth.cache_name == "ws-broadcast"
    )


def test_settings_are_frozen():
    settings = Settings.from_env(IAM_ENV)
    with pytest.raises(AttributeError):
        settings.redis_auth.user_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"REDIS_AUTH": "password"}, ["REDIS_AUTH", "none", "iam"]),
        ({"REDIS_URL": "redis://host:6379/0"}, ["REDIS_AUTH=iam", "rediss://"]),
        ({"REDIS_URL": "rediss://:secret@host:6379/0"}, ["REDIS_URL", "no user or password"]),
        ({"REDIS_URL": "rediss://user@host:6379/0"}, ["REDIS_URL", "no user or password"]),
        ({"REDIS_IAM_USER_ID": None}, ["REDIS_IAM_USER_ID is not set"]),
        ({"REDIS_IAM_USER_ID": "  "}, ["REDIS_IAM_USER_ID is not set"]),
        ({"REDIS_IAM_USER_ID": "1user"}, ["REDIS_IAM_USER_ID", "starting with a letter"]),
        ({"REDIS_IAM_USER_ID": "user--x"}, ["REDIS_IAM_USER_ID", "single"]),
        ({"REDIS_IAM_USER_ID": "user-"}, ["REDIS_IAM_USER_ID"]),
        ({"REDIS_IAM_USER_ID": "a" * 41}, ["REDIS_IAM_USER_ID", "40"]),
        ({"REDIS_IAM_CACHE_NAME": None}, ["REDIS_IAM_CACHE_NAME is not set", "replication group"]),
        ({"REDIS_IAM_CACHE_NAME": "my_cache"}, ["REDIS_IAM_CACHE_NAME"]),
    ],
)
def test_invalid_iam_settings_name_the_variable_and_the_fix(changes, names):
    with pytest.raises(SettingsError) as error:
        Settings.from_env(_with(**changes))
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("name", ["REDIS_IAM_USER_ID", "REDIS_IAM_CACHE_NAME"])
def test_iam_variables_without_iam_mode_are_an_error(name):
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", "AWS_REGION": "us-east-1", name: "something"}
    with pytest.raises(SettingsError, match=f"{name} is set but REDIS_AUTH is 'none'"):
        Settings.from_env(env)


def test_a_password_never_appears_in_an_iam_error():
    with pytest.raises(SettingsError) as error:
        Settings.from_env(_with(REDIS_URL="rediss://:hunter2@host:6379/0"))
    assert "hunter2" not in str(error.value)
