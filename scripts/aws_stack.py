#!/usr/bin/env python3
"""The deploy steps around the templates, through the AWS CLI (`make bucket|secret|endpoint|destroy`).

    scripts/aws_stack.py bucket BUCKET              create the code bucket in the current region
    scripts/aws_stack.py check-bucket BUCKET        fail unless BUCKET is in the current region
    scripts/aws_stack.py secret NAME                a random HS256 secret as an SSM SecureString
    scripts/aws_stack.py endpoint STACK [--stage S] the wss:// and POST /publish URLs, and first commands
    scripts/aws_stack.py chalice-deploy [--stage S] [--worker-max-concurrency N]
                                                    chalice deploy, then again with the WebSocket API's id
    scripts/aws_stack.py destroy STACK [--stage S] [--bucket B] [--secret NAME]
    scripts/aws_stack.py logs STACK [--stage S] [--since 10m] [--follow]
                                                    `aws logs tail` of every function's log group

Every call goes to the `aws` named by $AWS (default `aws`) with the caller's environment, so
AWS_PROFILE and AWS_DEFAULT_REGION choose the account and region of every step alike.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from write_chalice_config import record_deployed

ENDPOINT_OUTPUT = "WebsocketConnectEndpointURL"
PUBLISH_OUTPUT = "PublishURL"
# Lambda releases a VPC function's network interfaces some minutes after the function is deleted;
# until then its security group and subnets cannot be deleted.
ENI_POLL_SECONDS = 30
ENI_WAIT_SECONDS = 45 * 60


class StepError(RuntimeError):
    pass


def aws(*args: str, parse: bool = True, check: bool = True):
    """Run one AWS CLI command; its JSON answer (``parse``) or its completed process."""
    command = [os.environ.get("AWS", "aws"), *args]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise StepError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    if not parse:
        return result
    return json.loads(result.stdout or "null")


def region() -> str:
    """The region the CLI will use: AWS_REGION, AWS_DEFAULT_REGION, then the profile's setting."""
    found = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not found:
        found = aws("configure", "get", "region", parse=False, check=False).stdout.strip()
    if not found:
        raise StepError(
            "no region: export AWS_DEFAULT_REGION=<region> (and AWS_PROFILE=<profile>) before every step"
        )
    return found


def create_bucket(bucket: str) -> None:
    where = region()
    # us-east-1 is the one region that refuses a LocationConstraint naming itself.
    location = (
        [] if where == "us-east-1" else ["--create-bucket-configuration", f"LocationConstraint={where}"]
    )
    aws("s3api", "create-bucket", "--bucket", bucket, "--region", where, *location, "--output", "json")
    aws("s3api", "wait", "bucket-exists", "--bucket", bucket, parse=False)
    print(f"bucket {bucket} is ready in {where}")


def check_bucket(bucket: str) -> None:
    """Lambda takes its code only from a bucket in the function's region: say so before uploading."""
    answer = aws("s3api", "get-bucket-location", "--bucket", bucket, "--output", "json")
    located = answer.get("LocationConstraint") or "us-east-1"  # null means us-east-1
    if located != region():
        raise StepError(
            f"bucket {bucket} is in {located}, the stack goes to {region()}: Lambda needs the code in the "
            f"stack's region (make bucket bucket=<new name>, or AWS_DEFAULT_REGION={located})"
        )


def create_secret(name: str) -> None:
    """Put a random 64-byte secret in a SecureString (encrypted with the AWS-managed key aws/ssm).
    The value goes through a private file, never a command line other users could read."""
    with tempfile.NamedTemporaryFile("w", suffix=".secret") as value:
        value.write(secrets.token_urlsafe(64))
        value.flush()
        aws(
            "ssm",
            "put-parameter",
            "--name",
            name,
            "--type",
            "SecureString",
            "--value",
            f"file://{value.name}",
            "--output",
            "json",
        )
    print(f"SSM parameter {name} holds a new HS256 secret (SecureString); it never leaves SSM")


def describe(stack: str) -> dict:
    return aws("cloudformation", "describe-stacks", "--stack-name", stack, "--output", "json")["Stacks"][0]


