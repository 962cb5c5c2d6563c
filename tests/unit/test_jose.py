"""The token parser and the JWK reader: whatever arrives, they answer with parts or their one error."""

from __future__ import annotations

import base64
import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from chalicelib import jose, jwk

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(st.text(), _JSON, max_size=6)


def _part(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(header=_OBJECTS, claims=_OBJECTS, signature=st.binary(max_size=300))
def test_a_compact_jws_parses_back_into_its_parts(header, claims, signature):
    head, body = _part(json.dumps(header).encode()), _part(json.dumps(claims).encode())
    jws = jose.parse(f"{head}.{body}.{_part(signature)}")
    assert (jws.header, jws.claims, jws.signature) == (header, claims, signature)
    assert jws.signing_input == f"{head}.{body}".encode()


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200) | st.text(max_size=60))
def test_any_text_is_parsed_or_refused_as_malformed_and_nothing_else(text):
    with contextlib.suppress(jose.MalformedToken):
        jose.parse(text)


@given(
    st.lists(
        st.sampled_from(["e30", "W10", "bnVsbA", "TmFO", "e30=", "e3 0", "", "!"]), min_size=3, max_size=3
    )
)
def test_a_part_that_is_not_an_unpadded_base64url_json_object_is_malformed(parts):
    token = ".".join(parts)
    try:
        jose.parse(token)
    except jose.MalformedToken:
        return
    assert parts[0] == parts[1] == "e30"  # only {} . {} . <base64url> parses


@given(
    st.dictionaries(
        st.sampled_from(["kty", "crv", "kid", "alg", "use", "n", "e", "x", "y", "key_ops"]), _JSON
    )
)
def test_any_jwk_is_a_key_or_unusable_and_nothing_else(entry):
    try:
        key = jwk.public_key(entry)
    except jwk.UnusableKey:
        return
    assert key.algorithm in ("RS256", "ES256")
