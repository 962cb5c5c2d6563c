"""The app-side Redis client with ElastiCache IAM authentication, against a real TLS redis-server.

A plain redis-server cannot verify IAM signatures, so the test plays ElastiCache's part: it reads the
token the provider signed and makes it the ACL password of the IAM user. What is proven: the client
speaks TLS (rediss://, server certificate verified against a throwaway CA), authenticates as the
ElastiCache user id with the token as password, a wrong token is refused, and the token has the shape
ElastiCache expects.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.auth
import pytest
import redis

from chalicelib.redis_auth import (
    TOKEN_LIFETIME_SECONDS,
    IamTokenProvider,
    RedisAuthError,
    credential_provider,
)
from chalicelib.registry import ConnectionRegistry, RegistryUnavailable, redis_client
from chalicelib.settings import Settings
from testing.redis_server import RedisServer
from testing.tls import make_certificates

pytestmark = pytest.mark.redis_server

ROOT = Path(__file__).resolve().parents[2]
USER_ID = "ws-app-iam"
CACHE_NAME = "ws-broadcast-cache"
REGION = "eu-west-1"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path
    admin_password: str

    def admin(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca_file),
            username="admin",
            password=self.admin_password,
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[TlsRedis]:
    tmp = tmp_path_factory.mktemp("tls-redis")
    tls = make_certificates(tmp / "certificates")
    admin_password = secrets.token_hex(16)
    server = RedisServer(
        tmp / "redis",
        # No anonymous access: the default user is off, as on ElastiCache with a user group.
        *("--user", "default", "off"),
        *("--user", "admin", "on", f">{admin_password}", "~*", "&*", "+@all"),
        tls=tls,
    )
    server.start()
    try:
        yield TlsRedis(port=server.port, ca_file=tls.ca_cert, admin_password=admin_password)
    finally:
        server.stop()


def _iam_settings(port: int) -> Settings:
    return Settings.from_env(
        {
            "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "REDIS_AUTH": "iam",
            "REDIS_IAM_USER_ID": USER_ID,
            "REDIS_IAM_CACHE_NAME": CACHE_NAME,
            "AWS_REGION": REGION,
            "AUTH_MODE": "none",
        }
    )


def _session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name=REGION)


def _app_client(settings: Settings, provider, ca_file: Path) -> redis.Redis:
    """The client the way the app builds it: from REDIS_URL plus the credential provider."""
    return redis.Redis.from_url(
        settings.redis_url, credential_provider=provider, ssl_ca_certs=str(ca_file), socket_timeout=5
    )


def _app_user_access_string() -> list[str]:
    """The ElastiCache app user's access string, from infra/network.yaml: the test grants exactly it."""
    from chalice.package import YAMLTemplateSerializer

    template = YAMLTemplateSerializer().load_template((ROOT / "infra" / "network.yaml").read_text())
    return template["Resources"]["CacheAppUser"]["Properties"]["AccessString"].split()


def _set_iam_user_password(server: TlsRedis, password: str) -> None:
    with server.admin() as admin:
        admin.execute_command("ACL", "SETUSER", USER_ID, "reset", f">{password}", *_app_user_access_string())


def test_client_authenticates_over_tls_with_the_signed_token(tls_redis):
    # GIVEN settings for IAM mode and the provider the app builds from them
    settings = _iam_settings(tls_redis.port)
    provider = credential_provider(settings, _session())
    user, token = provider.get_credentials()
    # AND the server (standing in for ElastiCache) accepts exactly that token for the user
    _set_iam_user_password(tls_redis, token)
    # WHEN the app-side client connects over TLS and runs commands
    client = _app_client(settings, provider, tls_redis.ca_file)
    client.set("{wsbroadcast}:probe", "1")
    # THEN it is authenticated as the IAM user, on an encrypted connection
    assert user == USER_ID
    assert client.execute_command("ACL", "WHOAMI") in (USER_ID, USER_ID.encode())
    assert client.get("{wsbroadcast}:probe") == b"1"
    # AND the template's access string keeps dangerous commands from it
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    assert client.connection_pool.connection_kwargs.get("ssl_ca_certs") == str(tls_redis.ca_file)
    client.close()


def test_the_apps_registry_works_over_tls_with_iam_auth(tls_redis, monkeypatch):
    # GIVEN the throwaway CA is trusted the way a system CA is (ElastiCache's certificates are
    # publicly trusted, so the app passes no CA file: redis-py's default context must verify them)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    settings = _iam_settings(tls_redis.port)
    session = _session()
    # AND the server accepts the token this session signs (its signing time pinned to one second)
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)
    _, token = credential_provider(settings, session).get_credentials()
    _set_iam_user_password(tls_redis, token)
    # WHEN the app's own registry, built from settings exactly as in Lambda, is used
    registry = ConnectionRegistry.from_settings(settings, session)
    now_ms = int(time.time() * 1000)
    registry.add("AAAAconnA=", now_ms)
    registry.add("AAAAconnB=", now_ms)
    registry.remove("AAAAconnB=")
    # THEN it reached Redis over TLS as the IAM user
    assert registry.begin_publish("AAAAconnA=", now_ms, include_sender=True).live == ["AAAAconnA="]
    with tls_redis.admin() as admin:
        assert USER_ID in {client["user"] for client in admin.client_list()}


