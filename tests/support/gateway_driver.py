"""Drives the app's three handlers as API Gateway and Lambda would, for integration tests.

The handlers get events built from recorded ones and a Lambda context; they post through their own
boto3 client to the test's Management API server, which learns of a connection only once its
$connect handler answered 2xx, as API Gateway does.
"""

from __future__ import annotations

import json
import uuid

from testing.apigw import Connection
from testing.lambda_context import LambdaContext
from testing.management_api import ManagementApiServer

# The functions as Chalice deploys the handlers ({app}-{stage}-{name}): the FunctionName of their metrics.
CONNECT_FUNCTION = "ws-broadcast-dev-websocket_connect"
MESSAGE_FUNCTION = "ws-broadcast-dev-websocket_message"
DISCONNECT_FUNCTION = "ws-broadcast-dev-websocket_disconnect"


class GatewayDriver:
    def __init__(self, app_module, management_api: ManagementApiServer) -> None:
        self.app = app_module
        self.management_api = management_api

    def connect(
        self, connection: Connection | None = None, *, headers: dict | None = None, query_string: str = ""
    ) -> tuple[Connection, dict]:
        connection = connection or Connection()
        event = connection.connect_event(headers=list((headers or {}).items()), query_string=query_string)
        response = self.app.connect(event, LambdaContext(CONNECT_FUNCTION))
        if 200 <= response["statusCode"] < 300:
            self.management_api.open(connection.connection_id)
        return connection, response

    def send(self, connection: Connection, message: dict | str, **event_options) -> dict:
        body = message if isinstance(message, str) else json.dumps(message)
        return self.app.message(
            connection.message_event(body, **event_options), LambdaContext(MESSAGE_FUNCTION)
        )

    def received(self, connection: Connection) -> list:
        """What the connection was posted, in order: each message's ``data``, or an error's code."""
        return [
            message.get("data") or message.get("error", {}).get("code")
            for message in self.management_api.received(connection.connection_id)
        ]

    def disconnect(self, connection: Connection) -> dict:
        self.management_api.close(connection.connection_id)
        return self.app.disconnect(connection.disconnect_event(), LambdaContext(DISCONNECT_FUNCTION))


def app_on(monkeypatch, redis_url: str, management_api, **settings: str):
    """The unchanged app, configured as a stage would be, with a fresh cold start; a generator fixture body."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", management_api.endpoint)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    import app

    app.configured.cache_clear()
    yield app
    app.configured.cache_clear()
