"""How the local gateway calls handlers (Lambda's contract) and reads a Chalice project's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localgw import lambdaenv, project

FIXTURE_APP = Path(__file__).resolve().parents[1] / "e2e" / "fixture_app"


def function(handler, timeout=3.0) -> lambdaenv.LambdaFunction:
    return lambdaenv.LambdaFunction(
        name="websocket_message",
        function_name="app-dev-websocket_message",
        handler_string="app.message",
        handler=handler,
        timeout_seconds=timeout,
        memory_mb=256,
        region="eu-west-1",
    )


def test_the_handler_gets_a_fresh_copy_of_the_event_and_a_lambda_context():
    seen = {}

    def handler(event, context):
        event["mutated"] = True
        seen.update(
            arn=context.invoked_function_arn,
            memory=context.memory_limit_in_mb,
            remaining=context.get_remaining_time_in_millis(),
            group=context.log_group_name,
            stream=context.log_stream_name,
        )
        return {"statusCode": 204}

    event = {"requestContext": {"connectionId": "x"}}
    response, context = lambdaenv.invoke(function(handler), event, timeout_seconds=3.0)
    assert response == {"statusCode": 204} and "mutated" not in event
    assert seen["arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:app-dev-websocket_message"
    assert seen["memory"] == "256" and 2900 < seen["remaining"] <= 3000
    assert seen["group"] == "/aws/lambda/app-dev-websocket_message" and "[$LATEST]" in seen["stream"]
    assert len(context.aws_request_id) == 36


def test_a_raising_or_unserializable_handler_is_a_handler_error():
    def boom(event, context):
        raise KeyError("x")

    with pytest.raises(lambdaenv.HandlerError, match="KeyError"):
        lambdaenv.invoke(function(boom), {}, timeout_seconds=1)
    with pytest.raises(lambdaenv.HandlerError, match="not JSON serializable"):
        lambdaenv.invoke(function(lambda e, c: {"body": object()}), {}, timeout_seconds=1)


@pytest.mark.parametrize(
    ("response", "status"),
    [(None, 200), ({"statusCode": 403}, 403), ({"body": "x"}, 200), ({"statusCode": "x"}, 502)],
)
def test_status_is_read_as_api_gateway_reads_a_proxy_response(response, status):
    assert lambdaenv.status_of(response) == status


def test_config_environment_merges_top_level_stage_and_per_function_variables():
    config = project.read_config(FIXTURE_APP, "dev")
    assert config.app_name == "localgw-fixture"
    assert config.environment == {
        "FIXTURE_TOP": "top",
        "FIXTURE_STAGE": "dev",
        "FIXTURE_FN": "message",
        "FIXTURE_WORKER": "worker",  # an @app.on_sqs_message function's own block
    }
    assert config.scoped("websocket_message").lambda_timeout == 5
    assert config.scoped("fixture_worker").lambda_timeout == 10
    assert config.scoped("websocket_connect").lambda_timeout is None  # Chalice's default applies
    other_stage = project.read_config(FIXTURE_APP, "prod")
    assert other_stage.environment == {"FIXTURE_TOP": "top", "FIXTURE_STAGE": "top"}


def test_conflicting_per_function_variables_are_reported(tmp_path):
    (tmp_path / "app.py").write_text("")
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(
        json.dumps(
            {
                "stages": {
                    "api": {
                        "lambda_functions": {
                            "websocket_connect": {"environment_variables": {"A": "1"}},
                            "websocket_message": {"environment_variables": {"A": "2"}},
                        }
                    }
                }
            }
        )
    )
    config = project.read_config(tmp_path, "api")
    assert config.environment == {"A": "1"} and config.conflicts == [
        "A (set differently for websocket_message)"
    ]


def test_variables_already_in_the_environment_win_over_the_config():
    env = {"REDIS_URL": "redis://mine:6379/0"}
    applied = project.apply_environment({"REDIS_URL": "redis://config/0", "X": "1"}, env)
    assert env == {"REDIS_URL": "redis://mine:6379/0", "X": "1"} and applied == ["X"]


def test_dummy_credentials_and_region_only_when_none_are_set():
    env = {}
    project.ensure_aws_environment(env)
    assert (
        env["AWS_ACCESS_KEY_ID"] == "testing"
        and env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    )
    mine = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_DEFAULT_REGION": "eu-west-1"}
    project.ensure_aws_environment(mine)
    assert mine["AWS_ACCESS_KEY_ID"] == "AKIA" and mine["AWS_REGION"] == "eu-west-1"


def test_a_directory_without_app_py_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(project.ProjectError, match=r"has no app\.py"):
        project.read_config(tmp_path, "api")