def test_the_apps_client_is_refused_with_a_wrong_token(tls_redis, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    settings = _iam_settings(tls_redis.port)
    _set_iam_user_password(tls_redis, "a-token-for-someone-else")
    registry = ConnectionRegistry.from_settings(settings, _session())
    with pytest.raises(RegistryUnavailable):
        registry.add("AAAAconnA=", int(time.time() * 1000))
    assert redis_client(settings, _session()).connection_pool.connection_kwargs["credential_provider"]


def test_a_wrong_token_is_refused(tls_redis):
    # GIVEN the server expects some other token for the IAM user
    settings = _iam_settings(tls_redis.port)
    provider = credential_provider(settings, _session())
    _set_iam_user_password(tls_redis, "not-" + provider.get_credentials()[1])
    # WHEN the client connects with its own token THEN authentication fails
    client = _app_client(settings, provider, tls_redis.ca_file)
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()


def test_plain_tcp_is_not_served(tls_redis):
    # The server only speaks TLS: a plain-text PING gets the connection closed or reset, never a PONG.
    answer = b""
    with socket.create_connection(("127.0.0.1", tls_redis.port), timeout=5) as plain:
        plain.sendall(b"PING\r\n")
        try:
            while chunk := plain.recv(1024):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"PONG" not in answer


def test_token_has_the_shape_elasticache_expects(monkeypatch):
    # GIVEN a fixed signing time
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)
    provider = IamTokenProvider(user_id=USER_ID, cache_name=CACHE_NAME, region=REGION, session=_session())
    # WHEN a token is signed
    user, token = provider.get_credentials()
    # THEN it is the presigned connect URL without scheme, for the cache name as host
    assert user == USER_ID
    assert not token.startswith(("http://", "https://"))
    parts = urlsplit("http://" + token)
    assert parts.hostname == CACHE_NAME
    assert parts.path == "/"
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert query["Action"] == "connect"
    assert query["User"] == USER_ID
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == str(TOKEN_LIFETIME_SECONDS) == "900"
    assert query["X-Amz-Date"] == "20260102T030405Z"
    assert query["X-Amz-Credential"] == f"AKIDEXAMPLE/20260102/{REGION}/elasticache/aws4_request"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64
    # AND the operation parameters come first, as ElastiCache's examples show
    assert token.startswith(f"{CACHE_NAME}/?Action=connect&User={USER_ID}&X-Amz-")
    # AND signing is deterministic for the same time and credentials (no hidden randomness)
    assert provider.sign_token() == token


def test_session_token_of_a_role_is_included():
    session = boto3.Session(
        aws_access_key_id="ASIAEXAMPLE",
        aws_secret_access_key="secret",
        aws_session_token="role/session+token",
    )
    provider = IamTokenProvider(user_id=USER_ID, cache_name=CACHE_NAME, region=REGION, session=session)
    query = parse_qs(urlsplit("http://" + provider.sign_token()).query)
    assert query["X-Amz-Security-Token"] == ["role/session+token"]


def test_token_is_cached_until_shortly_before_expiry():
    # GIVEN a provider on a controllable clock
    now = [1000.0]
    signed = []
    provider = IamTokenProvider(
        user_id=USER_ID, cache_name=CACHE_NAME, region=REGION, session=_session(), clock=lambda: now[0]
    )
    original = provider.sign_token
    provider.sign_token = lambda: signed.append(1) or f"token-{len(signed)}-{original()}"
    # WHEN asked repeatedly within the token's life THEN it signs once
    first = provider.get_credentials()
    now[0] += TOKEN_LIFETIME_SECONDS - 61
    assert provider.get_credentials() == first
    assert len(signed) == 1
    # WHEN the token is within a minute of expiry THEN a new one is signed
    now[0] += 1
    second = provider.get_credentials()
    assert second != first
    assert len(signed) == 2


def test_a_token_cached_before_a_frozen_pause_is_not_handed_out_past_its_life(monkeypatch):
    # GIVEN a container frozen for 20 minutes between invocations: Lambda's monotonic clock stood
    # still while the wall clock (and the token's X-Amz-Date) moved on
    wall = [1_800_000_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(time, "time", lambda: wall[0])
    provider = IamTokenProvider(user_id=USER_ID, cache_name=CACHE_NAME, region=REGION, session=_session())
    signed = []
    provider.sign_token = lambda: signed.append(1) or f"token-{len(signed)}"
    first = provider.get_credentials()
    wall[0] += 20 * 60
    # WHEN the next connection asks for credentials THEN a new token is signed: the old one expired
    assert provider.get_credentials() != first
    assert len(signed) == 2


def test_no_provider_without_iam():
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:6379/0", "AWS_REGION": REGION, "AUTH_MODE": "none"}
    )
    assert credential_provider(settings, _session()) is None


def test_missing_credentials_fail_with_a_clear_message():
    class NoCredentials:
        def get_credentials(self):
            return None

    provider = IamTokenProvider(
        user_id=USER_ID, cache_name=CACHE_NAME, region=REGION, session=NoCredentials()
    )
    with pytest.raises(RedisAuthError, match="no credentials"):
        provider.get_credentials()


def test_without_credentials_the_registry_fails_cleanly(tls_redis, monkeypatch):
    # A missing role session is a Redis failure like any other: the handler answers 503, no crash.
    class NoCredentials:
        def get_credentials(self):
            return None

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    registry = ConnectionRegistry.from_settings(_iam_settings(tls_redis.port), NoCredentials())
    with pytest.raises(RegistryUnavailable, match="no credentials"):
        registry.add("AAAAconnA=", int(time.time() * 1000))
