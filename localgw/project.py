"""Loading a Chalice project the way ``chalice local`` does, and finding its functions: the one place
that reads Chalice's configuration and app structures (WebSocket handlers, REST, SQS event sources),
and that names the functions Chalice deploys for them.

1. Read ``.chalice/config.json`` through Chalice's own ``Config`` (the same lookup chains ``chalice
   deploy`` uses), for the chosen stage.
2. Put the stage's ``environment_variables`` (top level, then stage, then the per-function blocks of
   ``websocket_connect``/``websocket_message``/``websocket_disconnect`` and of every function the
   config's ``lambda_functions`` name, such as an ``@app.on_sqs_message`` worker) into ``os.environ``
   before the app is imported. Lambda gives each function its own environment; one process cannot, so
   the per-function blocks are merged and a conflict between two of them is reported.
3. Import ``app.py`` with the project directory first on ``sys.path``.
4. Resolve each WebSocket route to the handler string Chalice writes into the function's ``Handler``
   setting (``app.connect``) and resolve it as Lambda does: import the module, take the attribute.
5. Find the app's ``@app.on_sqs_message`` event sources (``app.event_sources``), each a function and
   its event source mapping's settings.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from chalice.app import SQSEventConfig
from chalice.config import Config
from chalice.constants import DEFAULT_LAMBDA_MEMORY_SIZE, DEFAULT_LAMBDA_TIMEOUT

from localgw.lambdaenv import LambdaFunction
from testing.apigw import ROUTE_CONNECT, ROUTE_DEFAULT, ROUTE_DISCONNECT

# The function (resource) names Chalice's app graph gives the WebSocket handlers, by route: the gateway
# knows each function by its route key.
FUNCTION_NAMES = {
    ROUTE_CONNECT: "websocket_connect",
    ROUTE_DEFAULT: "websocket_message",
    ROUTE_DISCONNECT: "websocket_disconnect",
}
# The function Chalice deploys the REST routes as, and the key the gateway knows it by.
REST_FUNCTION_NAME = "api_handler"
REST_ROUTE_KEY = "REST"


class ProjectError(Exception):
    """The project cannot be served; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class ProjectConfig:
    project_dir: Path
    chalice_stage: str
    app_name: str
    environment: dict[str, str]  # merged for every function
    conflicts: list[str]  # variables two functions set differently
    _config: Config

    def scoped(self, function_name: str) -> Config:
        return self._config.scope(self.chalice_stage, function_name)


def read_config(project_dir: Path, chalice_stage: str) -> ProjectConfig:
    config_file = project_dir / ".chalice" / "config.json"
    if not (project_dir / "app.py").is_file():
        raise ProjectError(f"{project_dir} has no app.py: pass --project-dir with a Chalice project")
    try:
        from_disk = json.loads(config_file.read_text())
    except FileNotFoundError:
        from_disk = {}
    except ValueError as exc:
        raise ProjectError(f"{config_file} is not valid JSON: {exc}") from None
    config = Config(
        chalice_stage=chalice_stage,
        user_provided_params={"project_dir": str(project_dir)},
        config_from_disk=from_disk,
    )
    environment: dict[str, str] = {}
    conflicts = []
    for name in _function_names(from_disk, chalice_stage):
        for key, value in config.scope(chalice_stage, name).environment_variables.items():
            if key in environment and environment[key] != str(value):
                conflicts.append(f"{key} (set differently for {name})")
            environment.setdefault(key, str(value))
    return ProjectConfig(
        project_dir=project_dir,
        chalice_stage=chalice_stage,
        app_name=from_disk.get("app_name") or project_dir.name,
        environment=environment,
        conflicts=conflicts,
        _config=config,
    )


def _function_names(from_disk: dict, chalice_stage: str) -> list[str]:
    """The WebSocket functions, then every other function the config gives a block of its own."""
    names = list(FUNCTION_NAMES.values())
    stage = from_disk.get("stages", {}).get(chalice_stage, {})
    for blocks in (from_disk.get("lambda_functions", {}), stage.get("lambda_functions", {})):
        names += [name for name in blocks if name not in names]
    return names


def apply_environment(environment: dict[str, str], env: MutableMapping[str, str]) -> list[str]:
    """Put the config's variables into ``env``; a variable already set there wins. Returns the ones set."""
    applied = []
    for key, value in environment.items():
        if key not in env:
            env[key] = value
            applied.append(key)
    return applied


