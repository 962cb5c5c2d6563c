"""`make package`: chalice's app merged with infra/ into one CloudFormation template, checked offline.

`make package` (so its real command lines) runs once per session into a temporary folder (conftest);
every test then reads the same merged template. cfn-lint runs on it and on infra/network.yaml alone.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from chalice.constants import CLOUDWATCH_LOGS, POST_TO_WEBSOCKET_CONNECTION_POLICY, VPC_ATTACH_POLICY
from chalice.package import YAMLTemplateSerializer

# The session's `make package` (conftest) downloads the runtime wheels on a fresh machine.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
# The three WebSocket handlers, APIHandler, the REST API's function (POST /publish), and the broadcast worker.
FUNCTIONS = ("WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect", "APIHandler", "FanoutWorker")
# Each function's role: what it does, no more (infra/app.yaml).
ROLES = {
    "WebsocketConnect": "DefaultRole",
    "WebsocketDisconnect": "DefaultRole",
    "WebsocketMessage": "PublisherRole",
    "APIHandler": "PublisherRole",
    "FanoutWorker": "FanoutWorkerRole",
}
ENQUEUERS = ("WebsocketMessage", "APIHandler", "FanoutWorker")
QUEUE_ARN = {"Fn::GetAtt": ["FanoutQueue", "Arn"]}
PRIVATE_SUBNETS = [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
FUNCTION_SG = {"Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"]}
CACHE_SG = {"Fn::GetAtt": ["CacheSecurityGroup", "GroupId"]}
REDIS_PORT = 6379


def _cfn_lint(path: Path) -> subprocess.CompletedProcess:
    # cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational. No rule is ignored:
    # both templates are clean, so any finding fails and must be fixed or explained beside an ignore.
    return subprocess.run([str(VENV_BIN / "cfn-lint"), str(path)], capture_output=True, text=True)


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
    assert set(FUNCTIONS) | {"WebsocketAPI", "RestAPI", "DefaultRole"} <= set(resources)
    assert set(network["Outputs"]) | {"WebsocketConnectEndpointURL", "EndpointURL", "PublishURL"} <= set(
        template["Outputs"]
    )
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
def test_every_function_gets_the_redis_endpoint_and_iam_auth_settings(template, resources, function):
    env = resources[function]["Properties"]["Environment"]["Variables"]
    assert env["REDIS_URL"] == {
        "Fn::Sub": "rediss://${ReplicationGroup.PrimaryEndPoint.Address}:${ReplicationGroup.PrimaryEndPoint.Port}/0"
    }
    assert env["REDIS_AUTH"] == "iam"
    assert env["REDIS_IAM_USER_ID"] == {"Ref": "CacheAppUser"}
    assert env["REDIS_IAM_CACHE_NAME"] == {"Ref": "ReplicationGroup"}
    # The app's own settings must accept that shape (with the deployed values filled in).
    from chalicelib.settings import Settings

    deployed = {name: _deployed(value, template) for name, value in env.items()}
    literal = {name: value for name, value in deployed.items() if isinstance(value, str)}
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


def test_the_publish_function_posts_through_this_stacks_websocket_api(template, resources):
    env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert env["WEBSOCKET_API_ID"] == {"Ref": "WebsocketAPI"}
    # Ref of an AWS::ApiGatewayV2::Stage is its name: the stage chalice deploys, whose URL clients use
    assert env["WEBSOCKET_API_STAGE"] == {"Ref": "WebsocketAPIStage"}
    assert resources["WebsocketAPIStage"]["Properties"]["StageName"] == "api"
    for function in FUNCTIONS[:3]:  # the WebSocket handlers post to their own caller's API
        assert "WEBSOCKET_API_ID" not in resources[function]["Properties"]["Environment"]["Variables"]
    from chalicelib.settings import Settings

    settings = Settings.from_env(
        {
            "REDIS_URL": "rediss://master.x.abc.use1.cache.amazonaws.com:6379/0",
            "AUTH_MODE": "none",
            "WEBSOCKET_API_ID": "abc123defg",
            "WEBSOCKET_API_STAGE": "api",
            "AWS_REGION": "us-east-1",
        }
    )
    assert (settings.websocket_api_id, settings.websocket_api_stage) == ("abc123defg", "api")


def test_the_publish_function_is_sized_like_the_message_function_within_the_rest_timeout(resources):
    # API Gateway's REST integrations time out at 29 s; the fan-out's CPU grows with memory.
    for function in ("WebsocketMessage", "APIHandler"):
        props = resources[function]["Properties"]
        assert (props["MemorySize"], props["Timeout"]) == (1024, 28), function


def test_every_function_runs_as_the_scoped_role_of_what_it_does(resources):
    for function, role in ROLES.items():
        assert resources[function]["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}, function
    roles = _of_type(resources, "AWS::IAM::Role")
    assert set(roles) == set(ROLES.values()) | {"ApiGatewayCloudWatchRole"}
    for role in set(ROLES.values()):
        assert "ManagedPolicyArns" not in resources[role]["Properties"]
        (statement,) = resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_the_publish_url_output_is_the_rest_route(template):
    assert template["Outputs"]["PublishURL"]["Value"] == {
        "Fn::Sub": "https://${RestAPI}.execute-api.${AWS::Region}.${AWS::URLSuffix}/api/publish"
    }
    assert template["Outputs"]["EndpointURL"]["Value"]["Fn::Sub"].endswith("/api/")  # chalice's stage root
    assert template["Resources"]["RestAPI"]["Properties"]["StageName"] == "api"
    assert "/publish" in template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]


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
# Conditions of the roles' conditional statements, and whether they hold with the default parameters.
_DEFAULT_CONDITIONS = {"UseJwks": False, "TraceFunctions": False}


def _statements(resources: dict, role: str = "DefaultRole") -> list[dict]:
    """The role's statements as deployed with the default parameters: no JWKS URL (the SSM grant's
    ``Fn::If [UseJwks, AWS::NoValue, statement]`` is its statement), no tracing (the X-Ray grant's
    ``Fn::If [TraceFunctions, statement, AWS::NoValue]`` is none)."""
    (policy,) = resources[role]["Properties"]["Policies"]
    resolved = []
    for statement in policy["PolicyDocument"]["Statement"]:
        if "Fn::If" in statement:
            condition, when_true, when_false = statement["Fn::If"]
            statement = when_true if _DEFAULT_CONDITIONS[condition] else when_false
        if statement != {"Ref": "AWS::NoValue"}:
            resolved.append(statement)
    return resolved


def _actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


# The functions that post to connections; $connect and $disconnect never do (a connection does not
# exist until $connect returns), so their role may not.
POSTERS = ("WebsocketMessage", "APIHandler", "FanoutWorker")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_only_the_functions_that_post_may_manage_connections(resources, function):
    role = resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
    granted = {action for s in _statements(resources, role) for action in _actions(s)}
    assert ("execute-api:ManageConnections" in granted) is (function in POSTERS), function
    assert not [a for a in granted if a.startswith("execute-api:") and a != "execute-api:ManageConnections"]


@pytest.mark.parametrize("role", sorted({ROLES[f] for f in POSTERS}))
def test_manage_connections_only_on_this_stacks_api(resources, role):
    granting = [s for s in _statements(resources, role) if "execute-api:ManageConnections" in _actions(s)]
    assert len(granting) == 1
    resource = granting[0]["Resource"]
    assert resource == {
        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}"
        ":${WebsocketAPI}/*/*/@connections/*"
    }
    assert resources["WebsocketAPI"]["Type"] == "AWS::ApiGatewayV2::Api"
    for path, node in _walk(resources):
        assert node != POST_TO_WEBSOCKET_CONNECTION_POLICY["Resource"], f"chalice's wildcard left at {path}"


@pytest.mark.parametrize("role", sorted(set(ROLES.values())))
def test_role_may_connect_to_this_cache_as_the_app_user_only(resources, role):
    (statement,) = [s for s in _statements(resources, role) if "elasticache:Connect" in _actions(s)]
    assert _actions(statement) == ["elasticache:Connect"]
    assert statement["Resource"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:elasticache:${AWS::Region}:${AWS::AccountId}"
            ":replicationgroup:${ReplicationGroup}"
        },
        {"Fn::GetAtt": ["CacheAppUser", "Arn"]},
    ]


BASE_SIDS = {"Logs", "VpcNetworkInterfaces", "ConnectToTheCacheAsTheAppUser"}
POST = "PostToThisApiConnections"


@pytest.mark.parametrize(
    ("role", "sids"),
    [
        ("DefaultRole", BASE_SIDS | {"ReadTheJwtSecret"}),  # $connect, $disconnect: they never post
        ("PublisherRole", BASE_SIDS | {POST, "ReadTheJwtSecret", "EnqueueFanoutJobs"}),
        # the worker verifies no token: no SSM
        ("FanoutWorkerRole", BASE_SIDS | {POST, "EnqueueFanoutJobs", "ConsumeFanoutJobs"}),
    ],
)
def test_role_keeps_every_other_permission_chalice_grants(resources, role, sids):
    # infra/app.yaml replaces chalice's policy list: nothing chalice needs may get lost (posting only
    # where the role's functions post).
    granted = {
        action for s in _statements(resources, role) if s["Effect"] == "Allow" for action in _actions(s)
    }
    needed = [CLOUDWATCH_LOGS, VPC_ATTACH_POLICY]
    if POST in sids:
        needed.append(POST_TO_WEBSOCKET_CONNECTION_POLICY)
    for statement in needed:
        assert set(_actions(statement)) <= granted
    assert {s.get("Sid") for s in _statements(resources, role)} == sids
    for path, node in _walk(_statements(resources, role)):
        if path and path[-1] == "Action":
            assert "*" not in _actions({"Action": node}), f"wildcard action at {path}"


# The SSM parameter's name: the one given, else this stack's own.
SECRET_PARAMETER = {
    "Fn::If": [
        "DefaultJwtSecretParameter",
        {"Fn::Sub": "/ws-broadcast/${AWS::StackName}/jwt-secret"},
        {"Ref": "AuthJwtSecretParameter"},
    ]
}


@pytest.mark.parametrize("role", ["DefaultRole", "PublisherRole"])
def test_the_role_may_read_the_jwt_secret_parameter_and_nothing_else_in_ssm(template, resources, role):
    (policy,) = resources[role]["Properties"]["Policies"]
    (conditional,) = [
        s for s in policy["PolicyDocument"]["Statement"] if s.get("Fn::If", [None])[0] == "UseJwks"
    ]
    condition, when_jwks, statement = conditional["Fn::If"]
    assert condition == "UseJwks"
    assert when_jwks == {"Ref": "AWS::NoValue"}  # with an identity provider's JWKS: no SSM access at all
    assert statement == {
        "Sid": "ReadTheJwtSecret",
        "Effect": "Allow",
        "Action": "ssm:GetParameter",
        "Resource": {
            "Fn::Sub": [
                "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${Name}",
                {"Name": SECRET_PARAMETER},
            ]
        },
    }
    assert _deployed(statement["Resource"], template) == (
        f"arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter/ws-broadcast/{STACK_NAME}/jwt-secret"
    )
    # The name, given or derived, starts with "/" (so the ARN is parameter/ws-broadcast/...), and no
    # other action or statement mentions SSM or KMS (the AWS-managed aws/ssm key needs no grant).
    parameter = template["Parameters"]["AuthJwtSecretParameter"]
    assert parameter["Default"] == ""
    assert parameter["AllowedPattern"].startswith("^(/")
    others = [s for s in _statements(resources, role) if s != statement]
    assert not [a for s in others for a in _actions(s) if a.startswith(("ssm:", "kms:"))]
    worker = _statements(resources, "FanoutWorkerRole")
    assert not [a for s in worker for a in _actions(s) if a.startswith(("ssm:", "kms:"))]


# The stack name the tests deploy as, for what the template derives from AWS::StackName.
STACK_NAME = "ws-test"


def _deployed(value, template: dict):
    """``value`` as CloudFormation resolves it when every parameter keeps its default (Ref, Fn::If,
    Fn::Sub of parameters and AWS::StackName); AWS::NoValue and other intrinsics are returned as they are."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Ref" and argument in template["Parameters"]:
            return str(template["Parameters"][argument]["Default"])
        if key == "Fn::Sub" and isinstance(argument, list):
            text, names = argument
            for name, named in names.items():
                text = text.replace(f"${{{name}}}", str(_deployed(named, template)))
            return _deployed({"Fn::Sub": text}, template)
        if key == "Fn::Sub":
            text = argument.replace("${AWS::StackName}", STACK_NAME)
            for name, parameter in template["Parameters"].items():
                text = text.replace(f"${{{name}}}", str(parameter["Default"]))
            return text
        if key == "Fn::If":
            condition, when_true, when_false = argument
            holds = _holds(template["Conditions"][condition], template)
            return _deployed(when_true if holds else when_false, template)
    return value


