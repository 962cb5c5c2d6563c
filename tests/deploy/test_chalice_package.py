"""`chalice package --stage prod`: a valid template, every function in the VPC, a lean zip."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

FUNCTIONS = ("WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect")


CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))


def test_the_template_passes_cfn_lint(prod_package):
    # Strict on purpose: E2533 (deprecated runtime) fires once Lambda deprecates the Python that
    # Chalice names the runtime after (python3.11 on 2027-06-30, per cfn-lint's lifecycle data).
    result = subprocess.run([CFN_LINT, "--", str(prod_package / "sam.json")], capture_output=True, text=True)
    # cfn-lint's exit code is a bit mask: 2 means errors; warnings (4) and notes (8) are not failures here.
    assert result.returncode & 2 == 0, result.stdout


def test_every_function_runs_in_the_vpc_with_the_service_settings(prod_package):
    resources = json.loads((prod_package / "sam.json").read_text())["Resources"]
    for name in FUNCTIONS:
        properties = resources[name]["Properties"]
        assert properties["VpcConfig"]["SubnetIds"], name
        assert properties["VpcConfig"]["SecurityGroupIds"], name
        variables = properties["Environment"]["Variables"]
        assert variables["REDIS_URL"].startswith("rediss://"), name
        assert variables["CONNECTION_MAX_AGE_SECONDS"] == "7200", name
    message = resources["WebsocketMessage"]["Properties"]
    assert message["Handler"] == "app.message"
    assert message["Timeout"] < 29, "API Gateway stops waiting at 29 s"
    assert float(message["Environment"]["Variables"]["PUBLISH_DEADLINE_SECONDS"]) < message["Timeout"]


def test_the_zip_holds_the_app_and_its_runtime_dependencies_only(prod_package):
    names = zipfile.ZipFile(prod_package / "deployment.zip").namelist()
    tops = {name.split("/")[0] for name in names}
    assert "app.py" in names
    assert {"chalicelib/registry.py", "chalicelib/fanout.py", "chalicelib/envelope.py"} <= set(names)
    assert {"redis", "boto3", "botocore"} <= tops
    # redis-py's C parser, built for Lambda's platform (a manylinux wheel), not for this machine's by chance
    assert any(
        name.startswith("hiredis/hiredis.cpython-") and name.endswith("-x86_64-linux-gnu.so")
        for name in names
    )
    for unwanted in (
        "tests",
        "localgw",
        "bench",
        "infra",
        "fakeredis",
        "pytest",
        "hypothesis",
        "aiohttp",
        "cfnlint",
    ):
        assert unwanted not in tops, unwanted
