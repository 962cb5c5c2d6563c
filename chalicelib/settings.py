"""The service's settings: one frozen object, read from the environment once per cold start.

Every other module receives a ``Settings``; none reads ``os.environ`` itself. A missing or
invalid variable raises ``SettingsError`` whose message names the variable and how to fix it,
so a misconfigured stage fails on its first invocation with an actionable log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from chalicelib.auth import canonical_origin

# API Gateway closes every WebSocket connection after 2 hours, whatever happens.
API_GATEWAY_MAX_CONNECTION_SECONDS = 7200
# API Gateway gives a WebSocket integration at most 29 seconds to answer.
API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS = 29

# Recipients one invocation delivers itself before a publish becomes queued jobs: at 64 posts in
# flight and 20 ms a post, about 3 s of a Lambda's time (bench/README.md, "broadcast at scale").
FANOUT_INLINE_MAX_DEFAULT = 10_000
# How far ahead of the post budget the queue admits broadcasts: seconds of MAX_POSTS_PER_SECOND. The
# queue's age alarm fires at 300 s, so an admitted backlog never trips it by itself.
FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT = 300.0
# Each stream keeps its last HISTORY_SIZE messages, the whole stream expiring HISTORY_TTL_SECONDS after
# its last publish: enough for a client to recover what it missed across a reconnect (README, History).
HISTORY_SIZE_DEFAULT = 100
HISTORY_TTL_SECONDS_DEFAULT = 600
# A presence answer lists at most this many users (Pusher's cap on a presence channel); its count is exact.
PRESENCE_MAX_DEFAULT = 100
# Registry shards: each is its own cluster slot; a small publish reads one key per shard.
MAX_REGISTRY_SHARDS = 1024

_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# CloudWatch namespaces: 1 to 255 of these characters, not only spaces; AWS/ is AWS's own.
_NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9.\-_/#: ]{1,255}$")
# Where the metrics go unless METRICS_NAMESPACE says otherwise (chalicelib/metrics.py, the template).
METRICS_NAMESPACE_DEFAULT = "WsBroadcast"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class RedisAuthMode(StrEnum):
    NONE = "none"  # REDIS_URL says it all
    IAM = "iam"  # ElastiCache IAM authentication


class AuthMode(StrEnum):
    JWT = "jwt"  # only clients with a valid token
    NONE = "none"  # anyone: written explicitly, never a default


# HS256 needs a key at least as long as its hash (RFC 7518, 3.2).
MIN_SECRET_BYTES = 32
# Clock skew tolerated on exp, nbf and iat between the token's issuer and Lambda.
AUTH_LEEWAY_SECONDS = 30
# ElastiCache user ids and replication group ids: a letter, then letters, digits and single hyphens.
_ELASTICACHE_ID_PATTERN = re.compile(r"^[A-Za-z](?:-?[A-Za-z0-9])*$")
_ELASTICACHE_ID_MAX_LENGTH = 40


@dataclass(frozen=True, kw_only=True)
class RedisAuth:
    """How the client authenticates to Redis beyond what REDIS_URL carries.

    ``mode="none"``: REDIS_URL says it all (no AUTH, or a password inside the URL for local use).
    ``mode="iam"``: ElastiCache IAM authentication; ``chalicelib.redis_auth`` signs a short-lived
    token with the function's role for ``user_id`` on the replication group ``cache_name``, in the
    region ``Settings.aws_region``.
    """

    mode: RedisAuthMode = RedisAuthMode.NONE
    user_id: str | None = None
    cache_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """Who may connect. ``mode="none"`` admits anyone (written explicitly, never a default).

    With ``mode="jwt"`` exactly one key source is set: ``jwks_url`` (RS256/ES256 keys of an identity
    provider), ``jwt_secret`` (an HS256 secret in the environment: local development) or
    ``jwt_secret_parameter`` (the name of an SSM Parameter Store SecureString holding it: prod).
    """

    mode: AuthMode
    jwks_url: str | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_secret_parameter: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = AUTH_LEEWAY_SECONDS


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str
    aws_region: str
    redis_cluster: bool = False
    redis_key_prefix: str = "wsbroadcast"
    redis_socket_timeout_seconds: float = 2.0
    fanout_workers: int = 64
    connection_max_age_seconds: int = API_GATEWAY_MAX_CONNECTION_SECONDS
    publish_deadline_seconds: float = 25.0
    management_api_endpoint_override: str | None = None
    redis_auth: RedisAuth = RedisAuth()
    auth: AuthSettings = AuthSettings(mode=AuthMode.NONE)
    allowed_origins: tuple[str, ...] = ()
    publish_rate_per_second: float = 5.0
    publish_burst: int = 20
    publish_rate_per_user: float = 0.0
    max_posts_per_second: int = 5000
    channels_per_connection: int = 20
    websocket_api_id: str | None = None
    websocket_api_stage: str = "api"
    registry_shards: int = 1
    fanout_queue_url: str | None = None
    fanout_inline_max: int = FANOUT_INLINE_MAX_DEFAULT
    fanout_queue_backlog_seconds: float = FANOUT_QUEUE_BACKLOG_SECONDS_DEFAULT
    history_size: int = HISTORY_SIZE_DEFAULT
    history_ttl_seconds: int = HISTORY_TTL_SECONDS_DEFAULT
    presence_max: int = PRESENCE_MAX_DEFAULT
    metrics_namespace: str = METRICS_NAMESPACE_DEFAULT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build and validate settings from an environment mapping (``os.environ`` in Lambda)."""
        return cls(
            redis_url=_redis_url(env),
            aws_region=_region(env),
            redis_cluster=_flag(env, "REDIS_CLUSTER"),
            redis_key_prefix=_key_prefix(env),
            redis_socket_timeout_seconds=_number(
                env, "REDIS_SOCKET_TIMEOUT_SECONDS", float, low=0.05, high=30
            ),
            fanout_workers=_number(env, "FANOUT_WORKERS", int, low=1, high=512),
            connection_max_age_seconds=_number(
                env,
                "CONNECTION_MAX_AGE_SECONDS",
                int,
                low=1,
                high=API_GATEWAY_MAX_CONNECTION_SECONDS,
            ),
            publish_deadline_seconds=_number(
                env,
                "PUBLISH_DEADLINE_SECONDS",
                float,
                low=0.1,
                high=API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS - 1,
            ),
            management_api_endpoint_override=_endpoint_override(env),
            redis_auth=_redis_auth(env),
            auth=_auth(env),
            allowed_origins=_origins(env),
            publish_rate_per_second=_number(env, "PUBLISH_RATE_PER_SECOND", float, low=0, high=1000),
            publish_burst=_number(env, "PUBLISH_BURST", int, low=1, high=100_000),
            publish_rate_per_user=_number(env, "PUBLISH_RATE_PER_USER", float, low=0, high=100_000),
            max_posts_per_second=_number(env, "MAX_POSTS_PER_SECOND", int, low=0, high=1_000_000),
            channels_per_connection=_number(env, "CHANNELS_PER_CONNECTION", int, low=1, high=1000),
            websocket_api_id=env.get("WEBSOCKET_API_ID", "").strip() or None,
            websocket_api_stage=env.get("WEBSOCKET_API_STAGE", "").strip() or _default("WEBSOCKET_API_STAGE"),
            registry_shards=_number(env, "REGISTRY_SHARDS", int, low=1, high=MAX_REGISTRY_SHARDS),
            fanout_queue_url=_queue_url(env),
            fanout_inline_max=_number(env, "FANOUT_INLINE_MAX", int, low=1, high=1_000_000),
            fanout_queue_backlog_seconds=_number(
                env,
                "FANOUT_QUEUE_BACKLOG_SECONDS",
                float,
                low=1,
                high=API_GATEWAY_MAX_CONNECTION_SECONDS,
            ),
            metrics_namespace=_metrics_namespace(env),
            history_size=_number(env, "HISTORY_SIZE", int, low=0, high=10_000),
            history_ttl_seconds=_number(
                env,
                "HISTORY_TTL_SECONDS",
                int,
                low=1,
                high=API_GATEWAY_MAX_CONNECTION_SECONDS,
            ),
            presence_max=_number(env, "PRESENCE_MAX", int, low=1, high=10_000),
        )

    @property
    def websocket_api(self) -> tuple[str, str] | None:
        """The WebSocket API a backend publish posts through: (api id, stage), or None when unknown.

        With AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI set (the local gateway), that endpoint is used
        and the id does not matter.
        """
        if self.websocket_api_id:
            return self.websocket_api_id, self.websocket_api_stage
        if self.management_api_endpoint_override:
            return "local", self.websocket_api_stage
        return None


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("REDIS_URL", "").strip()
    if not url:
        raise SettingsError(
            "REDIS_URL is not set: set it to redis://HOST:6379/0, or rediss://:PASSWORD@HOST:6379/0 "
            "for ElastiCache with in-transit encryption and AUTH (in .chalice/config.json, "
            "under stages.<stage>.environment_variables)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise SettingsError(
            f"REDIS_URL must look like redis://HOST:PORT/DB or rediss://HOST:PORT/DB, got {_redact(url)!r}"
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise SettingsError(f"REDIS_URL has an invalid port: {_redact(url)!r}") from None
    return url


def _region(env: Mapping[str, str]) -> str:
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        raise SettingsError(
            "AWS_REGION is not set: Lambda sets it; locally, export AWS_DEFAULT_REGION=us-east-1 "
            "(the Management API endpoint and its request signatures need a region)"
        )
    return region


def _key_prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("REDIS_KEY_PREFIX", _default("REDIS_KEY_PREFIX"))
    if not _PREFIX_PATTERN.match(prefix):
        raise SettingsError(
            "REDIS_KEY_PREFIX must be 1 to 64 characters of letters, digits, '_', '.', ':' or '-' "
            f"(no braces: the service adds the cluster hash tag itself), got {prefix!r}"
        )
    return prefix


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name} must be true or false, got {env[name]!r}")


