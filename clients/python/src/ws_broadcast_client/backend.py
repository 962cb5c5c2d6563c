"""Publish from a backend (another Lambda, a script, a server) through the app's ``POST /publish``.

The route is authorized with AWS IAM: requests are signed with SigV4 for ``execute-api`` by botocore,
which every AWS Python environment already has; elsewhere ``pip install ws-broadcast-client[sigv4]``.
botocore is imported on the first call, so the WebSocket client never needs it. From a shell:

    python -m ws_broadcast_client.backend https://ID.execute-api.REGION.amazonaws.com/api/publish \\
        '{"type": 7, "data": {"order": 42}, "channel": "orders"}'

The caller's credentials need ``execute-api:Invoke`` on that route. The answer is the delivery
report, ``{"recipients", "delivered", "gone", "failed"}``; a refusal raises ``PublishError`` with the
status and the service's ``{"code", "message"}``.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from ws_broadcast_client.errors import PublishError

_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def publish_from_backend(
    url: str, message: dict, *, session: Any = None, region: str | None = None, timeout: float = 30
) -> dict:
    """POST ``message`` (the WebSocket envelope: type, data, optional channel) to ``url``, signed.

    ``session``: a botocore (or boto3) session, whose credentials sign; the default one otherwise.
    ``region``: for a URL that does not name one (a local gateway); else the session's, or us-east-1.
    """
    try:
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
    except ImportError:
        raise ImportError(
            "publish_from_backend signs with botocore: pip install 'ws-broadcast-client[sigv4]'"
        ) from None
    session = session or botocore.session.get_session()
    body = json.dumps(message).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    credentials = session.get_credentials()
    if credentials is None:
        raise PublishError(0, {"code": "no_credentials", "message": "no AWS credentials to sign with"})
    SigV4Auth(credentials.get_frozen_credentials(), "execute-api", _region(url, region, session)).add_auth(
        request
    )
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=dict(request.headers.items()), method="POST"),
            timeout=timeout,
        ) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as refused:
        raise PublishError(refused.code, _error(refused.read())) from None


def _error(answer: bytes) -> dict:
    """The service's ``error`` object, or API Gateway's ``{"message"}`` (a refused signature)."""
    try:
        document = json.loads(answer)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return document["error"]
    if isinstance(document, dict) and "message" in document:
        return {"message": document["message"]}
    return {"message": answer.decode(errors="replace")}


def _region(url: str, region: str | None, session: Any) -> str:
    """The region in an execute-api host name; elsewhere (a local gateway) the one given, or the session's."""
    match = _EXECUTE_API_HOST.match(urlsplit(url).hostname or "")
    if match:
        return match["region"]
    if region:
        return region
    # boto3's Session has region_name; botocore's, the "region" config variable.
    named = getattr(session, "region_name", None) or getattr(session, "get_config_variable", lambda _: None)(
        "region"
    )
    return named or "us-east-1"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(json.dumps(publish_from_backend(argv[0], json.loads(argv[1]))))
    except PublishError as refused:
        print(f"publish refused: {refused}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