def import_app(project_dir: Path):
    """Import the project's ``app`` module as Lambda would (project root first on the path).

    Called in the runtime process, a fresh interpreter (as a new container is): no other project's
    ``app`` or ``chalicelib`` can be in ``sys.modules`` there, whatever the project's modules are named.
    """
    root = str(project_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module("app")
    except Exception as exc:
        raise ProjectError(f"importing {project_dir / 'app.py'} failed: {type(exc).__name__}: {exc}") from exc
    app = getattr(module, "app", None)
    if app is None or not hasattr(app, "websocket_handlers"):
        raise ProjectError(f"{project_dir / 'app.py'} defines no Chalice app named 'app'")
    return app


def resolve_handler(handler_string: str) -> Callable:
    """``module.attr`` to the object Lambda would call, like Lambda's Python runtime does."""
    module_name, _, attr = handler_string.rpartition(".")
    module = importlib.import_module(module_name)
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ProjectError(f"handler {handler_string!r} is not a callable in module {module_name!r}")
    return handler


def websocket_functions(app, project: ProjectConfig, *, region: str) -> dict[str, LambdaFunction]:
    """The app's WebSocket functions by route key, as Chalice would deploy them."""
    functions = {}
    for route_key, handler_config in app.websocket_handlers.items():
        name = FUNCTION_NAMES.get(route_key, FUNCTION_NAMES[ROUTE_DEFAULT])
        functions[route_key if route_key in FUNCTION_NAMES else ROUTE_DEFAULT] = _function(
            project,
            name,
            handler_config.handler_string,
            resolve_handler(handler_config.handler_string),
            region=region,
            deployed_name=f"-{name}",
        )
    if not functions:
        raise ProjectError("the app registers no WebSocket handlers (@app.on_ws_connect/message/disconnect)")
    return functions


def rest_function(project: ProjectConfig, *, region: str) -> LambdaFunction:
    """The function Chalice deploys the app's REST routes as (``app.app``, the Chalice app itself)."""
    return _function(project, REST_FUNCTION_NAME, "app.app", None, region=region, deployed_name="")


def _function(
    project: ProjectConfig, name: str, handler_string: str, handler, *, region: str, deployed_name: str
) -> LambdaFunction:
    scoped = project.scoped(name)
    return LambdaFunction(
        name=name,
        function_name=f"{project.app_name}-{project.chalice_stage}{deployed_name}",
        handler_string=handler_string,
        handler=handler,
        timeout_seconds=float(scoped.lambda_timeout or DEFAULT_LAMBDA_TIMEOUT),
        memory_mb=int(scoped.lambda_memory_size or DEFAULT_LAMBDA_MEMORY_SIZE),
        region=region,
    )


@dataclass(frozen=True, kw_only=True)
class SqsSource:
    """An ``@app.on_sqs_message`` handler: its queue (by name) and its event source mapping's settings."""

    queue: str
    batch_size: int
    maximum_batching_window_seconds: float
    maximum_concurrency: int | None


def sqs_functions(app, project: ProjectConfig, *, region: str) -> dict[str, tuple[LambdaFunction, SqsSource]]:
    """The app's SQS-triggered functions, by the key the gateway knows them by (``SQS <queue>``)."""
    found = {}
    for config in app.event_sources:
        if not isinstance(config, SQSEventConfig):
            continue
        queue = config.queue or config.queue_arn.rsplit(":", 1)[-1]
        function = _function(
            project,
            config.name,
            config.handler_string,
            resolve_handler(config.handler_string),
            region=region,
            deployed_name=f"-{config.name}",
        )
        found[f"SQS {queue}"] = (
            function,
            SqsSource(
                queue=queue,
                batch_size=config.batch_size,
                maximum_batching_window_seconds=config.maximum_batching_window_in_seconds,
                maximum_concurrency=config.maximum_concurrency,
            ),
        )
    return found


def point_websocket_api_at(app, endpoint: str) -> None:
    """Make Chalice's ``app.websocket_api.send``/``close``/``info`` reach the local gateway.

    Chalice derives that client's endpoint from the event's api id (``configure_from_api_id``) and passes
    it as an explicit ``endpoint_url``, so ``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI`` does not reach it.
    ``configure*`` returns early once an endpoint is set, so setting it first wins; Chalice offers no
    public way to set an ``http://`` endpoint, hence the private attribute.
    """
    websocket_api = app.websocket_api
    websocket_api._endpoint = endpoint
    websocket_api._client = None
    if websocket_api.session is None:
        import boto3

        websocket_api.session = boto3.Session()
    # Lambda runs one invocation at a time per container; here they share one process. Creating the
    # client now keeps concurrent first sends from racing on the (not thread-safe) boto3 session.
    websocket_api._get_client()


def default_project_dir() -> Path:
    """The repository that contains this package (where ``make run`` serves our app from)."""
    return Path(__file__).resolve().parent.parent


def ensure_aws_environment(env: MutableMapping[str, str]) -> list[str]:
    """Dummy credentials and a region when none are set: the Management API here checks no signature."""
    defaults = {"AWS_DEFAULT_REGION": env.get("AWS_REGION", "us-east-1")}
    defaults["AWS_REGION"] = env.get("AWS_DEFAULT_REGION", defaults["AWS_DEFAULT_REGION"])
    if "AWS_ACCESS_KEY_ID" not in env and "AWS_PROFILE" not in env:
        defaults.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    set_here = [k for k in defaults if k not in env]
    for key in set_here:
        env[key] = defaults[key]
    return set_here


__all__ = [
    "FUNCTION_NAMES",
    "REST_FUNCTION_NAME",
    "REST_ROUTE_KEY",
    "ProjectConfig",
    "ProjectError",
    "SqsSource",
    "apply_environment",
    "default_project_dir",
    "ensure_aws_environment",
    "import_app",
    "point_websocket_api_at",
    "read_config",
    "rest_function",
    "sqs_functions",
    "websocket_functions",
]