def _holds(condition: dict, template: dict) -> bool:
    ((key, argument),) = condition.items()
    if key == "Fn::Not":
        return not _holds(argument[0], template)
    assert key == "Fn::Equals", key
    return str(_deployed(argument[0], template)) == str(_deployed(argument[1], template))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_gets_the_auth_settings_from_the_parameters(template, resources, function):
    env = resources[function]["Properties"]["Environment"]["Variables"]
    assert env["AUTH_MODE"] == "jwt"
    assert env["AUTH_JWT_SECRET_PARAMETER"] == {
        "Fn::If": ["UseJwks", {"Ref": "AWS::NoValue"}, SECRET_PARAMETER]
    }
    assert env["AUTH_JWKS_URL"] == {"Fn::If": ["UseJwks", {"Ref": "AuthJwksUrl"}, {"Ref": "AWS::NoValue"}]}
    for variable, parameter in (("AUTH_ISSUER", "AuthIssuer"), ("AUTH_AUDIENCE", "AuthAudience")):
        condition = f"Default{parameter}"
        assert env[variable] == {
            "Fn::If": [condition, {"Fn::Sub": "ws-broadcast-${AWS::StackName}"}, {"Ref": parameter}]
        }
        assert template["Conditions"][condition] == {"Fn::Equals": [{"Ref": parameter}, ""]}
    assert env["ALLOWED_ORIGINS"] == {"Ref": "AllowedOrigins"}
    # As deployed with the defaults: exactly one key source, the SSM parameter.
    deployed = {name: _deployed(value, template) for name, value in env.items()}
    auth = {name: value for name, value in deployed.items() if isinstance(value, str)}
    assert {
        name: auth.get(name) for name in ("AUTH_JWT_SECRET_PARAMETER", "AUTH_JWKS_URL", "AUTH_JWT_SECRET")
    } == {
        "AUTH_JWT_SECRET_PARAMETER": f"/ws-broadcast/{STACK_NAME}/jwt-secret",
        "AUTH_JWKS_URL": None,
        "AUTH_JWT_SECRET": None,
    }
    # Each stack its own issuer, audience and secret: one stack never accepts another's tokens.
    assert (auth["AUTH_ISSUER"], auth["AUTH_AUDIENCE"], auth["ALLOWED_ORIGINS"]) == (
        f"ws-broadcast-{STACK_NAME}",
        f"ws-broadcast-{STACK_NAME}",
        "",
    )


