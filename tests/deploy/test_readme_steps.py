"""infra/README.md's deploy steps, run as written, in order, from a clean clone, against stand-in `aws`
and `chalice` (tests/deploy/stand_in.py): every step works on a fresh checkout, and every AWS call
reaches the account and region exported once at the top.

The clone is of the worktree's HEAD plus its uncommitted changes to tracked files (`git diff HEAD`),
so the test sees what a reader of the repository would get.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy import stand_in
from tests.deploy.conftest import REPO

BLOCK = re.compile(r"<!-- deploy-steps: (?P<name>[\w-]+) [^>]*-->\n```bash\n(?P<body>.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer((REPO / "infra" / "README.md").read_text())}


@pytest.fixture
def clone(tmp_path) -> Path:
    work = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True)
    changes = subprocess.run(
        ["git", "-C", str(REPO), "diff", "HEAD", "--binary"], capture_output=True, check=True
    )
    if changes.stdout:
        subprocess.run(["git", "-C", str(work), "apply"], input=changes.stdout, check=True)
    (work / ".venv").symlink_to(REPO / ".venv")  # the pinned tools, as `scripts/bootstrap python` makes them
    return work


def run_steps(clone: Path, tmp_path: Path, *blocks: str) -> list[dict]:
    bin_dir = tmp_path / "bin"
    stand_in.install(bin_dir)
    record = tmp_path / "calls.jsonl"
    env = stand_in.environment(bin_dir, record, CHALICE=str(bin_dir / "chalice"), NETWORK_STACKS="ws-net")
    script = "set -euo pipefail\n" + "".join(readme_blocks()[name] for name in blocks)
    result = subprocess.run(
        ["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return stand_in.records(record), result.stdout


def _steps(calls: list[dict]) -> list[tuple[str, ...]]:
    return [tuple(call["argv"][:3]) for call in calls]


def test_the_one_stack_path_from_bucket_to_teardown(clone, tmp_path):
    calls, out = run_steps(clone, tmp_path, "one-stack", "one-stack-teardown")
    assert _steps(calls) == [
        ("aws", "s3api", "create-bucket"),
        ("aws", "s3api", "wait"),
        ("aws", "ssm", "put-parameter"),
        ("chalice", "package", "--stage"),
        ("aws", "s3api", "get-bucket-location"),
        ("aws", "cloudformation", "package"),
        ("aws", "cloudformation", "deploy"),
        ("aws", "cloudformation", "describe-stacks"),  # make endpoint
        ("aws", "cloudformation", "describe-stacks"),  # make destroy
        ("aws", "cloudformation", "delete-stack"),
        ("aws", "cloudformation", "wait"),
        ("aws", "s3", "rm"),
    ]
    # one `export` at the top reached every step: the same account and region throughout
    assert {(call["profile"], call["region"]) for call in calls} == {("prod", "eu-west-1")}
    assert "wss://abc123defg.execute-api.eu-west-1.amazonaws.com/api" in out
    assert (clone / "out" / "deployment.zip").exists()


def test_the_network_and_chalice_path_from_secret_to_teardown(clone, tmp_path):
    calls, out = run_steps(clone, tmp_path, "network-and-chalice", "network-and-chalice-teardown")
    assert _steps(calls) == [
        ("aws", "ssm", "put-parameter"),
        ("aws", "cloudformation", "deploy"),
        ("aws", "cloudformation", "describe-stacks"),  # make chalice-config, inside make network
        ("chalice", "deploy", "--stage"),
        # the WebSocket API's id exists now: api_handler gets it, the policy narrows to it, deployed again
        ("chalice", "deploy", "--stage"),
        ("aws", "logs", "create-log-group"),  # api_handler's log group, with its retention
        ("aws", "logs", "put-retention-policy"),
        ("aws", "lambda", "update-event-source-mapping"),  # the worker's partial batch failures
        ("aws", "cloudformation", "describe-stacks"),  # make endpoint
        ("aws", "cloudformation", "describe-stacks"),  # make destroy
        ("chalice", "delete", "--stage"),
        ("aws", "logs", "delete-log-group"),
        ("aws", "logs", "delete-log-group"),  # five functions' log groups
        ("aws", "logs", "delete-log-group"),
        ("aws", "logs", "delete-log-group"),
        ("aws", "logs", "delete-log-group"),
        ("aws", "ec2", "describe-network-interfaces"),
        ("aws", "cloudformation", "delete-stack"),
        ("aws", "cloudformation", "wait"),
        ("aws", "ssm", "delete-parameter"),
    ]
    assert {(call["profile"], call["region"]) for call in calls} == {("prod", "eu-west-1")}
    assert "wss://abc123defg.execute-api.eu-west-1.amazonaws.com/api/" in out  # from chalice's record
    assert "https://rest456hij.execute-api.eu-west-1.amazonaws.com/api/publish" in out
    prod = json.loads((clone / ".chalice" / "config.json").read_text())["stages"]["prod"]
    assert prod["lambda_functions"]["api_handler"]["environment_variables"] == {
        "FANOUT_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/ws-broadcast-fanout",
        "WEBSOCKET_API_ID": "abc123defg",
        "WEBSOCKET_API_STAGE": "api",
    }