def outputs(stack: dict) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deployed_state(stage: str) -> dict | None:
    path = Path(".chalice") / "deployed" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def endpoints(stack: str, stage: str) -> tuple[str, str]:
    """The wss:// URL and POST /publish's: the stack's outputs by key (one stack), else chalice's
    record (network stack)."""
    found = outputs(describe(stack))
    if found.get(ENDPOINT_OUTPUT) and found.get(PUBLISH_OUTPUT):
        return found[ENDPOINT_OUTPUT], found[PUBLISH_OUTPUT]
    recorded = {
        key: value for r in (deployed_state(stage) or {}).get("resources", []) for key, value in r.items()
    }
    if recorded.get("websocket_api_url") and recorded.get("rest_api_url"):
        return recorded["websocket_api_url"], recorded["rest_api_url"] + "publish"
    raise StepError(
        f"stack {stack} has no outputs {ENDPOINT_OUTPUT} and {PUBLISH_OUTPUT}, and .chalice/deployed/"
        f"{stage}.json no websocket_api_url and rest_api_url: deploy first (make deploy, or make network "
        "then make chalice-deploy)"
    )


def chalice_deploy(stage: str, log_retention_days: int, worker_max_concurrency: int) -> None:
    """`chalice deploy`; the WebSocket API's id exists only then, so api_handler (POST /publish) gets it
    and the policy is narrowed to that API, applied by a second deploy (only when they changed). chalice names api_handler's log group after a function name it does not use
    (chalice 1.34), so the group Lambda writes to gets its retention here. chalice cannot ask for
    partial batch failures on the worker's event source mapping: without them Lambda deletes a whole
    batch whenever the worker returns, failed jobs included; so they are set here, with its maximum
    concurrency (chalice's later updates of the mapping send neither, so both stay)."""
    chalice = os.environ.get("CHALICE", "chalice")
    for attempt in range(2):
        print(f"+ {chalice} deploy --stage {stage}", file=sys.stderr, flush=True)
        subprocess.run([chalice, "deploy", "--stage", stage], check=True)
        state = Path(".chalice") / "deployed" / f"{stage}.json"
        if attempt or not record_deployed(Path(".chalice") / "config.json", state, stage):
            break
    handler = next(r for r in deployed_state(stage)["resources"] if r.get("name") == "api_handler")
    group = "/aws/lambda/" + handler["lambda_arn"].split(":")[-1]
    aws("logs", "create-log-group", "--log-group-name", group, parse=False, check=False)  # may exist
    aws(
        "logs",
        "put-retention-policy",
        "--log-group-name",
        group,
        "--retention-in-days",
        str(log_retention_days),
        parse=False,
    )
    for mapping in (r for r in deployed_state(stage)["resources"] if r.get("resource_type") == "sqs_event"):
        aws(
            "lambda",
            "update-event-source-mapping",
            "--uuid",
            mapping["event_uuid"],
            "--function-response-types",
            "ReportBatchItemFailures",
            "--scaling-config",
            f"MaximumConcurrency={worker_max_concurrency}",
            "--output",
            "json",
        )


def wait_for_network_interfaces(security_group: str) -> None:
    deadline = time.monotonic() + ENI_WAIT_SECONDS
    while True:
        answer = aws(
            "ec2",
            "describe-network-interfaces",
            "--filters",
            f"Name=group-id,Values={security_group}",
            "--output",
            "json",
        )
        left = len(answer["NetworkInterfaces"])
        if not left:
            return
        if time.monotonic() > deadline:
            raise StepError(
                f"{left} network interfaces still use {security_group}: run make destroy again later"
            )
        print(f"waiting for Lambda to release {left} network interfaces of {security_group}", flush=True)
        time.sleep(ENI_POLL_SECONDS)


def chalice_functions(state: dict) -> dict[str, str]:
    """Function names by chalice's resource name, from its record of a deploy."""
    return {
        r["name"]: r["lambda_arn"].split(":")[-1]
        for r in state.get("resources", [])
        if r.get("resource_type") == "lambda_function"  # an SQS event source names its function too
    }


def stack_functions(stack: str, stage: str) -> dict[str, str]:
    """The deployed functions' names by a short label: the one stack's own functions (by logical id),
    else, for a network stack, the chalice app's (chalice's record of its deploy)."""
    if ENDPOINT_OUTPUT not in outputs(describe(stack)):
        state = deployed_state(stage)
        if state is None:
            raise StepError(
                f"{stack} is a network stack and .chalice/deployed/{stage}.json does not exist: "
                "make chalice-deploy first (or pass --stage)"
            )
        return chalice_functions(state)
    answer = aws("cloudformation", "describe-stack-resources", "--stack-name", stack, "--output", "json")
    return {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in answer["StackResources"]
        if r["ResourceType"] == "AWS::Lambda::Function"
    }