# ------------------------------------------------------------------------------------------ limits, logs
def test_the_stage_throttles_every_route_with_the_parameters(template, resources):
    settings = resources["WebsocketAPIStage"]["Properties"]["DefaultRouteSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "StageThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "StageThrottlingBurstLimit"}
    parameters = template["Parameters"]
    # Defaults well below the account's 10 000/s (burst 5 000) that every API of the account shares.
    assert 0 < parameters["StageThrottlingRateLimit"]["Default"] < 10_000
    assert 0 < parameters["StageThrottlingBurstLimit"]["Default"] <= 5_000


def test_the_message_function_has_reserved_concurrency_and_the_others_none(template, resources):
    assert resources["WebsocketMessage"]["Properties"]["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "ReserveMessageConcurrency",
            {"Ref": "MessageReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert template["Conditions"]["ReserveMessageConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MessageReservedConcurrency"}, 0]}]
    }
    assert template["Parameters"]["MessageReservedConcurrency"]["Default"] > 0
    for function in ("WebsocketConnect", "WebsocketDisconnect", "APIHandler", "FanoutWorker"):
        assert "ReservedConcurrentExecutions" not in resources[function]["Properties"]


def test_the_stage_writes_access_logs_with_the_accounts_cloudwatch_role(template, resources):
    stage = resources["WebsocketAPIStage"]
    access = stage["Properties"]["AccessLogSettings"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["WebsocketAccessLogGroup", "Arn"]}
    line = json.loads(access["Format"])  # one JSON object per event
    assert line["requestId"] == "$context.requestId"  # API Gateway requires it
    assert line["connectionId"] == "$context.connectionId"
    assert "querystring" not in access["Format"].lower()  # a ?token= must not reach the logs
    # API Gateway needs the account's CloudWatch role set before a stage may log
    assert stage["DependsOn"] == "ApiGatewayAccount"
    assert resources["ApiGatewayAccount"]["Properties"]["CloudWatchRoleArn"] == {
        "Fn::If": [
            "CreateApiGatewayCloudWatchRole",
            {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]},
            {"Ref": "ApiGatewayCloudWatchRoleArn"},
        ]
    }
    role = resources["ApiGatewayCloudWatchRole"]
    assert role["Condition"] == "CreateApiGatewayCloudWatchRole"
    # The account setting outlives the stack: the role it points at must too.
    assert role["DeletionPolicy"] == role["UpdateReplacePolicy"] == "Retain"
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert role["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"}
    ]
    assert template["Parameters"]["ApiGatewayCloudWatchRoleArn"]["Default"] == ""


