"""Publish from a backend (another Lambda, a script, a server) through the app's ``POST /publish``.

The route is authorized with AWS IAM: requests are signed with SigV4 for ``execute-api`` using
botocore, which every AWS Python environment already has (no new dependency). Copy this file into
your backend, or run it:

    python clients/python/publish.py https://ID.execute-api.REGION.amazonaws.com/api/publish \\
        '{"type": 7, "data": {"order": 42}, "channel": "orders"}'

The caller's credentials need ``execute-api:Invoke`` on that route. The answer is the delivery
report, ``{"recipients", "delivered", "gone", "failed"}``, or ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


class PublishError(Exception):
    """The service refused the publish; ``status`` and the ``error`` object it answered."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.error = error


def publish(
    url: str, message: dict, *, session: boto3.session.Session | None = None, timeout: float = 30
) -> dict:
    """POST ``message`` (the WebSocket envelope: type, data, optional channel) to ``url``, signed."""
    session = session or boto3.session.Session()
    body = json.dumps(message).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(
        session.get_credentials().get_frozen_credentials(), "execute-api", _region(url, session)
    ).add_auth(request)
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=dict(request.headers.items()), method="POST"),
            timeout=timeout,
        ) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as refused:
        answer = refused.read()
        try:
            error = json.loads(answer).get("error") or {"message": answer.decode(errors="replace")}
        except ValueError:
            error = {"message": answer.decode(errors="replace")}
        raise PublishError(refused.code, error) from None


def _region(url: str, session: boto3.session.Session) -> str:
    """The region in an execute-api host name; elsewhere (a local gateway) the session's."""
    match = _EXECUTE_API_HOST.match(urlsplit(url).hostname or "")
    return match["region"] if match else (session.region_name or "us-east-1")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(json.dumps(publish(argv[0], json.loads(argv[1]))))
    except PublishError as refused:
        print(f"publish refused: {refused}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
