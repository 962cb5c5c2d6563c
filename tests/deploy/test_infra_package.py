"""`make package`: chalice's app merged with infra/ into one CloudFormation template, checked offline.

`make package` (so its real command lines) runs once per module into a temporary folder; every test
then reads the same merged template. cfn-lint runs on it and on infra/network.yaml alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from chalice.constants import CLOUDWATCH_LOGS, POST_TO_WEBSOCKET_CONNECTION_POLICY, VPC_ATTACH_POLICY
from chalice.package import YAMLTemplateSerializer

# `chalice package` downloads the runtime wheels on a fresh machine: more than the default timeout.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
FUNCTIONS = ("WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect")
PRIVATE_SUBNETS = [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
FUNCTION_SG = {"Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"]}
CACHE_SG = {"Fn::GetAtt": ["CacheSecurityGroup", "GroupId"]}
REDIS_PORT = 6379
# Dummy credentials: nothing here may reach AWS (chalice package needs no account).
OFFLINE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _cfn_lint(path: Path) -> subprocess.CompletedProcess:
    # cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational. No rule is ignored:
    # both templates are clean, so any finding fails and must be fixed or explained beside an ignore.
    return subprocess.run([str(VENV_BIN / "cfn-lint"), str(path)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("package")
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "package",
            f"OUT={tmp / 'out'}",
            f"BUILD={tmp / 'build'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "out"


@pytest.fixture(scope="module")
def template(package_dir) -> dict:
    return json.loads((package_dir / "sam.json").read_text())


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


def _of_type(resources: dict, kind: str) -> dict:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


# ------------------------------------------------------------------------------------------- lint
def test_network_template_lints_clean():
    result = _cfn_lint(ROOT / "infra" / "network.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_merged_package_lints_clean(package_dir):
    result = _cfn_lint(package_dir / "sam.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_is_one_template_with_app_and_infra(template, resources, package_dir):
    network = YAMLTemplateSerializer().load_template((ROOT / "infra" / "network.yaml").read_text())
    assert set(network["Resources"]) <= set(resources)
    assert set(FUNCTIONS) | {"WebsocketAPI", "DefaultRole"} <= set(resources)
    assert set(network["Outputs"]) | {"WebsocketConnectEndpointURL"} <= set(template["Outputs"])
    with zipfile.ZipFile(package_dir / "deployment.zip") as archive:
        names = set(archive.namelist())
    assert {"app.py", "chalicelib/settings.py", "chalicelib/redis_auth.py"} <= names
    assert not any(name.startswith(("tests/", "infra/", "scripts/")) for name in names)


# ------------------------------------------------------------------------------------------ functions
@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_is_in_the_private_subnets_with_the_functions_group(resources, function):
    vpc = resources[function]["Properties"]["VpcConfig"]
    assert vpc["SubnetIds"] == PRIVATE_SUBNETS
    assert vpc["SecurityGroupIds"] == [FUNCTION_SG]


def test_no_other_function_escapes_the_vpc(resources):
    functions = _of_type(resources, "AWS::Serverless::Function") | _of_type(
        resources, "AWS::Lambda::Function"
    )
    assert set(functions) == set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_gets_the_redis_endpoint_and_iam_auth_settings(resources, function):
    env = resources[function]["Properties"]["Environment"]["Variables"]
    assert env["REDIS_URL"] == {
        "Fn::Sub": "rediss://${ReplicationGroup.PrimaryEndPoint.Address}:${ReplicationGroup.PrimaryEndPoint.Port}/0"
    }
    assert env["REDIS_AUTH"] == "iam"
    assert env["REDIS_IAM_USER_ID"] == {"Ref": "CacheAppUser"}
    assert env["REDIS_IAM_CACHE_NAME"] == {"Ref": "ReplicationGroup"}
    # The app's own settings must accept that shape (with the deployed values filled in).
    from chalicelib.settings import Settings

    literal = {name: value for name, value in env.items() if isinstance(value, str)}
    settings = Settings.from_env(
        {
            **literal,
            "REDIS_URL": "rediss://master.x.abc.use1.cache.amazonaws.com:6379/0",
            "REDIS_AUTH": env["REDIS_AUTH"],
            "REDIS_IAM_USER_ID": "ws-broadcast-app",
            "REDIS_IAM_CACHE_NAME": "ws-broadcast",
            "AWS_REGION": "us-east-1",
        }
    )
    assert settings.redis_auth.mode == "iam"
    assert settings.auth.mode == "jwt", "prod admits only clients with a valid token"


def test_no_password_anywhere_in_the_template(template):
    for path, node in _walk(template):
        if path and path[-1] in ("AuthToken", "Passwords", "Password"):
            pytest.fail(f"a password in the template at {'.'.join(map(str, path))}")
        if isinstance(node, str) and node.startswith(("redis://", "rediss://")):
            assert "@" not in node, f"credentials in a Redis URL at {path}"


# ------------------------------------------------------------------------------------------ network
def _routes_of(resources: dict, subnet: str) -> list[dict]:
    tables = [
        r["Properties"]["RouteTableId"]["Ref"]
        for r in _of_type(resources, "AWS::EC2::SubnetRouteTableAssociation").values()
        if r["Properties"]["SubnetId"] == {"Ref": subnet}
    ]
    assert len(tables) == 1, f"{subnet} has {len(tables)} route tables"
    return [
        r["Properties"]
        for r in _of_type(resources, "AWS::EC2::Route").values()
        if r["Properties"]["RouteTableId"] == {"Ref": tables[0]}
    ]


@pytest.mark.parametrize("subnet", ["PrivateSubnetA", "PrivateSubnetB"])
def test_private_subnets_reach_the_internet_only_through_nat(resources, subnet):
    (route,) = _routes_of(resources, subnet)
    assert route["DestinationCidrBlock"] == "0.0.0.0/0"
    assert "GatewayId" not in route
    nat = route["NatGatewayId"]
    # One NAT by default; with NatGateways=2 the second zone uses its own.
    allowed = [
        {"Ref": "NatGatewayA"},
        {"Fn::If": ["TwoNatGateways", {"Ref": "NatGatewayB"}, {"Ref": "NatGatewayA"}]},
    ]
    assert nat in allowed
    assert resources[subnet]["Properties"]["MapPublicIpOnLaunch"] is False


@pytest.mark.parametrize("subnet", ["PublicSubnetA", "PublicSubnetB"])
def test_public_subnets_route_to_the_internet_gateway(resources, subnet):
    (route,) = _routes_of(resources, subnet)
    assert route["GatewayId"] == {"Ref": "InternetGateway"}


def test_nat_gateways_sit_in_public_subnets(resources):
    nats = _of_type(resources, "AWS::EC2::NatGateway")
    assert {n["Properties"]["SubnetId"]["Ref"] for n in nats.values()} <= {"PublicSubnetA", "PublicSubnetB"}


def test_subnets_span_two_zones(resources):
    for a, b in (("PrivateSubnetA", "PrivateSubnetB"), ("PublicSubnetA", "PublicSubnetB")):
        zone_a = resources[a]["Properties"]["AvailabilityZone"]
        zone_b = resources[b]["Properties"]["AvailabilityZone"]
        assert zone_a == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
        assert zone_b == {"Fn::Select": [1, {"Fn::GetAZs": ""}]}


# ------------------------------------------------------------------------------------------ security
def _ingress_rules(resources: dict) -> list[tuple[str, dict]]:
    """Every ingress rule as (group it belongs to, rule), inline or standalone."""
    rules = []
    for name, sg in _of_type(resources, "AWS::EC2::SecurityGroup").items():
        for rule in sg["Properties"].get("SecurityGroupIngress", []):
            rules.append((name, rule))
    for rule in _of_type(resources, "AWS::EC2::SecurityGroupIngress").values():
        props = rule["Properties"]
        rules.append((props["GroupId"]["Fn::GetAtt"][0], props))
    return rules


def test_nothing_accepts_traffic_from_anywhere(resources):
    for group, rule in _ingress_rules(resources):
        assert rule.get("CidrIp") not in ("0.0.0.0/0",), group
        assert rule.get("CidrIpv6") not in ("::/0",), group


def test_redis_is_reachable_only_from_the_functions_group(resources):
    rules = _ingress_rules(resources)
    assert [group for group, _ in rules] == ["CacheSecurityGroup"], "only the cache accepts anything"
    (_, rule), *_ = rules
    assert rule["IpProtocol"] == "tcp"
    assert rule["FromPort"] == rule["ToPort"] == REDIS_PORT
    assert rule["SourceSecurityGroupId"] == FUNCTION_SG
    assert set(rule) <= {
        "GroupId",
        "IpProtocol",
        "FromPort",
        "ToPort",
        "SourceSecurityGroupId",
        "Description",
    }
    cache = resources["ReplicationGroup"]["Properties"]
    assert cache["SecurityGroupIds"] == [CACHE_SG]
    assert cache["Port"] == REDIS_PORT


def test_the_cache_has_no_outbound_and_the_functions_only_https_and_redis(resources):
    cache_egress = resources["CacheSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert cache_egress == [
        {"Description": "No outbound traffic", "IpProtocol": "-1", "CidrIp": "127.0.0.1/32"}
    ]
    inline = resources["FunctionSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in inline] == [("tcp", 443, 443)]
    (extra,) = _of_type(resources, "AWS::EC2::SecurityGroupEgress").values()
    assert extra["Properties"]["GroupId"] == FUNCTION_SG
    assert extra["Properties"]["DestinationSecurityGroupId"] == CACHE_SG
    assert extra["Properties"]["FromPort"] == extra["Properties"]["ToPort"] == REDIS_PORT


# ------------------------------------------------------------------------------------------ cache
def test_cache_is_encrypted_in_transit_and_at_rest(resources):
    cache = resources["ReplicationGroup"]["Properties"]
    assert cache["TransitEncryptionEnabled"] is True
    assert cache.get("TransitEncryptionMode", "required") == "required"
    assert cache["AtRestEncryptionEnabled"] is True


def test_cache_is_multi_az_with_automatic_failover_in_private_subnets(resources):
    cache = resources["ReplicationGroup"]["Properties"]
    assert cache["Engine"] in ("redis", "valkey")
    assert int(cache["EngineVersion"].split(".")[0]) >= 7  # IAM authentication needs 7+
    assert cache["NumCacheClusters"] >= 2
    assert cache["AutomaticFailoverEnabled"] is True
    assert cache["MultiAZEnabled"] is True
    assert cache["CacheSubnetGroupName"] == {"Ref": "CacheSubnetGroup"}
    assert resources["CacheSubnetGroup"]["Properties"]["SubnetIds"] == PRIVATE_SUBNETS


def test_cache_authenticates_the_app_with_iam_and_nobody_anonymously(resources):
    cache = resources["ReplicationGroup"]["Properties"]
    assert cache["UserGroupIds"] == [{"Ref": "CacheUserGroup"}]
    group = resources["CacheUserGroup"]["Properties"]
    assert group["UserIds"] == [{"Ref": "CacheDefaultUser"}, {"Ref": "CacheAppUser"}]
    app_user = resources["CacheAppUser"]["Properties"]
    assert app_user["AuthenticationMode"] == {"Type": "iam"}
    assert app_user["UserId"] == app_user["UserName"]  # IAM authentication requires it
    default_user = resources["CacheDefaultUser"]["Properties"]
    assert default_user["UserName"] == "default"
    assert default_user["AccessString"].split()[0] == "off"


# ------------------------------------------------------------------------------------------ IAM
def _statements(resources: dict) -> list[dict]:
    (policy,) = resources["DefaultRole"]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def _actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def test_manage_connections_only_on_this_stacks_api(resources):
    granting = [s for s in _statements(resources) if "execute-api:ManageConnections" in _actions(s)]
    assert len(granting) == 1
    resource = granting[0]["Resource"]
    assert resource == {
        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}"
        ":${WebsocketAPI}/*/*/@connections/*"
    }
    assert resources["WebsocketAPI"]["Type"] == "AWS::ApiGatewayV2::Api"
    for path, node in _walk(resources):
        assert node != POST_TO_WEBSOCKET_CONNECTION_POLICY["Resource"], f"chalice's wildcard left at {path}"


def test_role_may_connect_to_this_cache_as_the_app_user_only(resources):
    (statement,) = [s for s in _statements(resources) if "elasticache:Connect" in _actions(s)]
    assert _actions(statement) == ["elasticache:Connect"]
    assert statement["Resource"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:elasticache:${AWS::Region}:${AWS::AccountId}"
            ":replicationgroup:${ReplicationGroup}"
        },
        {"Fn::GetAtt": ["CacheAppUser", "Arn"]},
    ]


def test_role_keeps_every_other_permission_chalice_grants(resources):
    # infra/app.yaml replaces chalice's policy list: nothing chalice needs may get lost.
    granted = {action for s in _statements(resources) if s["Effect"] == "Allow" for action in _actions(s)}
    for statement in (CLOUDWATCH_LOGS, VPC_ATTACH_POLICY, POST_TO_WEBSOCKET_CONNECTION_POLICY):
        assert set(_actions(statement)) <= granted
    assert {s.get("Sid") for s in _statements(resources)} == {
        "Logs",
        "VpcNetworkInterfaces",
        "PostToThisApiConnections",
        "ConnectToTheCacheAsTheAppUser",
    }
    for path, node in _walk(_statements(resources)):
        if path and path[-1] == "Action":
            assert "*" not in _actions({"Action": node}), f"wildcard action at {path}"