def test_the_rest_stage_throttles_and_writes_access_logs(template, resources):
    # RestAPI is SAM's AWS::Serverless::Api: SAM writes these into the AWS::ApiGateway::Stage it makes.
    api = resources["RestAPI"]
    assert api["Type"] == "AWS::Serverless::Api"
    (settings,) = api["Properties"]["MethodSettings"]
    assert (settings["ResourcePath"], settings["HttpMethod"]) == ("/*", "*")  # every method of the stage
    assert settings["ThrottlingRateLimit"] == {"Ref": "PublishThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "PublishThrottlingBurstLimit"}
    parameters = template["Parameters"]
    assert 0 < parameters["PublishThrottlingRateLimit"]["Default"] < 10_000
    assert 0 < parameters["PublishThrottlingBurstLimit"]["Default"] <= 5_000
    access = api["Properties"]["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["RestAccessLogGroup", "Arn"]}
    line = json.loads(access["Format"])
    assert line["requestId"] == "$context.requestId"
    assert line["userArn"] == "$context.identity.userArn"  # which backend published
    assert "querystring" not in access["Format"].lower()
    # the account's CloudWatch role first: SAM's stage depends on the RestApi, which depends on it
    assert api["DependsOn"] == "ApiGatewayAccount"


def test_every_function_and_the_access_log_have_a_log_group_with_retention(template, resources):
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    names = {json.dumps(g["Properties"]["LogGroupName"]) for g in groups.values()}
    for function in FUNCTIONS:
        # The name Lambda writes to, owned by the stack: delete-stack removes it.
        assert json.dumps({"Fn::Sub": f"/aws/lambda/${{{function}}}"}) in names, function
    assert len(groups) == len(FUNCTIONS) + 2  # and the two stages' access logs
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert "DeletionPolicy" not in group
    assert (
        template["Parameters"]["LogRetentionDays"]["Default"]
        in (template["Parameters"]["LogRetentionDays"]["AllowedValues"])
    )


# ------------------------------------------------------------------------------------------ fan-out queue
def test_the_fanout_queue_is_encrypted_redrives_to_a_dead_letter_queue_and_outlasts_the_workers(
    template, resources
):
    queues = _of_type(resources, "AWS::SQS::Queue")
    assert set(queues) == {"FanoutQueue", "FanoutDeadLetterQueue"}
    queue, dead = queues["FanoutQueue"]["Properties"], queues["FanoutDeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    # AWS's guidance for a Lambda event source: at least 6x the function's timeout
    assert queue["VisibilityTimeout"] >= 6 * resources["FanoutWorker"]["Properties"]["Timeout"]
    assert queue["MessageRetentionPeriod"] == 2 * 3600  # API Gateway's longest connection
    assert queue["MaximumMessageSize"] == 256 * 1024, "what a job may weigh (chalicelib/jobs.py)"
    assert dead["MessageRetentionPeriod"] == 14 * 24 * 3600
    for name, props in (("FanoutQueue", queue), ("FanoutDeadLetterQueue", dead)):
        assert props["SqsManagedSseEnabled"] is True, name
        assert queues[name]["DeletionPolicy"] == "Delete", name  # make destroy leaves no queue behind


def test_two_stacks_in_one_account_never_collide_on_a_queue_name(template, resources):
    """One stack: CloudFormation names the queues; only `make network` names them (for chalice deploy)."""
    assert template["Parameters"]["FanoutQueueName"]["Default"] == ""
    assert template["Conditions"]["NameTheFanoutQueues"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "FanoutQueueName"}, ""]}]
    }
    assert resources["FanoutQueue"]["Properties"]["QueueName"] == {
        "Fn::If": ["NameTheFanoutQueues", {"Ref": "FanoutQueueName"}, {"Ref": "AWS::NoValue"}]
    }
    assert resources["FanoutDeadLetterQueue"]["Properties"]["QueueName"] == {
        "Fn::If": ["NameTheFanoutQueues", {"Fn::Sub": "${FanoutQueueName}-dlq"}, {"Ref": "AWS::NoValue"}]
    }


