"""scripts/compose_template.py: joins infra/ files into chalice's merge template, and checks the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compose_template.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_joins_sections_and_reads_short_form_intrinsics(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\n"
        "Parameters: {P: {Type: String}}\n"
        "Resources:\n  A: {Type: AWS::SNS::Topic, Properties: {TopicName: !Ref P}}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "x-shared: &shared {Name: !GetAtt A.TopicName}\n"
        "Resources:\n  B: {Properties: *shared}\n"
        "Outputs: {O: {Value: !Sub '${A}'}}\n"
    )
    result = _run(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "-o", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {"P": {"Type": "String"}},
        "Resources": {
            "A": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": {"Ref": "P"}}},
            "B": {"Properties": {"Name": {"Fn::GetAtt": ["A", "TopicName"]}}},
        },
        "Outputs": {"O": {"Value": {"Fn::Sub": "${A}"}}},
    }


def test_the_same_resource_in_two_files_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("Resources:\n  A: {Type: AWS::SNS::Topic}\n")
    (tmp_path / "b.yaml").write_text("Resources:\n  A: {Properties: {}}\n")
    result = _run(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "-o", str(tmp_path / "out.json"))
    assert result.returncode == 1
    assert "Resources.A is already defined" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_infra_overrides_touch_only_resources_chalice_generates():
    # app.yaml's resources without a Type override chalice's; those with one are the app part's own
    # (log groups, access logging); network.yaml must be a whole template.
    from chalice.package import YAMLTemplateSerializer

    app = YAMLTemplateSerializer().load_template((ROOT / "infra" / "app.yaml").read_text())
    overrides = {name for name, resource in app["Resources"].items() if "Type" not in resource}
    assert overrides == {
        "WebsocketConnect",
        "WebsocketMessage",
        "WebsocketDisconnect",
        "DefaultRole",
        "WebsocketAPIStage",
        "APIHandler",
        "RestAPI",
        "FanoutWorker",
    }
    added = {name: r["Type"] for name, r in app["Resources"].items() if name not in overrides}
    assert added == {
        "WebsocketConnectLogGroup": "AWS::Logs::LogGroup",
        "WebsocketMessageLogGroup": "AWS::Logs::LogGroup",
        "ApiHandlerLogGroup": "AWS::Logs::LogGroup",
        "RestAccessLogGroup": "AWS::Logs::LogGroup",
        "WebsocketDisconnectLogGroup": "AWS::Logs::LogGroup",
        "WebsocketAccessLogGroup": "AWS::Logs::LogGroup",
        "ApiGatewayCloudWatchRole": "AWS::IAM::Role",
        "FanoutWorkerLogGroup": "AWS::Logs::LogGroup",
        "PublisherRole": "AWS::IAM::Role",
        "FanoutWorkerRole": "AWS::IAM::Role",
        "ApiGatewayAccount": "AWS::ApiGateway::Account",
    }
    network = YAMLTemplateSerializer().load_template((ROOT / "infra" / "network.yaml").read_text())
    assert all("Type" in r for r in network["Resources"].values())


def test_verify_flags_an_override_without_its_chalice_resource(tmp_path):
    # GIVEN a package made from a stage with autogen_policy false: chalice made per-function roles,
    # so the DefaultRole override stands alone, without a Type
    package = tmp_path / "sam.json"
    package.write_text(
        json.dumps(
            {
                "Resources": {
                    "WebsocketConnectRole": {"Type": "AWS::IAM::Role", "Properties": {}},
                    "DefaultRole": {"Properties": {"Policies": []}},
                }
            }
        )
    )
    result = _run("--verify", str(package))
    assert result.returncode == 1
    assert "DefaultRole is in the merge template but chalice generated no such resource" in result.stderr
    assert "autogen_policy" in result.stderr


def test_verify_accepts_a_whole_package(tmp_path):
    package = tmp_path / "sam.json"
    package.write_text(json.dumps({"Resources": {"DefaultRole": {"Type": "AWS::IAM::Role"}}}))
    assert _run("--verify", str(package)).returncode == 0
