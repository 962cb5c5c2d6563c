"""The API Gateway Management API (``POST /@connections/{id}``): endpoint, client and error mapping.

The only module that talks to API Gateway. Failures come out as one small exception tree keyed by
what the caller must do: ``Gone`` (forget the connection), ``Throttled`` (retry later) and
``DeliveryError`` for everything else (log and count).
"""

from __future__ import annotations

import threading

import boto3
import botocore.exceptions
from botocore.config import Config

from chalicelib.settings import Settings


class DeliveryError(Exception):
    """A post failed; ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, connection_id: str, status: int | None, reason: str) -> None:
        super().__init__(f"{connection_id}: {status or 'no answer'} {reason}")
        self.connection_id = connection_id
        self.status = status
        self.reason = reason


class Gone(DeliveryError):
    """410: the connection is closed; it must leave the registry."""


class Throttled(DeliveryError):
    """429: API Gateway throttled the account; retry with backoff."""


def endpoint_url(settings: Settings, api_id: str, stage: str) -> str:
    """Where to post, derived as Chalice does from the event; botocore's variable wins when set.

    Using the execute-api host (not the event's ``domainName``) keeps posts working behind custom
    domain names, whose base path mappings do not serve ``@connections``.
    """
    if settings.management_api_endpoint_override:
        return settings.management_api_endpoint_override
    suffix = ".amazonaws.com.cn" if settings.aws_region.startswith("cn-") else ".amazonaws.com"
    return f"https://{api_id}.execute-api.{settings.aws_region}{suffix}/{stage}"


class ManagementApi:
    """One boto3 client for one endpoint; thread-safe, so the fan-out's workers share it."""

    def __init__(self, session: boto3.session.Session, endpoint: str, *, region: str, pool_size: int) -> None:
        self.endpoint = endpoint
        self._client = session.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            region_name=region,
            config=Config(
                max_pool_connections=pool_size,
                # The fan-out owns retries (with its deadline): botocore must not retry underneath it.
                retries={"total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
                tcp_keepalive=True,
            ),
        )

    def post(self, connection_id: str, data: bytes) -> None:
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=data)
        except botocore.exceptions.ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            reason = error.response.get("Error", {}).get("Code", "ClientError")
            kind = {410: Gone, 429: Throttled}.get(status, DeliveryError)
            raise kind(connection_id, status, reason) from error
        except botocore.exceptions.BotoCoreError as error:
            raise DeliveryError(connection_id, None, type(error).__name__) from error


class ManagementApis:
    """The clients of one container, one per endpoint, created on first use and then reused."""

    def __init__(self, settings: Settings, session: boto3.session.Session) -> None:
        self._settings = settings
        self._session = session
        self._clients: dict[str, ManagementApi] = {}
        self._lock = threading.Lock()

    def for_event(self, api_id: str, stage: str) -> ManagementApi:
        endpoint = endpoint_url(self._settings, api_id, stage)
        with self._lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = ManagementApi(
                    self._session,
                    endpoint,
                    region=self._settings.aws_region,
                    pool_size=self._settings.fanout_workers,
                )
            return self._clients[endpoint]
