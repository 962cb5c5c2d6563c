"""Stand-ins for `aws` and `chalice` that record their command lines and answer what the Make targets read.

Each call appends one JSON line to $RECORD: {"argv": [name, *args], "profile": ..., "region": ...},
so a test sees both the command and the account and region it would have reached. Answers:
- `cloudformation describe-stacks --stack-name S`: the recorded network stack's answer (renamed S)
  when S is in $NETWORK_STACKS (comma-separated), else a one-stack answer with the endpoint output;
- `s3api get-bucket-location`: $BUCKET_REGION, or the caller's region;
- `ec2 describe-network-interfaces`: none left;
- `cloudformation describe-stack-resources`: the one stack's five functions (and a queue);
- `logs tail GROUP`: two lines naming GROUP, or, when GROUP is $MISSING_LOG_GROUP, the CLI's error and
  exit status 254;
- `chalice package ... OUT`: a template naming this Python's runtime, and a zip with app.py;
- `chalice deploy --stage S`: .chalice/deployed/S.json as chalice writes it (both APIs, five functions, the
  worker's SQS event source); `chalice delete`: removes it.
Everything else answers nothing and succeeds.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
ENDPOINT = "wss://abc123defg.execute-api.{region}.amazonaws.com/api"
PUBLISH = "https://rest456hij.execute-api.{region}.amazonaws.com/api/publish"

_SCRIPT = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, zipfile
    name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    with open(os.environ["RECORD"], "a") as record:
        record.write(json.dumps({{"argv": [name, *args], "profile": os.environ.get("AWS_PROFILE"), "region": region}}) + "\\n")
    def option(flag):
        return args[args.index(flag) + 1]
    if name == "aws" and args[:2] == ["cloudformation", "describe-stacks"]:
        stack = option("--stack-name")
        if stack in os.environ.get("NETWORK_STACKS", "").split(","):
            answer = json.load(open({network!r}))
            answer["Stacks"][0]["StackName"] = stack
        else:
            answer = {{"Stacks": [{{"StackName": stack, "StackStatus": "CREATE_COMPLETE", "Outputs": [
                {{"OutputKey": "WebsocketAPIId", "OutputValue": "abc123defg"}},
                {{"OutputKey": "WebsocketConnectEndpointURL", "OutputValue": {endpoint!r}.format(region=region)}},
                {{"OutputKey": "PublishURL", "OutputValue": {publish!r}.format(region=region)}},
            ]}}]}}
        print(json.dumps(answer))
    elif name == "aws" and args[:2] == ["s3api", "get-bucket-location"]:
        located = os.environ.get("BUCKET_REGION", region)
        print(json.dumps({{"LocationConstraint": None if located == "us-east-1" else located}}))
    elif name == "aws" and args[:2] == ["ec2", "describe-network-interfaces"]:
        print(json.dumps({{"NetworkInterfaces": []}}))
    elif name == "aws" and args[:2] == ["cloudformation", "describe-stack-resources"]:
        stack = option("--stack-name")
        functions = [{{"LogicalResourceId": f, "PhysicalResourceId": "%s-%s-AbCdEf012345" % (stack, f),
                       "ResourceType": "AWS::Lambda::Function"}}
                     for f in ("WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect", "APIHandler", "FanoutWorker")]
        queue = {{"LogicalResourceId": "FanoutQueue", "PhysicalResourceId": "https://sqs/q", "ResourceType": "AWS::SQS::Queue"}}
        print(json.dumps({{"StackResources": [*functions, queue]}}))
    elif name == "aws" and args[:2] == ["logs", "tail"]:
        group = args[2]
        if group == os.environ.get("MISSING_LOG_GROUP"):
            print("An error occurred (ResourceNotFoundException) when calling the FilterLogEvents operation: "
                  "The specified log group does not exist.", file=sys.stderr)
            sys.exit(254)
        for n in (1, 2):
            print('2026-12-03T08:00:0%d {{"message": "line %d of %s"}}' % (n, n, group))
    elif name == "aws" and args[:1] in (["s3api"], ["ssm"]):
        print("{{}}")
    elif name == "chalice" and args[:1] == ["package"]:
        out = args[-1]
        os.makedirs(out, exist_ok=True)
        runtime = "python%d.%d" % sys.version_info[:2]
        function = {{"Type": "AWS::Serverless::Function", "Properties": {{"Runtime": runtime}}}}
        json.dump({{"Resources": {{"WebsocketConnect": function}}}}, open(os.path.join(out, "sam.json"), "w"))
        with zipfile.ZipFile(os.path.join(out, "deployment.zip"), "w") as archive:
            archive.writestr("app.py", "import json\\n")
    elif name == "chalice" and args[:1] == ["deploy"]:
        stage = option("--stage")
        os.makedirs(".chalice/deployed", exist_ok=True)
        arn = "arn:aws:lambda:%s:123456789012:function:ws-broadcast-%s-" % (region, stage)
        resources = [{{"name": f, "resource_type": "lambda_function", "lambda_arn": arn + f}}
                     for f in ("websocket_connect", "websocket_message", "websocket_disconnect")]
        # chalice names the REST API's function <app>-<stage>, without its resource name
        resources.append({{"name": "api_handler", "resource_type": "lambda_function", "lambda_arn": arn[:-1]}})
        resources.append({{"name": "fanout_worker", "resource_type": "lambda_function", "lambda_arn": arn + "fanout_worker"}})
        resources.append({{"name": "fanout_worker-sqs-event-source", "resource_type": "sqs_event",
                           "queue_arn": "arn:aws:sqs:%s:123456789012:ws-broadcast-fanout" % region,
                           "event_uuid": "0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f", "queue": "ws-broadcast-fanout",
                           "lambda_arn": arn + "fanout_worker"}})
        resources.append({{"name": "rest_api", "resource_type": "rest_api", "rest_api_id": "rest456hij",
                           "rest_api_url": {publish!r}.format(region=region)[:-len("publish")]}})
        resources.append({{"name": "websocket_api", "resource_type": "websocket_api", "websocket_api_id": "abc123defg",
                           "websocket_api_url": {endpoint!r}.format(region=region) + "/"}})
        json.dump({{"resources": resources, "schema_version": "2.0", "backend": "api"}},
                  open(".chalice/deployed/%s.json" % stage, "w"))
    elif name == "chalice" and args[:1] == ["delete"]:
        os.remove(".chalice/deployed/%s.json" % option("--stage"))
    """
)


def install(bin_dir: Path) -> None:
    """Write the `aws` and `chalice` stand-ins into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = _SCRIPT.format(
        python=sys.executable,
        network=str(FIXTURES / "describe-stacks-network.json"),
        endpoint=ENDPOINT,
        publish=PUBLISH,
    )
    for name in ("aws", "chalice"):
        stub = bin_dir / name
        stub.write_text(script)
        stub.chmod(0o755)


def environment(bin_dir: Path, record: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with the stand-ins first on PATH and no real AWS identity."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_") and key != "CHALICE"}
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RECORD": str(record),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **extra,
    }


def records(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]
