"""Our post signer adds exactly the headers botocore's ``SigV4Auth`` adds, for any post: a signing
difference would be a 403 on every post in AWS, where no test of ours runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from unittest import mock
from urllib.parse import quote

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.management_api.sigv4 import PostSigner, payload_hash

ORIGIN = "https://abc123.execute-api.eu-west-1.amazonaws.com"


def botocores_headers(
    credentials: ReadOnlyCredentials, host: str, path: str, payload: bytes, region: str, service: str
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=ORIGIN + path, data=payload, headers={"Host": host})
    SigV4Auth(credentials, service, region).add_auth(request)
    return {name: value for name, value in request.headers.items() if name != "Host"}


def signing_clock_at(moment: datetime):
    """botocore's signing clock, stopped at ``moment``: both signers read it."""
    return mock.patch.object(botocore.auth, "get_current_datetime", lambda *args, **kwargs: moment)


# Any text a header may carry (no line breaks: those would not survive the request's encoding either).
header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
credentials = st.builds(
    ReadOnlyCredentials,
    access_key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=20),
    secret_key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    token=st.one_of(st.none(), st.just(""), header_text),
)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))


@given(
    connection_id=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
    stage_path=st.sampled_from(["", "/api", "/prod", "/v1/ws", "/a/../b", "/~user/./x"]),
    payload=st.binary(max_size=200),
    creds=credentials,
    region=st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"]),
    host=st.sampled_from(["abc123.execute-api.eu-west-1.amazonaws.com", "127.0.0.1:8080", "  spaced  host "]),
    moment=moments,
)
def test_a_post_is_signed_exactly_as_botocore_signs_it(
    connection_id, stage_path, payload, creds, region, host, moment
):
    path = f"{stage_path}/@connections/{quote(connection_id, safe='')}"
    signer = PostSigner(host=host, region=region, service="execute-api")
    with signing_clock_at(moment):
        ours = signer.headers(creds, path, payload_hash(payload))
        theirs = botocores_headers(creds, host, path, payload, region, "execute-api")
    assert list(ours.items()) == list(theirs.items())  # the same headers, added in the same order


def test_the_signing_key_follows_the_day_and_the_secret():
    """The key is kept between posts: a kept key from yesterday, or from a rotated secret, would sign
    every post wrong after midnight or after a credentials refresh."""
    signer = PostSigner(host="h.example", region="us-east-1", service="execute-api")
    path, body = "/api/@connections/L0SM9cOFvHcCIhw%3D", b'{"type":99}'
    old, rotated = (
        ReadOnlyCredentials("AKIDEXAMPLE", "old", None),
        ReadOnlyCredentials("AKIDEXAMPLE", "new", "t"),
    )
    for moment in (
        datetime(2026, 12, 3, 23, 59, 59),
        datetime(2026, 12, 3, 23, 59, 59) + timedelta(seconds=1),
    ):
        for creds in (old, rotated, old):
            with signing_clock_at(moment):
                assert signer.headers(creds, path, payload_hash(body)) == botocores_headers(
                    creds, "h.example", path, body, "us-east-1", "execute-api"
                )


def test_an_empty_payload_hashes_as_botocore_hashes_it():
    assert payload_hash(b"") == botocore.auth.EMPTY_SHA256_HASH