def test_the_worker_reads_this_stacks_queue_reporting_partial_batch_failures_at_bounded_concurrency(
    template, resources
):
    worker = resources["FanoutWorker"]["Properties"]
    (event,) = worker["Events"].values()  # SAM makes it the event source mapping
    assert event["Type"] == "SQS"
    # Fn::Sub replaces chalice's ARN of the decorator's queue name, key for key
    assert event["Properties"]["Queue"] == {"Fn::Sub": "${FanoutQueue.Arn}"}
    assert event["Properties"]["BatchSize"] == 1, "one job an invocation: jobs run side by side"
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["Properties"]["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "FanoutWorkerMaximumConcurrency"}
    }
    parameter = template["Parameters"]["FanoutWorkerMaximumConcurrency"]
    assert parameter["MinValue"] == 2  # AWS's floor
    assert 2 <= parameter["Default"] <= parameter["MaxValue"] <= 1000
    # no other event source reads any queue
    assert not _of_type(resources, "AWS::Lambda::EventSourceMapping")
    others = [f for f in FUNCTIONS if f != "FanoutWorker"]
    assert not [f for f in others if resources[f]["Properties"].get("Events")]


def test_the_worker_is_sized_for_its_jobs(resources):
    worker = resources["FanoutWorker"]["Properties"]
    assert (worker["MemorySize"], worker["Timeout"]) == (1024, 60)
    assert "WEBSOCKET_API_ID" not in worker["Environment"]["Variables"]  # each job names its API


