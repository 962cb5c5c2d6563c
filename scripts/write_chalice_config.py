#!/usr/bin/env python3
"""Write the network stack's outputs into .chalice/config.json for one stage (the `chalice deploy` path).

    aws cloudformation describe-stacks --stack-name NET --output json > build/stack-NET.json
    scripts/write_chalice_config.py --describe-stacks build/stack-NET.json --stage prod
    scripts/write_chalice_config.py --deployed .chalice/deployed/prod.json --stage prod   (after a deploy)

For the stage it sets, and leaves everything else in the file as it was:
  - ``subnet_ids`` / ``security_group_ids`` from the outputs PrivateSubnetIds and FunctionSecurityGroupId,
    at the stage level if the stage sets them there, else on each function (the three WebSocket
    handlers, api_handler, which serves POST /publish, and fanout_worker);
  - ``environment_variables`` REDIS_URL, REDIS_AUTH, REDIS_IAM_USER_ID, REDIS_IAM_CACHE_NAME (and the
    same names where a function overrides them, so no stale value wins), and FANOUT_QUEUE_URL (output
    FanoutQueueUrl) on the functions that enqueue broadcast jobs;
  - ``autogen_policy: false`` with ``iam_policy_file: policy-<stage>.json``, written next to the config:
    chalice's generated policy has neither ``elasticache:Connect`` (IAM authentication), nor a scoped
    ``execute-api:ManageConnections``, nor ``ssm:GetParameter`` on the stage's AUTH_JWT_SECRET_PARAMETER
    (granted on that one parameter; none when the stage verifies tokens with AUTH_JWKS_URL). The API
    does not exist yet when this runs, so the ManageConnections scope is this account and region (the
    one-stack path, `make deploy`, scopes it to the API itself); and the fan-out queue (output
    FanoutQueueArn): sending, and what the worker's event source mapping does with its role. That
    policy serves the functions that post (websocket_message, api_handler, fanout_worker);
    websocket_connect and websocket_disconnect, which never post nor enqueue, get
    ``policy-<stage>-connect.json`` instead: the same without ManageConnections and SQS (as the
    one-stack path's DefaultRole);
  - the stage's AUTH_ISSUER, AUTH_AUDIENCE (``ws-broadcast-<stack>``) and AUTH_JWT_SECRET_PARAMETER
    (``/ws-broadcast/<stack>/jwt-secret``, what `make secret stack=<stack>` writes), when the stage
    verifies tokens and does not name its own: the names infra/app.yaml derives from its stack's
    name, so that two stacks in one account never accept each other's tokens;
  - ``log_retention_in_days`` (chalice then creates each function's log group with that retention, and
    `chalice delete` removes it) and websocket_message's ``reserved_concurrency``, as the template's
    LogRetentionDays and MessageReservedConcurrency do on the one-stack path.

With ``--deployed`` (after a `chalice deploy`, which is when the WebSocket API's id first exists; `make
chalice-deploy` does it, and deploys again when it changed anything): api_handler's WEBSOCKET_API_ID and
WEBSOCKET_API_STAGE (POST /publish posts through that API), and the policy's ManageConnections
narrowed to that API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FUNCTIONS = ("websocket_connect", "websocket_message", "websocket_disconnect", "api_handler", "fanout_worker")
# The functions that enqueue broadcast jobs (sqs:SendMessage); the same ones post to connections.
ENQUEUERS = ("websocket_message", "api_handler", "fanout_worker")
# $connect and $disconnect: they neither post (a connection does not exist until $connect returns)
# nor enqueue, so their policy file holds neither grant.
CONNECTION_HANDLERS = ("websocket_connect", "websocket_disconnect")
USABLE_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
REQUIRED_OUTPUTS = (
    "PrivateSubnetIds",
    "FunctionSecurityGroupId",
    "RedisUrl",
    "RedisAuth",
    "RedisIamUserId",
    "RedisIamCacheName",
    "RedisReplicationGroupArn",
    "RedisIamUserArn",
    "FanoutQueueUrl",
    "FanoutQueueArn",
)


class ConfigError(ValueError):
    pass


def stack_outputs(describe_stacks: dict) -> tuple[dict[str, str], str, str, str, str]:
    """(outputs by key, partition, region, account id, stack name) of the one stack in a
    describe-stacks answer."""
    stacks = describe_stacks.get("Stacks") or []
    if len(stacks) != 1:
        raise ConfigError(f"expected exactly one stack in the describe-stacks output, found {len(stacks)}")
    stack = stacks[0]
    status = stack.get("StackStatus", "")
    if status not in USABLE_STATUSES:
        raise ConfigError(
            f"stack {stack.get('StackName')} is {status}: wait until it is one of {sorted(USABLE_STATUSES)}"
        )
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
    if missing:
        raise ConfigError(
            f"stack {stack.get('StackName')} lacks the outputs {', '.join(missing)}: "
            "is it a stack of infra/network.yaml (make network)?"
        )
    # arn:PARTITION:cloudformation:REGION:ACCOUNT:stack/NAME/ID
    arn = stack["StackId"].split(":")
    return outputs, arn[1], arn[3], arn[4], stack["StackName"]


def stage_environment(config: dict, stage: str) -> dict[str, str]:
    """The stage's variables as chalice merges them: the top level's, then the stage's."""
    env = {**config.get("environment_variables", {})}
    env.update(config.get("stages", {}).get(stage, {}).get("environment_variables", {}))
    return env


