"""ElastiCache IAM authentication for the Redis client: a short-lived token instead of a password.

With ``REDIS_AUTH=iam`` no cache password exists anywhere. At connect time the client asks
``IamTokenProvider`` for credentials; it signs, locally and without any network call, a SigV4
presigned request ``GET http://{cache_name}/?Action=connect&User={user_id}`` for the service
``elasticache`` with the function role's credentials, and passes the URL without its scheme as the
password of ``user_id`` (AUTH/HELLO). ElastiCache checks the signature and the role's
``elasticache:Connect`` permission on the replication group and the user.

A token is valid for 15 minutes (``TOKEN_LIFETIME_SECONDS``) to *open* a connection; an open
connection stays authenticated (ElastiCache closes IAM connections after 12 hours, and redis-py
then reconnects with a fresh token). The provider caches a token and signs a new one
``TOKEN_REFRESH_MARGIN_SECONDS`` before expiry, so a connection burst costs one signature. The cache
is timed on the wall clock, as the token's own X-Amz-Date is: Lambda's monotonic clock stands still
while a container is frozen between invocations, and would hand out an expired token after a pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import botocore.session
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from redis.credentials import CredentialProvider
from redis.exceptions import RedisError

from chalicelib.settings import RedisAuthMode, Settings

SERVICE_NAME = "elasticache"
# ElastiCache accepts at most 15 minutes.
TOKEN_LIFETIME_SECONDS = 900
# Sign a fresh token this long before the cached one expires (clock skew, slow handshakes).
TOKEN_REFRESH_MARGIN_SECONDS = 60


class RedisAuthError(RedisError):
    """No token can be signed: the session has no AWS credentials.

    A ``RedisError``, so callers that handle Redis failures (the registry) handle this one too.
    """


class IamTokenProvider(CredentialProvider):
    """redis-py credential provider yielding ``(user_id, token)`` for ElastiCache IAM authentication.

    ``session`` is a boto3 or botocore session (anything with ``get_credentials()``); credentials are
    read at every signature, so a rotated role session is picked up. ``clock`` returns wall-clock
    seconds (``time.time`` by default) and exists for tests.
    """

    def __init__(
        self,
        *,
        user_id: str,
        cache_name: str,
        region: str,
        session: Any,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.user_id = user_id
        self.cache_name = cache_name
        self.region = region
        self._session = session
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._refresh_at:
                self._token = self.sign_token()
                self._refresh_at = now + TOKEN_LIFETIME_SECONDS - TOKEN_REFRESH_MARGIN_SECONDS
            return self.user_id, self._token

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def sign_token(self) -> str:
        """A new token: the presigned connect URL without its ``http://`` scheme."""
        credentials = self._session.get_credentials()
        if credentials is None:
            raise RedisAuthError(
                "REDIS_AUTH=iam but the AWS session has no credentials to sign an ElastiCache token "
                "(in Lambda the function's role provides them; locally set AWS_PROFILE or AWS_* keys)"
            )
        request = AWSRequest(
            method="GET",
            url=f"http://{self.cache_name}/",
            params={"Action": "connect", "User": self.user_id},
        )
        SigV4QueryAuth(
            credentials.get_frozen_credentials(), SERVICE_NAME, self.region, expires=TOKEN_LIFETIME_SECONDS
        ).add_auth(request)
        return request.url.removeprefix("http://")


def credential_provider(settings: Settings, session: Any = None) -> CredentialProvider | None:
    """The credential provider ``settings`` ask for, or ``None`` when REDIS_URL says it all.

    Use it as ``redis.Redis.from_url(settings.redis_url, credential_provider=...)``. ``session`` is
    the app's boto3 session; without one, botocore's default credential chain is used.
    """
    auth = settings.redis_auth
    if auth.mode != RedisAuthMode.IAM:
        return None
    if session is None:
        session = botocore.session.get_session()
    return IamTokenProvider(
        user_id=auth.user_id, cache_name=auth.cache_name, region=settings.aws_region, session=session
    )