def _default(name: str):
    """The default of the variable ``name``: the default of its field (the lowercased name), the one
    place it is written."""
    return Settings.__dataclass_fields__[name.lower()].default


def _number(env, name, kind, *, low, high):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return _default(name)
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a {kind.__name__} from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be from {low} to {high}, got {raw!r}")
    return value


def _endpoint_override(env: Mapping[str, str]) -> str | None:
    """botocore's own variable for this service; when set it wins over the event-derived endpoint."""
    url = env.get("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", "").strip()
    if not url:
        return None
    if urlsplit(url).scheme not in ("http", "https"):
        raise SettingsError(
            "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI must be an http(s) URL including the stage, "
            f"e.g. http://127.0.0.1:8000/api, got {url!r}"
        )
    return url.rstrip("/")


def _queue_url(env: Mapping[str, str]) -> str | None:
    """FANOUT_QUEUE_URL: unset, every publish is delivered by the invocation that received it."""
    url = env.get("FANOUT_QUEUE_URL", "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.count("/") != 2:
        raise SettingsError(
            "FANOUT_QUEUE_URL must be an SQS queue URL, "
            f"https://sqs.REGION.amazonaws.com/ACCOUNT/NAME (the template sets it), got {url!r}"
        )
    return url


def _metrics_namespace(env: Mapping[str, str]) -> str:
    """METRICS_NAMESPACE: where the functions' CloudWatch metrics go (the dashboard and alarms read it)."""
    namespace = env.get("METRICS_NAMESPACE", "").strip() or METRICS_NAMESPACE_DEFAULT
    if not _NAMESPACE_PATTERN.match(namespace) or namespace.startswith("AWS/"):
        raise SettingsError(
            "METRICS_NAMESPACE must be a CloudWatch namespace: 1 to 255 letters, digits, spaces or "
            f"'. - _ / # :', not starting with AWS/ (AWS's own), e.g. WsBroadcast, got {namespace!r}"
        )
    return namespace


def _redact(url: str) -> str:
    """Hide a password in a URL before it goes into an error message or a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _redis_auth(env: Mapping[str, str]) -> RedisAuth:
    mode = env.get("REDIS_AUTH", "").strip().lower() or "none"
    if mode not in tuple(RedisAuthMode):
        raise SettingsError(
            f"REDIS_AUTH must be one of {', '.join(RedisAuthMode)} (none: REDIS_URL says it all; "
            f"iam: ElastiCache IAM authentication), got {env.get('REDIS_AUTH')!r}"
        )
    user_id = env.get("REDIS_IAM_USER_ID", "").strip()
    cache_name = env.get("REDIS_IAM_CACHE_NAME", "").strip()
    if mode == RedisAuthMode.NONE:
        for name, value in (("REDIS_IAM_USER_ID", user_id), ("REDIS_IAM_CACHE_NAME", cache_name)):
            if value:
                raise SettingsError(
                    f"{name} is set but REDIS_AUTH is 'none': set REDIS_AUTH=iam to use ElastiCache "
                    f"IAM authentication, or remove {name}"
                )
        return RedisAuth()
    url = urlsplit(env.get("REDIS_URL", "").strip())
    if url.scheme != "rediss":
        raise SettingsError(
            "REDIS_AUTH=iam needs in-transit encryption: REDIS_URL must start with rediss://, "
            f"got {url.scheme or 'nothing'}://"
        )
    if url.username or url.password:
        raise SettingsError(
            "REDIS_AUTH=iam signs a token for REDIS_IAM_USER_ID: REDIS_URL must carry no user or "
            "password, e.g. rediss://HOST:6379/0"
        )
    return RedisAuth(
        mode=RedisAuthMode(mode),
        user_id=_elasticache_id(
            "REDIS_IAM_USER_ID", user_id, "the ElastiCache user id with authentication mode iam"
        ),
        cache_name=_elasticache_id(
            "REDIS_IAM_CACHE_NAME", cache_name, "the ElastiCache replication group id (lowercase)"
        ).lower(),
    )


def _elasticache_id(name: str, value: str, what: str) -> str:
    if not value:
        raise SettingsError(f"{name} is not set: REDIS_AUTH=iam needs it; set it to {what}")
    if len(value) > _ELASTICACHE_ID_MAX_LENGTH or not _ELASTICACHE_ID_PATTERN.match(value):
        raise SettingsError(
            f"{name} must be {what}: 1 to {_ELASTICACHE_ID_MAX_LENGTH} letters, digits and single "
            f"hyphens, starting with a letter, got {value!r}"
        )
    return value


def _auth(env: Mapping[str, str]) -> AuthSettings:
    mode = env.get("AUTH_MODE", "").strip().lower()
    if mode not in tuple(AuthMode):
        raise SettingsError(
            f"AUTH_MODE must be jwt or none, got {env.get('AUTH_MODE', '')!r}: jwt admits only clients "
            "with a valid token (set AUTH_JWKS_URL, AUTH_JWT_SECRET_PARAMETER or AUTH_JWT_SECRET, plus "
            "AUTH_ISSUER and AUTH_AUDIENCE); none admits anyone and must be written explicitly"
        )
    names = ("AUTH_JWKS_URL", "AUTH_JWT_SECRET", "AUTH_JWT_SECRET_PARAMETER", "AUTH_ISSUER", "AUTH_AUDIENCE")
    values = {name: env.get(name, "").strip() for name in names}
    if mode == AuthMode.NONE:
        for name, value in values.items():
            if value:
                raise SettingsError(
                    f"{name} is set but AUTH_MODE is none, which admits anyone: set AUTH_MODE=jwt to "
                    f"verify tokens, or remove {name}"
                )
        return AuthSettings(mode=AuthMode.NONE)
    sources = [name for name in names[:3] if values[name]]
    if len(sources) != 1:
        raise SettingsError(
            "AUTH_MODE=jwt needs exactly one key source, got "
            f"{', '.join(sources) or 'none'}: AUTH_JWKS_URL (an identity provider's JWKS, e.g. "
            "https://cognito-idp.REGION.amazonaws.com/POOL_ID/.well-known/jwks.json), "
            "AUTH_JWT_SECRET_PARAMETER (an SSM SecureString holding an HS256 secret) or AUTH_JWT_SECRET "
            "(the secret itself: local development only)"
        )
    for name in ("AUTH_ISSUER", "AUTH_AUDIENCE"):
        if not values[name]:
            raise SettingsError(
                f"{name} is not set: AUTH_MODE=jwt checks every token's "
                f"{'iss' if name == 'AUTH_ISSUER' else 'aud (or client_id)'} claim against it"
            )
    jwks_url = values["AUTH_JWKS_URL"] or None
    if jwks_url and not _is_https_or_local(jwks_url):
        raise SettingsError(f"AUTH_JWKS_URL must be an https:// URL, got {jwks_url!r}")
    secret = values["AUTH_JWT_SECRET"] or None
    if secret is not None and env.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda_"):
        raise SettingsError(
            "AUTH_JWT_SECRET is for local development: a secret in a function's environment is readable by "
            "anyone who may read its configuration. In Lambda, put it in an SSM SecureString and set "
            "AUTH_JWT_SECRET_PARAMETER to its name (make secret), or use AUTH_JWKS_URL"
        )
    if secret is not None:
        check_secret_length(secret, "AUTH_JWT_SECRET")
    return AuthSettings(
        mode=AuthMode.JWT,
        jwks_url=jwks_url,
        jwt_secret=secret,
        jwt_secret_parameter=values["AUTH_JWT_SECRET_PARAMETER"] or None,
        issuer=values["AUTH_ISSUER"],
        audience=values["AUTH_AUDIENCE"],
    )


def check_secret_length(secret: str, source: str) -> None:
    """Wherever an HS256 secret comes from (the environment, SSM), a short one is refused: a 3-byte
    secret can be guessed, and every token it signs would verify. ``source`` names where it came from;
    the message never holds the secret."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"{source} must be at least {MIN_SECRET_BYTES} bytes for HS256: put a longer secret there "
            "(make secret writes 64 random ones; or python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )


def _is_https_or_local(url: str) -> bool:
    """https everywhere; plain http only to this machine, for tests and local identity providers."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")
    )


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """ALLOWED_ORIGINS: scheme://host[:port] entries, kept as browsers send Origin (auth.canonical_origin)."""
    origins = []
    for part in env.get("ALLOWED_ORIGINS", "").split(","):
        if not part.strip():
            continue
        origin = canonical_origin(part.strip().rstrip("/"))
        if origin is None:
            raise SettingsError(
                f"ALLOWED_ORIGINS entries must look like https://app.example.com (scheme, host, optional "
                f"port, no path), got {part.strip()!r}"
            )
        origins.append(origin)
    return tuple(origins)