def auth_names(config: dict, stage: str, stack: str) -> dict[str, str]:
    """The auth names the stage lacks, derived from the stack's name (as infra/app.yaml derives them
    from AWS::StackName); none when the stage verifies no tokens."""
    env = stage_environment(config, stage)
    if env.get("AUTH_MODE") != "jwt":
        return {}
    derived = {"AUTH_ISSUER": f"ws-broadcast-{stack}", "AUTH_AUDIENCE": f"ws-broadcast-{stack}"}
    if not (env.get("AUTH_JWKS_URL") or env.get("AUTH_JWT_SECRET")):
        derived["AUTH_JWT_SECRET_PARAMETER"] = f"/ws-broadcast/{stack}/jwt-secret"
    return {name: value for name, value in derived.items() if not env.get(name)}


def secret_parameter(config: dict, stage: str) -> str | None:
    """The SSM parameter the stage reads its HS256 secret from (None with a JWKS URL)."""
    env = stage_environment(config, stage)
    if env.get("AUTH_JWKS_URL"):
        return None
    return env.get("AUTH_JWT_SECRET_PARAMETER")


def connection_policy(policy_document: dict) -> dict:
    """The policy of $connect and $disconnect: ``policy_document`` without posting and the queue."""
    dropped = {"PostToConnections", "EnqueueFanoutJobs", "ConsumeFanoutJobs"}
    return {
        **policy_document,
        "Statement": [s for s in policy_document["Statement"] if s["Sid"] not in dropped],
    }


def policy(
    outputs: dict[str, str], partition: str, region: str, account: str, secret: str | None = None
) -> dict:
    read_secret = {
        "Sid": "ReadTheJwtSecret",
        "Effect": "Allow",
        "Action": "ssm:GetParameter",
        # A name with a leading slash is appended as it is: parameter/a/b, never parameter//a/b.
        "Resource": f"arn:{partition}:ssm:{region}:{account}:parameter/{(secret or '').lstrip('/')}",
    }
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:{partition}:logs:{region}:{account}:*",
            },
            {
                "Sid": "VpcNetworkInterfaces",
                "Effect": "Allow",
                "Action": [
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DetachNetworkInterface",
                    "ec2:DeleteNetworkInterface",
                ],
                "Resource": "*",
            },
            manage_connections(partition, region, account),
            {
                "Sid": "ConnectToTheCacheAsTheAppUser",
                "Effect": "Allow",
                "Action": "elasticache:Connect",
                "Resource": [outputs["RedisReplicationGroupArn"], outputs["RedisIamUserArn"]],
            },
            *([read_secret] if secret else []),
            {
                "Sid": "EnqueueFanoutJobs",
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": outputs["FanoutQueueArn"],
            },
            {
                "Sid": "ConsumeFanoutJobs",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                ],
                "Resource": outputs["FanoutQueueArn"],
            },
        ],
    }