def test_the_functions_that_enqueue_know_the_queue_and_every_function_the_shards(resources):
    for function in FUNCTIONS:
        env = resources[function]["Properties"]["Environment"]["Variables"]
        assert env["REGISTRY_SHARDS"] == {"Ref": "RegistryShards"}, function
        if function in ENQUEUERS:
            assert env["FANOUT_QUEUE_URL"] == {"Ref": "FanoutQueue"}, function  # Ref of a queue: its URL
        else:
            assert "FANOUT_QUEUE_URL" not in env, function


def _sqs_statements(resources: dict) -> dict[str, list[dict]]:
    return {
        role: [s for s in _statements(resources, role) if any(a.startswith("sqs:") for a in _actions(s))]
        for role in set(ROLES.values())
    }


def test_sqs_permissions_name_only_the_fanout_queue(resources):
    by_role = _sqs_statements(resources)
    statements = [s for found in by_role.values() for s in found]
    assert statements
    for statement in statements:
        assert statement["Resource"] == QUEUE_ARN, statement["Sid"]
        assert statement["Effect"] == "Allow"
        assert not [a for a in _actions(statement) if "*" in a], statement["Sid"]
    # chalice's own grant (receive from every queue: Resource "*") is gone
    for path, node in _walk(resources):
        if isinstance(node, dict) and "Action" in node and node.get("Resource") == "*":
            assert not [a for a in _actions(node) if a.startswith("sqs:")], f"sqs on * at {path}"


