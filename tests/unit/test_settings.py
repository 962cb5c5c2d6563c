"""Settings: read once from the environment; every mistake names its variable and the fix."""

import pytest

from chalicelib.settings import Settings, SettingsError

BASE = {"REDIS_URL": "redis://localhost:6379/0", "AWS_REGION": "eu-west-1", "AUTH_MODE": "none"}


def test_defaults():
    settings = Settings.from_env(BASE)
    assert settings.fanout_workers == 64
    assert settings.connection_max_age_seconds == 7200
    assert settings.publish_deadline_seconds == 25.0
    assert settings.redis_cluster is False
    assert settings.management_api_endpoint_override is None
    assert settings.redis_key_prefix == "wsbroadcast"


def test_an_unset_or_empty_variable_takes_the_same_default_as_a_settings_built_in_code():
    built = Settings(redis_url=BASE["REDIS_URL"], aws_region=BASE["AWS_REGION"])
    assert Settings.from_env(BASE) == built
    blank = dict.fromkeys(["FANOUT_WORKERS", "HISTORY_SIZE", "PRESENCE_MAX", "WEBSOCKET_API_STAGE"], " ")
    assert Settings.from_env({**BASE, **blank}) == built


def test_every_variable_is_read():
    settings = Settings.from_env(
        {
            "REDIS_URL": "rediss://:s3cret@master.example.cache.amazonaws.com:6379/0",
            "AWS_DEFAULT_REGION": "us-east-2",
            "AUTH_MODE": "none",
            "REDIS_KEY_PREFIX": "chat-prod",
            "REDIS_CLUSTER": "true",
            "REDIS_SOCKET_TIMEOUT_SECONDS": "0.5",
            "FANOUT_WORKERS": "64",
            "CONNECTION_MAX_AGE_SECONDS": "600",
            "PUBLISH_DEADLINE_SECONDS": "10",
            "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": "http://127.0.0.1:8000/api/",
        }
    )
    assert settings.aws_region == "us-east-2"
    assert settings.redis_key_prefix == "chat-prod"
    assert settings.redis_cluster is True
    assert settings.redis_socket_timeout_seconds == 0.5
    assert settings.fanout_workers == 64
    assert settings.connection_max_age_seconds == 600
    assert settings.publish_deadline_seconds == 10.0
    assert settings.management_api_endpoint_override == "http://127.0.0.1:8000/api"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"REDIS_URL": ""}, "REDIS_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://localhost:notaport"}, "REDIS_URL"),
        ({"AWS_REGION": ""}, "AWS_REGION"),
        ({"REDIS_KEY_PREFIX": "{tagged}"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
        ({"FANOUT_WORKERS": "0"}, "FANOUT_WORKERS"),
        ({"FANOUT_WORKERS": "many"}, "FANOUT_WORKERS"),
        ({"CONNECTION_MAX_AGE_SECONDS": "7201"}, "CONNECTION_MAX_AGE_SECONDS"),
        ({"PUBLISH_DEADLINE_SECONDS": "29"}, "PUBLISH_DEADLINE_SECONDS"),
        ({"REDIS_SOCKET_TIMEOUT_SECONDS": "-1"}, "REDIS_SOCKET_TIMEOUT_SECONDS"),
        (
            {"AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": "localhost:8000"},
            "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI",
        ),
    ],
)
def test_a_bad_setting_names_its_variable(overrides, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({**BASE, **overrides})


def test_a_password_never_appears_in_an_error():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "REDIS_URL": "redis://:hunter2@host:bad/0"})
    assert "hunter2" not in str(caught.value)


def test_queued_fanout_is_off_until_a_queue_is_named_and_the_registry_has_one_shard():
    settings = Settings.from_env(BASE)
    assert settings.fanout_queue_url is None
    assert settings.fanout_inline_max == 10_000
    assert settings.registry_shards == 1
    queued = Settings.from_env(
        {
            **BASE,
            "FANOUT_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/ws-broadcast-fanout",
            "FANOUT_INLINE_MAX": "2500",
            "REGISTRY_SHARDS": "16",
        }
    )
    assert queued.fanout_queue_url.endswith("/123456789012/ws-broadcast-fanout")
    assert (queued.fanout_inline_max, queued.registry_shards) == (2500, 16)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FANOUT_QUEUE_URL", "ws-broadcast-fanout"),
        ("FANOUT_QUEUE_URL", "arn:aws:sqs:eu-west-1:123456789012:ws-broadcast-fanout"),
        ("FANOUT_INLINE_MAX", "0"),
        ("REGISTRY_SHARDS", "0"),
        ("REGISTRY_SHARDS", "4096"),
        ("FANOUT_QUEUE_BACKLOG_SECONDS", "0"),
        ("FANOUT_QUEUE_BACKLOG_SECONDS", "7201"),
        ("PUBLISH_RATE_PER_USER", "-1"),
    ],
)
def test_queue_and_shard_mistakes_name_their_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**BASE, name: value})


def test_the_per_user_rate_is_off_and_the_queue_admits_five_minutes_of_budget_by_default():
    settings = Settings.from_env(BASE)
    assert (settings.publish_rate_per_user, settings.fanout_queue_backlog_seconds) == (0, 300)
    tuned = Settings.from_env({**BASE, "PUBLISH_RATE_PER_USER": "2.5", "FANOUT_QUEUE_BACKLOG_SECONDS": "60"})
    assert (tuned.publish_rate_per_user, tuned.fanout_queue_backlog_seconds) == (2.5, 60)


def test_metrics_go_to_the_ws_broadcast_namespace_unless_told_otherwise():
    assert Settings.from_env(BASE).metrics_namespace == "WsBroadcast"
    assert (
        Settings.from_env({**BASE, "METRICS_NAMESPACE": "Chat/prod #2"}).metrics_namespace == "Chat/prod #2"
    )
    assert Settings.from_env({**BASE, "METRICS_NAMESPACE": "  "}).metrics_namespace == "WsBroadcast"


@pytest.mark.parametrize("value", ["AWS/Lambda", "x" * 256, "café", "ws{broadcast}", "a\nb"])
def test_a_namespace_cloudwatch_would_refuse_is_named_with_the_fix(value):
    with pytest.raises(SettingsError, match="METRICS_NAMESPACE must be a CloudWatch namespace") as caught:
        Settings.from_env({**BASE, "METRICS_NAMESPACE": value})
    assert "e.g. WsBroadcast" in str(caught.value)
