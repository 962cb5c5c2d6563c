"""The deploy Make targets, run for real with stand-ins for `aws` and `chalice` that record their arguments.

The stand-ins are put first on PATH (`aws`) and passed as CHALICE (so `make package` inside `make deploy`
does not rebuild the zip: tests/deploy/test_infra_package.py runs the real `chalice package`). Each call
is checked against the AWS CLI's real options, so a typo in a command line fails here, not in a deploy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "describe-stacks-network.json"

# A stand-in that appends its argv to $RECORD (one JSON list per line) and fakes what the caller reads.
STUB = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["RECORD"], "a") as record:
        record.write(json.dumps([os.path.basename(sys.argv[0]), *args]) + "\\n")
    if args[:2] == ["cloudformation", "describe-stacks"]:
        sys.stdout.write(open(os.environ["DESCRIBE_STACKS"]).read())
    if args[:1] == ["package"]:  # chalice package ... OUT
        os.makedirs(args[-1], exist_ok=True)
        open(os.path.join(args[-1], "sam.json"), "w").write("{{}}")
    """
)


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
    bin_dir.mkdir()
    for name in ("aws", "chalice"):
        stub = bin_dir / name
        stub.write_text(STUB.format(python=sys.executable))
        stub.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RECORD": str(record),
        "DESCRIBE_STACKS": str(FIXTURE),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", "-C", str(work), f"CHALICE={bin_dir / 'chalice'}", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    def calls() -> list[list[str]]:
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    return work, make, calls


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_deploy_packages_then_uploads_and_deploys_one_stack(sandbox):
    work, make, calls = sandbox
    # WHEN
    result = make("deploy", "bucket=my-artifacts", "stack=WS-Prod")
    # THEN
    assert result.returncode == 0, result.stdout + result.stderr
    chalice, package, deploy = calls()
    assert chalice[:4] == ["chalice", "package", "--stage", "prod"], chalice
    assert _option(chalice, "--merge-template") == "build/merge-template.json"
    assert chalice[-1] == "out"
    assert json.loads((work / "build" / "merge-template.json").read_text())["Resources"]["ReplicationGroup"]

    assert package[:3] == ["aws", "cloudformation", "package"]
    assert _option(package, "--template-file") == "out/sam.json"
    assert _option(package, "--s3-bucket") == "my-artifacts"
    assert _option(package, "--output-template-file") == "out/packaged.yaml"

    assert deploy[:3] == ["aws", "cloudformation", "deploy"]
    assert _option(deploy, "--template-file") == "out/packaged.yaml"
    assert _option(deploy, "--stack-name") == "WS-Prod"
    caps = deploy[deploy.index("--capabilities") + 1 : deploy.index("--parameter-overrides")]
    assert caps == ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]  # IAM role; the SAM transform
    # The cache name is the stack name in lowercase (ElastiCache ids are lowercase).
    assert _option(deploy, "--parameter-overrides") == "CacheName=ws-prod"
    assert "--no-fail-on-empty-changeset" in deploy
    assert "WebsocketConnectEndpointURL" in result.stdout


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
    assert _option(deploy, "--parameter-overrides") == "CacheName=ws-net"
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
    assert "chalice deploy --stage prod" in result.stdout


def test_network_refuses_without_stack(sandbox):
    _, make, calls = sandbox
    result = make("network")
    assert result.returncode != 0
    assert "stack is missing" in result.stderr
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
}  # fmt: skip
GLOBAL_OPTIONS = {"--output", "--region", "--profile", "--query", "--no-paginate", "--debug"}


@pytest.mark.parametrize(
    "target", [("deploy", "bucket=b", "stack=s"), ("network", "stack=s"), ("chalice-config", "stack=s")]
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
