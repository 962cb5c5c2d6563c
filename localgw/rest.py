"""The app's REST routes, served locally by Chalice's own ``LocalGateway`` (what ``chalice local`` runs).

Runs in the runtime process, beside the WebSocket handlers, so that one ``make run`` serves the
whole app on one port. What API Gateway checks and Chalice's local mode does not (it lets every
request through an ``IAMAuthorizer``, with a warning) is added here: a route behind IAM needs a
SigV4 ``Authorization`` header of the right form, or it gets API Gateway's 403. The signature
itself is not verified: the gateway does not know the caller's secret (SSO and role credentials
rotate); its form is what a mis-configured client gets wrong.
"""

from __future__ import annotations

import base64
import warnings

from chalice.app import IAMAuthorizer
from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException, RouteMatcher

from testing.sigv4 import authorization_problem

MISSING_AUTHENTICATION = b'{"message": "Missing Authentication Token"}'


class RestApi:
    def __init__(self, app, config: Config) -> None:
        self._app = app
        self._gateway = LocalGateway(app, config)
        self._routes = RouteMatcher(list(app.routes))
        # Chalice warns on every request to an IAM route in local mode; this module does that check.
        warnings.filterwarnings("ignore", message="IAMAuthorizer is not a supported in local mode")

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict:
        """API Gateway's answer to one request: ``{"statusCode", "headers", "body"}`` (body as bytes)."""
        if self._needs_iam(method, path) and authorization_problem(_Caseless(headers)) is not None:
            return _answer(
                403, {"x-amzn-ErrorType": "MissingAuthenticationTokenException"}, MISSING_AUTHENTICATION
            )
        try:
            response = self._gateway.handle_request(method, path, headers, body)
        except LocalGatewayException as refused:
            return _answer(refused.CODE, refused.headers, refused.body)
        data = response.get("body") or b""
        if response.get("isBase64Encoded"):
            data = base64.b64decode(data)
        elif isinstance(data, str):
            data = data.encode()
        return _answer(response["statusCode"], response.get("headers") or {}, data)

    def _needs_iam(self, method: str, path: str) -> bool:
        try:
            route = self._routes.match_route(path.split("?", 1)[0]).route
        except ValueError:
            return False
        entry = self._app.routes.get(route, {}).get(method)
        return entry is not None and isinstance(entry.authorizer, IAMAuthorizer)


class _Caseless(dict):
    """Header lookup by any case, as HTTP names are."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__({name.lower(): value for name, value in headers.items()})

    def get(self, name, default=None):
        return super().get(name.lower(), default)


def _answer(status: int, headers: dict, body: bytes) -> dict:
    return {"statusCode": status, "headers": dict(headers), "body": body}