def test_only_the_enqueuers_may_send_and_only_the_worker_may_consume(resources):
    by_role = _sqs_statements(resources)
    actions = {role: {a for s in found for a in _actions(s)} for role, found in by_role.items()}
    assert actions == {
        "DefaultRole": set(),  # $connect, $disconnect
        "PublisherRole": {"sqs:SendMessage"},  # SendMessageBatch is authorized as SendMessage
        "FanoutWorkerRole": {
            "sqs:SendMessage",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ChangeMessageVisibility",
        },
    }
    assert {ROLES[f] for f in ENQUEUERS} == {"PublisherRole", "FanoutWorkerRole"}


def _alarm_actions(template: dict) -> dict:
    parameter = template["Parameters"]["AlarmTopicArn"]
    assert parameter["Default"] == ""
    assert template["Conditions"]["NotifyAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    return {"Fn::If": ["NotifyAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}


def test_one_dead_letter_message_raises_an_alarm(template, resources):
    alarm = resources["FanoutDeadLetterAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "QueueName"]}}
    ]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Maximum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["EvaluationPeriods"] == 1
    assert alarm["AlarmActions"] == alarm["OKActions"] == _alarm_actions(template)


def test_a_backlog_on_the_queue_raises_an_alarm(template, resources):
    alarm = resources["FanoutBacklogAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FanoutQueue", "QueueName"]}}
    ]
    assert alarm["Threshold"] == {"Ref": "FanoutBacklogAlarmSeconds"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # the alarm fires well before the queue drops a job (its retention)
    threshold = template["Parameters"]["FanoutBacklogAlarmSeconds"]["Default"]
    assert threshold < resources["FanoutQueue"]["Properties"]["MessageRetentionPeriod"]
    assert alarm["AlarmActions"] == alarm["OKActions"] == _alarm_actions(template)


def test_the_network_stack_outputs_what_chalice_deploy_needs_of_the_queue(template):
    outputs = template["Outputs"]
    assert outputs["FanoutQueueUrl"]["Value"] == {"Ref": "FanoutQueue"}
    assert outputs["FanoutQueueArn"]["Value"] == QUEUE_ARN


# ------------------------------------------------------------------------------------------ checkov
def test_checkov_finds_nothing_that_is_not_justified_in_the_readme(package_dir):
    """checkov on the merged template (make checkov); each check it skips is justified in infra/README.md."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "checkov", f"OUT={package_dir}"],
        capture_output=True,
        text=True,
        timeout=600,  # the first run installs checkov into its own virtual environment
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed checks: 0" in result.stdout
    skipped = YAMLTemplateSerializer().load_template((ROOT / "infra" / "checkov.yaml").read_text())[
        "skip-check"
    ]
    readme = (ROOT / "infra" / "README.md").read_text()
    section = readme[readme.index("## checkov") :]
    for check in skipped:
        assert f"`{check}`" in section, f"{check} is skipped but not justified in infra/README.md"
