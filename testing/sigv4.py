"""The SigV4 checks API Gateway makes on a Management API request, against what it EXPECTS.

The region, service, host and session token come from the stand-in's own configuration, never from
the request: a request signed for another region, dated an hour ago or carrying another token is
refused, as API Gateway refuses it. The signature itself is computed with botocore's algorithm.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# How far X-Amz-Date may be from the server's clock (AWS: 5 minutes).
MAX_CLOCK_SKEW = timedelta(minutes=5)

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Expected:
    """What a request must be signed for: the keys issued (access key -> secret and session token),
    the region and service of the API, and the Host it is served under."""

    keys: dict[str, tuple[str, str | None]]
    region: str
    host: str
    service: str = "execute-api"


def authorization_problem(headers) -> str | None:
    """None when the Authorization header has SigV4's form (what the local gateway checks), else why."""
    if not _AUTHORIZATION.match(headers.get("Authorization", "")):
        return "missing or malformed Authorization header"
    return None


def canonical_request(method: str, url: str, headers, body: bytes, region: str, service: str) -> str:
    """The canonical request SigV4 signs, over the headers the request says it signed."""
    match = _AUTHORIZATION.match(headers["Authorization"])
    return _signer(match, "unused", headers, region, service).canonical_request(
        _request(method, url, headers, body, match)
    )


def signature_problem(
    method: str, url: str, headers, body: bytes, expected: Expected, now: datetime | None = None
) -> str | None:
    """None when the request is signed as API Gateway requires, else what is wrong."""
    problem = authorization_problem(headers)
    if problem:
        return problem
    match = _AUTHORIZATION.match(headers["Authorization"])
    if (match["region"], match["service"]) != (expected.region, expected.service):
        return f"signed for {match['region']}/{match['service']}, not {expected.region}/{expected.service}"
    if match["key"] not in expected.keys:
        return f"unknown access key {match['key']!r}"
    secret, token = expected.keys[match["key"]]
    if headers.get("X-Amz-Security-Token") != token:
        return "the session token is not the one issued with this key"
    if headers.get("Host") != expected.host:
        return f"Host {headers.get('Host')!r} is not {expected.host!r}"
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "Host and X-Amz-Date must be signed"
    try:
        stamp = datetime.strptime(headers.get("X-Amz-Date", ""), SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        return "missing or malformed X-Amz-Date"
    if abs((now or datetime.now(UTC)) - stamp) > MAX_CLOCK_SKEW or match["date"] != stamp.strftime("%Y%m%d"):
        return f"X-Amz-Date {headers['X-Amz-Date']} is more than 5 minutes from now"
    signer = _signer(match, secret, headers, expected.region, expected.service)
    request = _request(method, url, headers, body, match)
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(signature, match["signature"]):
        return "signature does not match"
    return None


def _request(method: str, url: str, headers, body: bytes, match: re.Match) -> AWSRequest:
    lowered = {name.lower(): value for name, value in headers.items()}
    signed = match["signed"].split(";")
    request = AWSRequest(method=method, url=url, data=body, headers={name: lowered[name] for name in signed})
    request.context["timestamp"] = headers["X-Amz-Date"]
    return request


def _signer(match: re.Match, secret: str, headers, region: str, service: str) -> SigV4Auth:
    return SigV4Auth(Credentials(match["key"], secret, headers.get("X-Amz-Security-Token")), service, region)
