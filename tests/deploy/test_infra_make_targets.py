"""The deploy Make targets, run for real with stand-ins for `aws` and `chalice` that record their arguments.

The stand-ins (tests/deploy/stand_in.py) are put first on PATH (`aws`) and passed as CHALICE (so `make
package` inside `make deploy` does not rebuild the zip: tests/deploy/conftest.py runs the real `make
package`). Each call is checked against the AWS CLI's real options, so a typo in a command line fails
here, not in a deploy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.deploy import stand_in

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox(tmp_path):
    """A copy of the files the targets use, so the real .chalice/config.json is never touched."""
    work = tmp_path / "repo"
    work.mkdir()
    for item in ("Makefile", "infra", "scripts", ".chalice", "requirements.txt", "requirements-dev.txt"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, work / item, ignore=shutil.ignore_patterns("deployed", "deployments"))
        else:
            shutil.copy(source, work / item)
    (work / ".venv").symlink_to(ROOT / ".venv")
    bin_dir = tmp_path / "bin"
    stand_in.install(bin_dir)
    record = tmp_path / "calls.jsonl"
    env = stand_in.environment(bin_dir, record, AWS_DEFAULT_REGION="eu-west-1", NETWORK_STACKS="ws-net")

    def make(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", "-C", str(work), f"CHALICE={bin_dir / 'chalice'}", *args],
            capture_output=True,
            text=True,
            env={**env, **extra_env},
            timeout=60,
        )

    def calls() -> list[list[str]]:
        return [call["argv"] for call in stand_in.records(record)]

    return work, make, calls


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_deploy_packages_then_uploads_and_deploys_one_stack(sandbox):
    work, make, calls = sandbox
    # WHEN
    result = make("deploy", "bucket=my-artifacts", "stack=WS-Prod")
    # THEN
    assert result.returncode == 0, result.stdout + result.stderr
    chalice, location, package, deploy = calls()
    assert chalice[:4] == ["chalice", "package", "--stage", "prod"], chalice
    assert _option(chalice, "--merge-template") == "build/merge-template.json"
    assert chalice[-1] == "out"
    assert json.loads((work / "build" / "merge-template.json").read_text())["Resources"]["ReplicationGroup"]

    # Lambda takes its code only from a bucket in its own region: checked before uploading
    assert location[:3] == ["aws", "s3api", "get-bucket-location"]
    assert _option(location, "--bucket") == "my-artifacts"
    assert package[:3] == ["aws", "cloudformation", "package"]
    assert _option(package, "--template-file") == "out/sam.json"
    assert _option(package, "--s3-bucket") == "my-artifacts"
    assert _option(package, "--s3-prefix") == "WS-Prod"  # make destroy bucket=... removes exactly this
    assert _option(package, "--output-template-file") == "out/packaged.yaml"

    assert deploy[:3] == ["aws", "cloudformation", "deploy"]
    assert _option(deploy, "--template-file") == "out/packaged.yaml"
    assert _option(deploy, "--stack-name") == "WS-Prod"
    caps = deploy[deploy.index("--capabilities") + 1 : deploy.index("--parameter-overrides")]
    assert caps == ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]  # IAM role; the SAM transform
    # The cache name is the stack name in lowercase (ElastiCache ids are lowercase).
    assert _option(deploy, "--parameter-overrides") == "CacheName=ws-prod"
    assert "--no-fail-on-empty-changeset" in deploy
    assert "make endpoint stack=WS-Prod" in result.stdout
    # the zip now carries the bytecode of the runtime's Python
    assert "__pycache__/app.cpython-" in str(zipfile.ZipFile(work / "out" / "deployment.zip").namelist())


def test_deploy_refuses_a_bucket_in_another_region(sandbox):
    _, make, calls = sandbox
    result = make("deploy", "bucket=far-away", "stack=s", BUCKET_REGION="us-west-2")
    assert result.returncode != 0
    assert "bucket far-away is in us-west-2, the stack goes to eu-west-1" in result.stderr
    assert [call[1:3] for call in calls() if call[0] == "aws"] == [["s3api", "get-bucket-location"]]


def test_deploy_takes_an_explicit_cache_name_and_more_parameters(sandbox):
    _, make, calls = sandbox
    result = make(
        "deploy",
        "bucket=b",
        "stack=s",
        "cache=my-cache",
        "params=NatGateways=2 CacheNodeType=cache.t4g.small",
    )
    assert result.returncode == 0, result.stderr
    deploy = calls()[-1]
    overrides = deploy[
        deploy.index("--parameter-overrides") + 1 : deploy.index("--no-fail-on-empty-changeset")
    ]
    assert overrides == ["CacheName=my-cache", "NatGateways=2", "CacheNodeType=cache.t4g.small"]


@pytest.mark.parametrize(
    ("args", "missing"),
    [(["stack=s"], "bucket is missing"), (["bucket=b"], "stack is missing"), ([], "bucket is missing")],
)
def test_deploy_refuses_without_bucket_or_stack(sandbox, args, missing):
    _, make, calls = sandbox
    result = make("deploy", *args)
    assert result.returncode != 0
    assert missing in result.stderr
    assert "make deploy bucket=" in result.stderr
    assert calls() == []  # nothing ran, not even the packaging


def test_network_deploys_the_network_stack_and_writes_the_chalice_config(sandbox):
    work, make, calls = sandbox
    result = make("network", "stack=ws-net")
    assert result.returncode == 0, result.stdout + result.stderr
    deploy, describe = calls()
    assert deploy[:3] == ["aws", "cloudformation", "deploy"]
    assert _option(deploy, "--template-file") == "infra/network.yaml"
    assert _option(deploy, "--stack-name") == "ws-net"
    overrides = deploy[
        deploy.index("--parameter-overrides") + 1 : deploy.index("--no-fail-on-empty-changeset")
    ]
    # the queue chalice deploy connects the worker to, by the name app.py gives it
    assert overrides == ["CacheName=ws-net", f"FanoutQueueName={_worker_queue_name()}"]
    assert "--capabilities" not in deploy  # the network stack creates no IAM resources
    assert describe == [
        "aws",
        "cloudformation",
        "describe-stacks",
        "--stack-name",
        "ws-net",
        "--output",
        "json",
    ]
    config = json.loads((work / ".chalice" / "config.json").read_text())
    assert config["stages"]["prod"]["environment_variables"]["REDIS_AUTH"] == "iam"
    assert (work / ".chalice" / "policy-prod.json").exists()
    assert "next: make chalice-deploy" in result.stdout


def _worker_queue_name() -> str:
    from app import app

    (source,) = [s for s in app.event_sources if s.name == "fanout_worker"]
    return source.queue


def test_chalice_deploy_asks_for_partial_batch_failures_on_the_workers_queue(sandbox):
    """chalice cannot: without them Lambda deletes a whole batch when the worker returns, failed jobs
    included."""
    _, make, calls = sandbox
    assert make("chalice-deploy", "worker_concurrency=7").returncode == 0
    (update,) = [call for call in calls() if call[1:3] == ["lambda", "update-event-source-mapping"]]
    assert _option(update, "--uuid") == "0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"  # chalice's record of it
    assert _option(update, "--function-response-types") == "ReportBatchItemFailures"
    assert _option(update, "--scaling-config") == "MaximumConcurrency=7"
    assert calls().index(update) > max(
        i for i, call in enumerate(calls()) if call[:2] == ["chalice", "deploy"]
    )


def test_network_refuses_without_stack(sandbox):
    _, make, calls = sandbox
    result = make("network")
    assert result.returncode != 0
    assert "stack is missing" in result.stderr
    assert calls() == []


def _aws(calls: list[list[str]]) -> list[list[str]]:
    return [call[1:] for call in calls if call[0] == "aws"]


@pytest.mark.parametrize(
    ("region", "location"),
    [("eu-west-1", ["--create-bucket-configuration", "LocationConstraint=eu-west-1"]), ("us-east-1", [])],
)
def test_bucket_is_created_in_the_region_of_the_stack(sandbox, region, location):
    _, make, calls = sandbox
    result = make("bucket", "bucket=code-bucket", AWS_DEFAULT_REGION=region)
    assert result.returncode == 0, result.stderr
    create, wait = _aws(calls())
    # us-east-1 refuses a LocationConstraint naming itself; every other region needs one
    assert create == [
        "s3api",
        "create-bucket",
        "--bucket",
        "code-bucket",
        "--region",
        region,
        *location,
        "--output",
        "json",
    ]
    assert wait == ["s3api", "wait", "bucket-exists", "--bucket", "code-bucket"]


def test_secret_is_a_random_securestring_never_on_a_command_line(sandbox):
    _, make, calls = sandbox
    assert make("secret", "stack=ws-broadcast").returncode == 0
    assert make("secret", "stack=ws-broadcast").returncode == 0
    (first,), (second,) = _aws(calls()[:1]), _aws(calls()[1:])
    assert first[:2] == ["ssm", "put-parameter"]
    # the stack's own name, the one its template derives: two stacks never share a secret
    assert _option(first, "--name") == "/ws-broadcast/ws-broadcast/jwt-secret"
    assert _option(first, "--type") == "SecureString"
    assert "--overwrite" not in first  # an existing secret is never replaced by accident
    # the value travels in a private file (gone once the call returns), not in the process list
    assert _option(first, "--value").startswith("file://")
    assert _option(first, "--value") != _option(second, "--value")


def test_endpoint_prints_the_urls_by_output_key_a_wscat_line_and_a_publish_line(sandbox):
    _, make, calls = sandbox
    result = make("endpoint", "stack=ws-broadcast")
    assert result.returncode == 0, result.stderr
    url, wscat, publish_url, publish = result.stdout.splitlines()
    assert url == "wss://abc123defg.execute-api.eu-west-1.amazonaws.com/api"
    assert wscat.startswith(f'node_modules/.bin/wscat -c "{url}"')
    assert publish_url == "https://rest456hij.execute-api.eu-west-1.amazonaws.com/api/publish"
    assert publish == f"make publish url={publish_url}"
    assert _aws(calls()) == [
        ["cloudformation", "describe-stacks", "--stack-name", "ws-broadcast", "--output", "json"]
    ]


def test_destroy_deletes_the_one_stack_waits_then_removes_its_code(sandbox):
    _, make, calls = sandbox
    result = make("destroy", "stack=ws-broadcast", "bucket=code-bucket")
    assert result.returncode == 0, result.stderr
    assert _aws(calls()) == [
        ["cloudformation", "describe-stacks", "--stack-name", "ws-broadcast", "--output", "json"],
        ["cloudformation", "delete-stack", "--stack-name", "ws-broadcast"],
        ["cloudformation", "wait", "stack-delete-complete", "--stack-name", "ws-broadcast"],
        ["s3", "rm", "s3://code-bucket/ws-broadcast/", "--recursive"],  # what make deploy uploaded
    ]
    assert "ws-broadcast is deleted" in result.stdout


def test_destroy_removes_the_chalice_app_and_waits_for_its_network_interfaces_before_the_network(sandbox):
    work, make, calls = sandbox
    assert make("network", "stack=ws-net").returncode == 0
    assert make("chalice-deploy").returncode == 0
    done = len(calls())
    # the network path's endpoints come from chalice's record
    assert make("endpoint", "stack=ws-net").stdout.splitlines()[2] == (
        "https://rest456hij.execute-api.eu-west-1.amazonaws.com/api/publish"
    )
    done = len(calls())
    result = make("destroy", "stack=ws-net", "secret=/ws-broadcast/prod/jwt-secret")
    assert result.returncode == 0, result.stderr
    steps = calls()[done:]
    assert steps == [
        ["aws", "cloudformation", "describe-stacks", "--stack-name", "ws-net", "--output", "json"],
        ["chalice", "delete", "--stage", "prod"],
        *(
            ["aws", "logs", "delete-log-group", "--log-group-name", f"/aws/lambda/ws-broadcast-prod-{name}"]
            for name in ("websocket_connect", "websocket_message", "websocket_disconnect")
        ),
        # api_handler's function is <app>-<stage>
        ["aws", "logs", "delete-log-group", "--log-group-name", "/aws/lambda/ws-broadcast-prod"],
        ["aws", "logs", "delete-log-group", "--log-group-name", "/aws/lambda/ws-broadcast-prod-fanout_worker"],
        # chalice delete removed the worker's event source mapping; the queues go with the network stack.
        # the functions' security group must have no network interface left before its stack goes
        ["aws", "ec2", "describe-network-interfaces", "--filters", "Name=group-id,Values=sg-0f60718293a4b5c63",
         "--output", "json"],
        ["aws", "cloudformation", "delete-stack", "--stack-name", "ws-net"],
        ["aws", "cloudformation", "wait", "stack-delete-complete", "--stack-name", "ws-net"],
        ["aws", "ssm", "delete-parameter", "--name", "/ws-broadcast/prod/jwt-secret"],
    ]  # fmt: skip
    assert not (work / ".chalice" / "deployed" / "prod.json").exists()


def test_destroy_keeps_the_secret_unless_it_is_named(sandbox):
    _, make, calls = sandbox
    assert make("destroy", "stack=ws-broadcast").returncode == 0
    assert not [call for call in _aws(calls()) if call[0] == "ssm"]


def test_logs_tails_every_function_of_the_one_stack_each_line_labelled(sandbox):
    _, make, calls = sandbox
    # WHEN
    result = make("logs", "stack=ws-broadcast")
    # THEN the stack's functions are found by their type, and each log group is tailed once
    assert result.returncode == 0, result.stderr
    describe, resources, *tails = _aws(calls())
    assert describe[:2] == ["cloudformation", "describe-stacks"]  # the one stack: it has the endpoint output
    assert resources == ["cloudformation", "describe-stack-resources", "--stack-name", "ws-broadcast",
                         "--output", "json"]  # fmt: skip
    functions = ("APIHandler", "FanoutWorker", "WebsocketConnect", "WebsocketDisconnect", "WebsocketMessage")
    assert sorted(tails) == [
        ["logs", "tail", f"/aws/lambda/ws-broadcast-{f}-AbCdEf012345", "--since", "10m", "--format", "short"]
        for f in functions
    ]
    # every line says which function wrote it
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(functions)
    for function in functions:
        mine = [line for line in lines if line.startswith(f"{function:<19} | ")]
        assert [line.split(" | ", 1)[1][:22] for line in mine] == [
            '2026-12-03T08:00:01 {"',
            '2026-12-03T08:00:02 {"',
        ]
        assert all(f"ws-broadcast-{function}-AbCdEf012345" in line for line in mine)


def test_logs_follow_and_since_reach_every_tail_of_the_chalice_apps_functions(sandbox):
    _, make, calls = sandbox
    assert make("network", "stack=ws-net").returncode == 0
    assert make("chalice-deploy").returncode == 0
    done = len(calls())
    result = make("logs", "stack=ws-net", "follow=1", "since=2h")
    assert result.returncode == 0, result.stderr
    steps = _aws(calls()[done:])
    # a network stack: the functions come from chalice's record of its deploy (no stack resources)
    assert steps[0][:2] == ["cloudformation", "describe-stacks"]
    groups = sorted(call[2] for call in steps[1:])
    assert groups == sorted(
        f"/aws/lambda/ws-broadcast-prod{suffix}"
        for suffix in (
            "-websocket_connect",
            "-websocket_message",
            "-websocket_disconnect",
            "",
            "-fanout_worker",
        )
    )
    for call in steps[1:]:
        assert call[:2] == ["logs", "tail"]
        assert (_option(call, "--since"), call[-1]) == ("2h", "--follow")
    assert "websocket_connect    | " in result.stdout


def test_logs_says_which_group_it_could_not_tail_and_fails(sandbox):
    _, make, _ = sandbox
    result = make(
        "logs", "stack=ws-broadcast", MISSING_LOG_GROUP="/aws/lambda/ws-broadcast-APIHandler-AbCdEf012345"
    )
    assert result.returncode != 0
    assert "APIHandler          | An error occurred (ResourceNotFoundException)" in result.stdout
    assert "WebsocketMessage    | 2026-12-03T08:00:01" in result.stdout  # the others are still tailed


@pytest.mark.parametrize("target", ["destroy", "endpoint", "bucket", "secret", "logs"])
def test_targets_refuse_without_their_argument(sandbox, target):
    _, make, calls = sandbox
    result = make(target)
    assert result.returncode != 0
    assert "is missing" in result.stderr
    assert calls() == []


# The options of the AWS CLI subcommands we call, copied from `aws cloudformation <command> help`
# (aws-cli 1.45.11 on the development machine; v2 has the same ones). The CLI itself is not a test
# dependency (no awscli release on PyPI matches our pinned botocore), so the list is kept here.
AWS_CLI_OPTIONS = {
    ("cloudformation", "package"): {
        "--template-file", "--s3-bucket", "--s3-prefix", "--kms-key-id", "--output-template-file",
        "--use-json", "--force-upload", "--metadata",
    },
    ("cloudformation", "deploy"): {
        "--template-file", "--stack-name", "--s3-bucket", "--force-upload", "--s3-prefix", "--kms-key-id",
        "--parameter-overrides", "--capabilities", "--no-execute-changeset", "--disable-rollback",
        "--no-disable-rollback", "--role-arn", "--notification-arns", "--fail-on-empty-changeset",
        "--no-fail-on-empty-changeset", "--tags",
    },
    ("cloudformation", "describe-stacks"): {"--stack-name", "--max-items", "--starting-token"},
    ("cloudformation", "describe-stack-resources"): {"--stack-name", "--logical-resource-id",
                                                     "--physical-resource-id"},
    ("cloudformation", "delete-stack"): {"--stack-name", "--retain-resources", "--role-arn",
                                         "--client-request-token", "--deletion-mode"},
    ("cloudformation", "wait"): {"--stack-name"},
    ("s3api", "create-bucket"): {"--bucket", "--create-bucket-configuration", "--acl", "--object-lock-enabled-for-bucket",
                                 "--object-ownership"},
    ("s3api", "wait"): {"--bucket", "--expected-bucket-owner"},
    ("s3api", "get-bucket-location"): {"--bucket", "--expected-bucket-owner"},
    ("s3", "rm"): {"--recursive", "--dryrun", "--quiet", "--include", "--exclude"},
    ("ssm", "put-parameter"): {"--name", "--value", "--type", "--description", "--overwrite", "--key-id", "--tier"},
    ("ssm", "delete-parameter"): {"--name"},
    ("logs", "delete-log-group"): {"--log-group-name"},
    ("logs", "create-log-group"): {"--log-group-name", "--kms-key-id", "--tags", "--log-group-class"},
    ("logs", "put-retention-policy"): {"--log-group-name", "--retention-in-days"},
    # AWS CLI v2 only (`aws logs tail help`)
    ("logs", "tail"): {"--follow", "--format", "--since", "--filter-pattern", "--log-stream-names",
                       "--log-stream-name-prefix"},
    ("ec2", "describe-network-interfaces"): {"--filters", "--network-interface-ids", "--dry-run"},
    ("lambda", "update-event-source-mapping"): {
        "--uuid", "--function-name", "--enabled", "--no-enabled", "--batch-size", "--filter-criteria",
        "--maximum-batching-window-in-seconds", "--destination-config", "--maximum-record-age-in-seconds",
        "--bisect-batch-on-function-error", "--no-bisect-batch-on-function-error", "--maximum-retry-attempts",
        "--parallelization-factor", "--source-access-configurations", "--tumbling-window-in-seconds",
        "--function-response-types", "--scaling-config", "--kms-key-arn",
    },
}  # fmt: skip
GLOBAL_OPTIONS = {"--output", "--region", "--profile", "--query", "--no-paginate", "--debug"}


@pytest.mark.parametrize(
    "target",
    [
        ("deploy", "bucket=b", "stack=s"),
        ("network", "stack=ws-net"),
        ("chalice-config", "stack=ws-net"),
        ("bucket", "bucket=b"),
        ("secret", "stack=s"),
        ("endpoint", "stack=s"),
        ("destroy", "stack=ws-net", "bucket=b", "secret=/x"),
        ("chalice-deploy",),
        ("logs", "stack=s", "follow=1", "since=1h"),
    ],
)
def test_every_aws_call_uses_only_options_the_cli_has(sandbox, target):
    _, make, calls = sandbox
    assert make(*target).returncode == 0
    aws_calls = [call[1:] for call in calls() if call[0] == "aws"]
    assert aws_calls
    for call in aws_calls:
        known = AWS_CLI_OPTIONS[tuple(call[:2])] | GLOBAL_OPTIONS
        unknown = [arg for arg in call if arg.startswith("--") and arg not in known]
        assert not unknown, f"aws {' '.join(call[:2])} has no option {unknown}"
