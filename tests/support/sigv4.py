"""Checks an incoming request's SigV4 signature as API Gateway does, with botocore's own algorithm."""

from __future__ import annotations

import hmac
import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


def signature_problem(
    method: str, url: str, headers, body: bytes, secrets: dict[str, str], service: str = "execute-api"
) -> str | None:
    """None when the request is signed correctly for ``service``, else what is wrong."""
    match = _AUTHORIZATION.match(headers.get("Authorization", ""))
    if not match:
        return "missing or malformed Authorization header"
    if match["service"] != service:
        return f"signed for {match['service']!r}, not {service!r}"
    secret = secrets.get(match["key"])
    if secret is None:
        return f"unknown access key {match['key']!r}"
    signed = match["signed"].split(";")
    request = AWSRequest(method=method, url=url, data=body, headers={name: headers[name] for name in signed})
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(
        Credentials(match["key"], secret, headers.get("X-Amz-Security-Token")), service, match["region"]
    )
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        return "signature does not match"
    return None
