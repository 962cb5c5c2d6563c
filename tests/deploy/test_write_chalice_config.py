"""scripts/write_chalice_config.py on a describe-stacks answer of a network stack.

The fixture has the exact shape of `aws cloudformation describe-stacks --output json` for a stack of
infra/network.yaml; it was written by hand from that shape (no AWS account here), with made-up ids.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "write_chalice_config.py"
FIXTURE = Path(__file__).parent / "fixtures" / "describe-stacks-network.json"
FUNCTIONS = ("websocket_connect", "websocket_message", "websocket_disconnect", "api_handler", "fanout_worker")
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/ws-broadcast-fanout"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:ws-broadcast-fanout"
SUBNETS = ["subnet-0c3d4e5f607182930", "subnet-0d4e5f60718293a41"]
FUNCTION_SG = "sg-0f60718293a4b5c63"

# The shape of the lead's config: dev and prod, prod with placeholders and per-function settings.
CONFIG = {
    "version": "2.0",
    "app_name": "ws-broadcast",
    "stages": {
        "dev": {
            "api_gateway_stage": "api",
            "environment_variables": {"REDIS_URL": "redis://127.0.0.1:6379/0"},
        },
        "prod": {
            "api_gateway_stage": "api",
            "environment_variables": {
                "REDIS_URL": "rediss://:PASSWORD@REPLACE-ME:6379/0",
                "FANOUT_WORKERS": "32",
                "AUTH_MODE": "jwt",
                "AUTH_JWT_SECRET_PARAMETER": "/ws-broadcast/prod/jwt-secret",
            },
            "lambda_functions": {
                "websocket_connect": {"subnet_ids": ["subnet-REPLACE"], "security_group_ids": ["sg-REPLACE"]},
                "websocket_message": {
                    "subnet_ids": ["subnet-REPLACE"],
                    "security_group_ids": ["sg-REPLACE"],
                    "lambda_memory_size": 1024,
                    "lambda_timeout": 30,
                    "environment_variables": {"REDIS_URL": "rediss://stale:6379/0", "LOG_LEVEL": "INFO"},
                },
                "websocket_disconnect": {
                    "subnet_ids": ["subnet-REPLACE"],
                    "security_group_ids": ["sg-REPLACE"],
                },
            },
        },
    },
}


@pytest.fixture
def chalice_dir(tmp_path) -> Path:
    directory = tmp_path / ".chalice"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))
    return directory


def _run(chalice_dir: Path, describe: Path = FIXTURE, stage: str = "prod") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--describe-stacks", str(describe), "--stage", stage,
         "--config", str(chalice_dir / "config.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_writes_network_and_cache_settings_into_the_stage(chalice_dir):
    # WHEN
    result = _run(chalice_dir)
    # THEN
    assert result.returncode == 0, result.stderr
    config = json.loads((chalice_dir / "config.json").read_text())
    prod = config["stages"]["prod"]
    assert prod["environment_variables"] == {
        "REDIS_URL": "rediss://master.ws-net.abcdef.euw1.cache.amazonaws.com:6379/0",
        "REDIS_AUTH": "iam",
        "REDIS_IAM_USER_ID": "ws-net-app",
        "REDIS_IAM_CACHE_NAME": "ws-net",
        "FANOUT_WORKERS": "32",
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET_PARAMETER": "/ws-broadcast/prod/jwt-secret",  # named by the stage: kept
        # not named: the stack's own, as infra/app.yaml derives them
        "AUTH_ISSUER": "ws-broadcast-ws-net",
        "AUTH_AUDIENCE": "ws-broadcast-ws-net",
    }
    for name in FUNCTIONS:
        assert prod["lambda_functions"][name]["subnet_ids"] == SUBNETS
        assert prod["lambda_functions"][name]["security_group_ids"] == [FUNCTION_SG]
    # A function-level REDIS_URL would win over the stage's: it is rewritten, other keys are kept.
    message = prod["lambda_functions"]["websocket_message"]
    assert message["environment_variables"] == {
        "REDIS_URL": "rediss://master.ws-net.abcdef.euw1.cache.amazonaws.com:6379/0",
        "LOG_LEVEL": "INFO",
        "FANOUT_QUEUE_URL": QUEUE_URL,
    }
    # The functions that enqueue broadcast jobs know the network stack's queue; the others do not.
    for name in ("api_handler", "fanout_worker"):
        assert prod["lambda_functions"][name]["environment_variables"]["FANOUT_QUEUE_URL"] == QUEUE_URL
    for name in ("websocket_connect", "websocket_disconnect"):
        assert "FANOUT_QUEUE_URL" not in prod["lambda_functions"][name].get("environment_variables", {})
    assert message["lambda_memory_size"] == 1024
    assert message["lambda_timeout"] == 30
    assert prod["autogen_policy"] is False
    assert prod["iam_policy_file"] == "policy-prod.json"
    # $connect and $disconnect never post nor enqueue: a policy file of their own
    for name in FUNCTIONS:
        assert prod["lambda_functions"][name].get("iam_policy_file") == (
            "policy-prod-connect.json" if name in ("websocket_connect", "websocket_disconnect") else None
        )


def test_the_projects_own_config_gets_its_stage_level_vpc_rewritten(tmp_path):
    # GIVEN the repository's .chalice/config.json (prod sets the VPC for the whole stage)
    chalice_dir = tmp_path / ".chalice"
    chalice_dir.mkdir()
    original = json.loads((ROOT / ".chalice" / "config.json").read_text())
    (chalice_dir / "config.json").write_text(json.dumps(original))
    # WHEN
    assert _run(chalice_dir).returncode == 0
    # THEN the stage-level placeholders are replaced, and no function carries a copy of its own
    prod = json.loads((chalice_dir / "config.json").read_text())["stages"]["prod"]
    assert prod["subnet_ids"] == SUBNETS
    assert prod["security_group_ids"] == [FUNCTION_SG]
    for name in FUNCTIONS:
        function = prod["lambda_functions"][name]
        assert function.get("subnet_ids", SUBNETS) == SUBNETS
        assert function.get("security_group_ids", [FUNCTION_SG]) == [FUNCTION_SG]
    assert prod["environment_variables"]["REDIS_AUTH"] == "iam"
    assert "@" not in prod["environment_variables"]["REDIS_URL"]
    expected_dev = original["stages"]["dev"]
    assert json.loads((chalice_dir / "config.json").read_text())["stages"]["dev"] == expected_dev


def test_everything_else_is_preserved(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    config = json.loads((chalice_dir / "config.json").read_text())
    assert config["stages"]["dev"] == CONFIG["stages"]["dev"]
    assert {k: v for k, v in config.items() if k != "stages"} == {
        "version": "2.0",
        "app_name": "ws-broadcast",
    }
    assert config["stages"]["prod"]["api_gateway_stage"] == "api"


def test_no_password_is_written(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    config = (chalice_dir / "config.json").read_text()
    assert "PASSWORD" not in config + (chalice_dir / "policy-prod.json").read_text()
    prod = json.loads(config)["stages"]["prod"]
    urls = [prod["environment_variables"]["REDIS_URL"]] + [
        f["environment_variables"]["REDIS_URL"]
        for f in prod["lambda_functions"].values()
        if "REDIS_URL" in f.get("environment_variables", {})
    ]
    assert all("@" not in url for url in urls)


def test_policy_file_scopes_the_role(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    policy = json.loads((chalice_dir / "policy-prod.json").read_text())
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ConnectToTheCacheAsTheAppUser"] == {
        "Sid": "ConnectToTheCacheAsTheAppUser",
        "Effect": "Allow",
        "Action": "elasticache:Connect",
        "Resource": [
            "arn:aws:elasticache:eu-west-1:123456789012:replicationgroup:ws-net",
            "arn:aws:elasticache:eu-west-1:123456789012:user:ws-net-app",
        ],
    }
    manage = by_sid["PostToConnections"]  # the API does not exist yet: narrowed after the deploy
    assert manage["Action"] == "execute-api:ManageConnections"
    assert manage["Resource"] == "arn:aws:execute-api:eu-west-1:123456789012:*/*/*/@connections/*"
    assert by_sid["Logs"]["Resource"] == "arn:aws:logs:eu-west-1:123456789012:*"
    assert "ec2:CreateNetworkInterface" in by_sid["VpcNetworkInterfaces"]["Action"]
    # The HS256 secret: read access to its one parameter, nothing else in SSM.
    assert by_sid["ReadTheJwtSecret"] == {
        "Sid": "ReadTheJwtSecret",
        "Effect": "Allow",
        "Action": "ssm:GetParameter",
        "Resource": "arn:aws:ssm:eu-west-1:123456789012:parameter/ws-broadcast/prod/jwt-secret",
    }
    # The fan-out queue: sending, and what the worker's event source mapping does, on that queue alone.
    assert by_sid["EnqueueFanoutJobs"] == {
        "Sid": "EnqueueFanoutJobs",
        "Effect": "Allow",
        "Action": "sqs:SendMessage",
        "Resource": QUEUE_ARN,
    }
    assert by_sid["ConsumeFanoutJobs"]["Action"] == [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
    ]
    assert by_sid["ConsumeFanoutJobs"]["Resource"] == QUEUE_ARN
    assert [s["Sid"] for s in policy["Statement"] if "sqs" in json.dumps(s)] == [
        "EnqueueFanoutJobs",
        "ConsumeFanoutJobs",
    ]


def test_the_connection_handlers_policy_may_neither_post_nor_touch_the_queue(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    publishers = json.loads((chalice_dir / "policy-prod.json").read_text())
    handlers = json.loads((chalice_dir / "policy-prod-connect.json").read_text())
    assert [s["Sid"] for s in handlers["Statement"]] == [
        "Logs",
        "VpcNetworkInterfaces",
        "ConnectToTheCacheAsTheAppUser",
        "ReadTheJwtSecret",  # $connect verifies tokens
    ]
    assert "execute-api:" not in json.dumps(handlers)
    assert "sqs:" not in json.dumps(handlers)
    # every statement they keep is the publishers' own, word for word
    assert all(statement in publishers["Statement"] for statement in handlers["Statement"])


def test_a_stage_that_verifies_with_a_jwks_gets_no_ssm_access(chalice_dir):
    config = json.loads((chalice_dir / "config.json").read_text())
    config["stages"]["prod"]["environment_variables"]["AUTH_JWKS_URL"] = "https://idp.example/jwks.json"
    (chalice_dir / "config.json").write_text(json.dumps(config))
    assert _run(chalice_dir).returncode == 0
    for name in ("policy-prod.json", "policy-prod-connect.json"):
        assert "ssm:" not in (chalice_dir / name).read_text()


def test_log_retention_and_the_message_functions_reserved_concurrency(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    prod = json.loads((chalice_dir / "config.json").read_text())["stages"]["prod"]
    assert prod["log_retention_in_days"] == 30
    assert prod["lambda_functions"]["websocket_message"]["reserved_concurrency"] == 100
    assert "reserved_concurrency" not in prod["lambda_functions"]["websocket_connect"]


def test_running_twice_gives_the_same_file(chalice_dir):
    assert _run(chalice_dir).returncode == 0
    first = (chalice_dir / "config.json").read_text()
    assert _run(chalice_dir).returncode == 0
    assert (chalice_dir / "config.json").read_text() == first


def test_another_stage_is_created_when_missing(chalice_dir):
    assert _run(chalice_dir, stage="staging").returncode == 0
    config = json.loads((chalice_dir / "config.json").read_text())
    assert config["stages"]["staging"]["lambda_functions"]["websocket_message"]["subnet_ids"] == SUBNETS
    assert config["stages"]["prod"] == CONFIG["stages"]["prod"]
    assert (chalice_dir / "policy-staging.json").exists()


def _describe_with(tmp_path: Path, change) -> Path:
    data = copy.deepcopy(json.loads(FIXTURE.read_text()))
    change(data["Stacks"][0])
    path = tmp_path / "describe.json"
    path.write_text(json.dumps(data))
    return path


def test_missing_outputs_are_named_and_nothing_is_written(chalice_dir, tmp_path):
    def drop(stack):
        stack["Outputs"] = [
            o for o in stack["Outputs"] if o["OutputKey"] not in ("RedisUrl", "RedisIamUserId")
        ]

    before = (chalice_dir / "config.json").read_text()
    result = _run(chalice_dir, _describe_with(tmp_path, drop))
    assert result.returncode == 1
    assert "RedisUrl, RedisIamUserId" in result.stderr
    assert "infra/network.yaml" in result.stderr
    assert (chalice_dir / "config.json").read_text() == before
    assert not (chalice_dir / "policy-prod.json").exists()


def test_a_stack_still_in_progress_is_refused(chalice_dir, tmp_path):
    result = _run(chalice_dir, _describe_with(tmp_path, lambda s: s.update(StackStatus="CREATE_IN_PROGRESS")))
    assert result.returncode == 1
    assert "CREATE_IN_PROGRESS" in result.stderr


@pytest.mark.timeout(600)  # `chalice package` downloads the runtime wheels on a fresh machine
def test_chalice_accepts_the_written_config(tmp_path):
    """`chalice package --stage prod` (offline) on the written config: the stand-in for `chalice deploy`."""
    # GIVEN a copy of the project whose config the script rewrote
    project = tmp_path / "project"
    project.mkdir()
    for item in ("app.py", "chalicelib", "requirements.txt", ".chalice"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, project / item, ignore=shutil.ignore_patterns("deployed", "deployments"))
        else:
            shutil.copy(source, project / item)
    assert _run(project / ".chalice").returncode == 0
    # WHEN chalice builds the stage
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "chalice"), "--project-dir", str(project), "package", "--stage", "prod",
         str(tmp_path / "out")],
        capture_output=True, text=True, env={**env, "AWS_DEFAULT_REGION": "eu-west-1"}, timeout=300,
    )  # fmt: skip
    # THEN every function gets the stack's network and cache, and its role the written policy
    # (with autogen_policy false chalice gives each function a role of its own, with its policy file)
    assert result.returncode == 0, result.stdout + result.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    functions = {n: r for n, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == {
        "WebsocketConnect",
        "WebsocketMessage",
        "WebsocketDisconnect",
        "APIHandler",
        "FanoutWorker",
    }
    for function in functions.values():
        props = function["Properties"]
        assert props["VpcConfig"] == {"SubnetIds": SUBNETS, "SecurityGroupIds": [FUNCTION_SG]}
        assert props["Environment"]["Variables"]["REDIS_AUTH"] == "iam"
        assert props["Environment"]["Variables"]["REDIS_IAM_CACHE_NAME"] == "ws-net"
    # chalice creates each function's log group with the retention (and `chalice delete` removes it)
    groups = [r for r in template["Resources"].values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert [g["Properties"]["RetentionInDays"] for g in groups] == [30] * len(functions)
    handler = functions["APIHandler"]["Properties"]  # POST /publish, sized as websocket_message
    assert (handler["MemorySize"], handler["Timeout"]) == (1024, 28)
    # chalice deploy connects the worker to the network stack's queue, found by the name it was given
    worker = functions["FanoutWorker"]["Properties"]
    (source,) = worker["Events"].values()
    assert source["Properties"]["Queue"]["Fn::Sub"].endswith(":ws-broadcast-fanout")
    assert QUEUE_ARN.endswith(":ws-broadcast-fanout")
    assert worker["Environment"]["Variables"]["FANOUT_QUEUE_URL"] == QUEUE_URL
    assert [p["Properties"].get("ReservedConcurrentExecutions") for p in functions.values()].count(100) == 1
    publishers = json.loads((project / ".chalice" / "policy-prod.json").read_text())
    handlers = json.loads((project / ".chalice" / "policy-prod-connect.json").read_text())
    for name, function in functions.items():
        role = template["Resources"][function["Properties"]["Role"]["Fn::GetAtt"][0]]
        (policy,) = role["Properties"]["Policies"]
        connection_handler = name in ("WebsocketConnect", "WebsocketDisconnect")
        assert policy["PolicyDocument"] == (handlers if connection_handler else publishers), name
        may_post = "execute-api:ManageConnections" in json.dumps(policy["PolicyDocument"])
        assert may_post is not connection_handler, name


DEPLOYED = {
    "schema_version": "2.0",
    "backend": "api",
    "resources": [
        {"name": "api_handler", "resource_type": "lambda_function",
         "lambda_arn": "arn:aws:lambda:eu-west-1:123456789012:function:ws-broadcast-prod"},
        {"name": "websocket_api", "resource_type": "websocket_api", "websocket_api_id": "abc123defg",
         "websocket_api_url": "wss://abc123defg.execute-api.eu-west-1.amazonaws.com/api/"},
    ],
}  # fmt: skip


def test_after_a_deploy_the_publish_function_gets_the_websocket_api_and_the_policy_only_that_api(chalice_dir):
    # GIVEN a stage written from the network stack, then deployed (chalice's record of the deploy)
    assert _run(chalice_dir).returncode == 0
    deployed = chalice_dir / "deployed" / "prod.json"
    deployed.parent.mkdir()
    deployed.write_text(json.dumps(DEPLOYED))
    # WHEN
    args = [
        sys.executable,
        str(SCRIPT),
        "--deployed",
        str(deployed),
        "--config",
        str(chalice_dir / "config.json"),
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    # THEN POST /publish posts through the deployed API, and the role may post to that API alone
    assert first.returncode == 0, first.stderr
    prod = json.loads((chalice_dir / "config.json").read_text())["stages"]["prod"]
    assert prod["lambda_functions"]["api_handler"]["environment_variables"] == {
        "FANOUT_QUEUE_URL": QUEUE_URL,
        "WEBSOCKET_API_ID": "abc123defg",
        "WEBSOCKET_API_STAGE": "api",
    }
    policy = json.loads((chalice_dir / "policy-prod.json").read_text())
    (manage,) = [s for s in policy["Statement"] if s["Action"] == "execute-api:ManageConnections"]
    assert manage["Resource"] == "arn:aws:execute-api:eu-west-1:123456789012:abc123defg/*/*/@connections/*"
    # a second run changes nothing (make chalice-deploy then deploys once only)
    before = (chalice_dir / "config.json").read_text()
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0
    assert second.stdout == ""
    assert (chalice_dir / "config.json").read_text() == before


def test_a_stage_that_names_no_auth_names_gets_the_stacks_own_and_may_read_only_its_secret(chalice_dir):
    # GIVEN a stage verifying tokens that names neither issuer, audience nor secret (the project's prod)
    config = json.loads((chalice_dir / "config.json").read_text())
    del config["stages"]["prod"]["environment_variables"]["AUTH_JWT_SECRET_PARAMETER"]
    (chalice_dir / "config.json").write_text(json.dumps(config))
    # WHEN it is written from the network stack ws-net
    assert _run(chalice_dir).returncode == 0
    # THEN it uses the names derived from the stack, and its policy reads that one parameter
    env = json.loads((chalice_dir / "config.json").read_text())["stages"]["prod"]["environment_variables"]
    assert (env["AUTH_ISSUER"], env["AUTH_AUDIENCE"], env["AUTH_JWT_SECRET_PARAMETER"]) == (
        "ws-broadcast-ws-net",
        "ws-broadcast-ws-net",
        "/ws-broadcast/ws-net/jwt-secret",
    )
    policy = json.loads((chalice_dir / "policy-prod.json").read_text())
    (read,) = [s for s in policy["Statement"] if s["Sid"] == "ReadTheJwtSecret"]
    assert read["Resource"] == "arn:aws:ssm:eu-west-1:123456789012:parameter/ws-broadcast/ws-net/jwt-secret"