def manage_connections(partition: str, region: str, account: str, api_id: str = "*") -> dict:
    """Posting to connections: of every WebSocket API of the account and region until the API exists."""
    return {
        "Sid": "PostToConnections",
        "Effect": "Allow",
        "Action": "execute-api:ManageConnections",
        "Resource": f"arn:{partition}:execute-api:{region}:{account}:{api_id}/*/*/@connections/*",
    }


def record_websocket_api(config: dict, stage: str, deployed: dict, policy_document: dict | None) -> bool:
    """Give api_handler the deployed WebSocket API and narrow the policy's ManageConnections to it
    (when the stage has a policy file of ours), in place; True when anything changed (a deploy must
    then apply it)."""
    found = {r.get("resource_type"): r for r in deployed.get("resources", [])}
    api, function = found.get("websocket_api"), found.get("lambda_function")
    if not api or not api.get("websocket_api_id") or not function:
        raise ConfigError("the deployed record has no WebSocket API: run chalice deploy first")
    # arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME
    partition, _, region, account = function["lambda_arn"].split(":")[1:5]
    stage_config = config.setdefault("stages", {}).setdefault(stage, {})
    env = {
        "WEBSOCKET_API_ID": api["websocket_api_id"],
        "WEBSOCKET_API_STAGE": stage_config.get("api_gateway_stage", "api"),
    }
    handler = stage_config.setdefault("lambda_functions", {}).setdefault("api_handler", {})
    variables = handler.setdefault("environment_variables", {})
    changed = bool(env.items() - variables.items())
    variables.update(env)
    if policy_document is None:
        return changed
    statements = policy_document["Statement"]
    narrowed = manage_connections(partition, region, account, api["websocket_api_id"])
    index = next((i for i, s in enumerate(statements) if s.get("Sid") == narrowed["Sid"]), None)
    if index is None:
        raise ConfigError(f"the stage's policy has no {narrowed['Sid']} statement: run make chalice-config")
    changed = changed or statements[index] != narrowed
    statements[index] = narrowed
    return changed