def tail_logs(functions: dict[str, str], since: str, follow: bool) -> int:
    """`aws logs tail` of each function's log group, side by side (with --follow none ever ends), each
    line prefixed with its function's label; the first failing tail's exit status, else 0."""
    tails = {}
    for label, name in sorted(functions.items()):
        argv = [os.environ.get("AWS", "aws"), "logs", "tail", f"/aws/lambda/{name}", "--since", since]
        argv += ["--format", "short", *(["--follow"] if follow else [])]
        print("+ " + " ".join(argv), file=sys.stderr, flush=True)
        tails[label] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    width = max(map(len, tails), default=0)
    lock = threading.Lock()

    def relay(label: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with lock:
                print(f"{label:<{width}} | {line}", end="", flush=True)

    relays = [threading.Thread(target=relay, args=item, daemon=True) for item in tails.items()]
    for thread in relays:
        thread.start()
    try:
        for thread in relays:
            thread.join()
    except KeyboardInterrupt:  # the way out of --follow
        for process in tails.values():
            process.terminate()
        return 0
    return next((code for code in (p.wait() for p in tails.values()) if code), 0)


def delete_chalice_app(stage: str) -> None:
    """`chalice delete`, then the functions' log groups in case chalice did not create them."""
    state = deployed_state(stage)
    if state is None:
        return
    functions = list(chalice_functions(state).values())
    chalice = os.environ.get("CHALICE", "chalice")
    print(f"+ {chalice} delete --stage {stage}", file=sys.stderr, flush=True)
    subprocess.run([chalice, "delete", "--stage", stage], check=True)
    for name in functions:
        aws("logs", "delete-log-group", "--log-group-name", f"/aws/lambda/{name}", parse=False, check=False)


def destroy(stack: str, stage: str, bucket: str | None, secret: str | None) -> None:
    """Everything a deploy made, in order: the chalice app (network path) and what Lambda leaves
    behind, then the stack, waiting until it is gone; the code under s3://BUCKET/STACK/ and the
    secret only when named."""
    found = describe(stack)
    if ENDPOINT_OUTPUT not in outputs(found):  # a network stack: the chalice app uses it
        delete_chalice_app(stage)
        wait_for_network_interfaces(outputs(found)["FunctionSecurityGroupId"])
    aws("cloudformation", "delete-stack", "--stack-name", stack, parse=False)
    print(f"waiting for {stack} to be deleted (a VPC's network interfaces can take 20 minutes)", flush=True)
    waited = aws(
        "cloudformation", "wait", "stack-delete-complete", "--stack-name", stack, parse=False, check=False
    )
    if waited.returncode != 0:
        raise StepError(
            f"{stack} was not deleted: {waited.stderr.strip()}. See why with: aws cloudformation "
            f"describe-stack-events --stack-name {stack}; then run make destroy again"
        )
    if bucket:
        aws("s3", "rm", f"s3://{bucket}/{stack}/", "--recursive", parse=False)
    if secret:
        aws("ssm", "delete-parameter", "--name", secret, parse=False)
    print(f"{stack} is deleted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("bucket").add_argument("bucket")
    steps.add_parser("check-bucket").add_argument("bucket")
    steps.add_parser("secret").add_argument("name")
    deploy = steps.add_parser("chalice-deploy")
    deploy.add_argument("--stage", default="prod")
    deploy.add_argument("--log-retention-days", type=int, default=30)
    deploy.add_argument("--worker-max-concurrency", type=int, default=10, help="2 at least (AWS's floor)")
    for name in ("endpoint", "destroy", "logs"):
        step = steps.add_parser(name)
        step.add_argument("stack")
        step.add_argument("--stage", default="prod")
    steps.choices["logs"].add_argument(
        "--since", default="10m", help="as aws logs tail takes it: 10m, 2h, ..."
    )
    steps.choices["logs"].add_argument("--follow", action="store_true")
    steps.choices["destroy"].add_argument("--bucket")
    steps.choices["destroy"].add_argument("--secret")
    args = parser.parse_args(argv)
    try:
        if args.step == "bucket":
            create_bucket(args.bucket)
        elif args.step == "check-bucket":
            check_bucket(args.bucket)
        elif args.step == "secret":
            create_secret(args.name)
        elif args.step == "endpoint":
            url, publish_url = endpoints(args.stack, args.stage)
            print(url)
            print(f'node_modules/.bin/wscat -c "{url}" -H "Authorization: Bearer $TOKEN"')
            print(publish_url)
            print(f"make publish url={publish_url}")
        elif args.step == "chalice-deploy":
            chalice_deploy(args.stage, args.log_retention_days, args.worker_max_concurrency)
        elif args.step == "logs":
            return tail_logs(stack_functions(args.stack, args.stage), args.since, args.follow)
        else:
            destroy(args.stack, args.stage, args.bucket, args.secret)
    except (StepError, subprocess.CalledProcessError) as error:
        print(f"aws_stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