def update_config(
    config: dict,
    stage: str,
    outputs: dict[str, str],
    policy_file: str,
    log_retention_days: int = 30,
    message_reserved_concurrency: int = 100,
    stack: str = "",
) -> dict:
    """Return ``config`` with the stage wired to the stack's outputs (and, with ``stack``, the auth
    names derived from it); other keys are kept. ``message_reserved_concurrency`` 0 means no reservation;
    the connection handlers' policy file is ``connection_policy_file(policy_file)``."""
    subnets = [s.strip() for s in outputs["PrivateSubnetIds"].split(",") if s.strip()]
    groups = [outputs["FunctionSecurityGroupId"]]
    env = {
        "REDIS_URL": outputs["RedisUrl"],
        "REDIS_AUTH": outputs["RedisAuth"],
        "REDIS_IAM_USER_ID": outputs["RedisIamUserId"],
        "REDIS_IAM_CACHE_NAME": outputs["RedisIamCacheName"],
    }
    auth = auth_names(config, stage, stack) if stack else {}
    stage_config = config.setdefault("stages", {}).setdefault(stage, {})
    stage_config.setdefault("environment_variables", {}).update({**env, **auth})
    stage_config["autogen_policy"] = False
    stage_config["iam_policy_file"] = policy_file
    stage_config["log_retention_in_days"] = log_retention_days
    # The VPC goes where the stage already puts it: at the stage level (every function of the stage)
    # when it is there, else on each WebSocket function; a function-level value always wins in chalice,
    # so any that exists is rewritten too.
    vpc = {"subnet_ids": subnets, "security_group_ids": groups}
    at_stage_level = "subnet_ids" in stage_config or "security_group_ids" in stage_config
    if at_stage_level:
        stage_config.update(vpc)
    functions = stage_config.setdefault("lambda_functions", {})
    for name in FUNCTIONS:
        function = functions.setdefault(name, {})
        for key, value in vpc.items():
            if not at_stage_level or key in function:
                function[key] = value
        overridden = function.get("environment_variables", {})
        for key in env.keys() & overridden.keys():
            overridden[key] = env[key]
        for key in ("autogen_policy", "iam_policy_file", "log_retention_in_days"):
            function.pop(key, None)
        if name in CONNECTION_HANDLERS:
            function["iam_policy_file"] = connection_policy_file(policy_file)
    for name in ENQUEUERS:
        functions[name].setdefault("environment_variables", {})["FANOUT_QUEUE_URL"] = outputs[
            "FanoutQueueUrl"
        ]
    message = functions["websocket_message"]
    if message_reserved_concurrency:
        message["reserved_concurrency"] = message_reserved_concurrency
    else:
        message.pop("reserved_concurrency", None)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--describe-stacks", type=Path, help="output of aws cloudformation describe-stacks")
    source.add_argument(
        "--deployed", type=Path, help="chalice's .chalice/deployed/STAGE.json, after a deploy"
    )
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--config", type=Path, default=Path(".chalice/config.json"))
    parser.add_argument("--log-retention-days", type=int, default=30)
    parser.add_argument("--message-reserved-concurrency", type=int, default=100, help="0: no reservation")
    args = parser.parse_args(argv)
    if args.deployed:
        record_deployed(args.config, args.deployed, args.stage)
        return 0
    try:
        outputs, partition, region, account, stack = stack_outputs(
            json.loads(args.describe_stacks.read_text())
        )
        config = json.loads(args.config.read_text())
    except (ConfigError, OSError, json.JSONDecodeError) as error:
        print(f"write_chalice_config: {error}", file=sys.stderr)
        return 1
    policy_file = f"policy-{args.stage}.json"
    update_config(
        config,
        args.stage,
        outputs,
        policy_file,
        args.log_retention_days,
        args.message_reserved_concurrency,
        stack,
    )
    secret = secret_parameter(config, args.stage)
    document = policy(outputs, partition, region, account, secret)
    for name, written in (
        (policy_file, document),
        (connection_policy_file(policy_file), connection_policy(document)),
    ):
        (args.config.parent / name).write_text(json.dumps(written, indent=2) + "\n")
    args.config.write_text(json.dumps(config, indent=2) + "\n")
    print(f"write_chalice_config: stage {args.stage} of {args.config} now uses the stack's network and cache")
    return 0


def connection_policy_file(policy_file: str) -> str:
    """policy-prod.json -> policy-prod-connect.json."""
    return policy_file.removesuffix(".json") + "-connect.json"


def record_deployed(config_path: Path, deployed: Path, stage: str) -> bool:
    """record_websocket_api on the files; True when they changed (SystemExit with a message on error)."""
    policy_path = config_path.parent / f"policy-{stage}.json"
    try:
        config = json.loads(config_path.read_text())
        document = json.loads(policy_path.read_text()) if policy_path.exists() else None
        changed = record_websocket_api(config, stage, json.loads(deployed.read_text()), document)
    except (ConfigError, OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"write_chalice_config: {error}") from None
    if changed:
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        if document is not None:
            policy_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"write_chalice_config: stage {stage}: api_handler posts through the deployed WebSocket API")
    return changed


if __name__ == "__main__":
    sys.exit(main())
