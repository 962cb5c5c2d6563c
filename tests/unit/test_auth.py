"""The handshake's decision: where the token travels, the subprotocol answered, the Origin check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.auth import Forbidden, Gatekeeper, Unauthorized, canonical_origin


class AcceptsOneToken:
    def verify(self, token: str) -> dict:
        if token != "good.token.here":
            raise Unauthorized("the token is not valid")
        return {"sub": "alice"}


@pytest.fixture
def gatekeeper() -> Gatekeeper:
    return Gatekeeper(AcceptsOneToken(), ("https://app.example.com",))


@pytest.mark.parametrize(
    ("headers", "query", "subprotocol"),
    [
        ({"sec-websocket-protocol": "wsbroadcast, bearer.good.token.here"}, {}, "wsbroadcast"),
        ({"authorization": "Bearer good.token.here"}, {}, None),
        ({"authorization": "bearer   good.token.here "}, {}, None),
        ({}, {"token": "good.token.here"}, None),
    ],
)
def test_a_token_is_accepted_in_each_of_its_three_places(gatekeeper, headers, query, subprotocol):
    admission = gatekeeper.admit(headers, query)
    assert admission.principal == "alice"
    assert admission.subprotocol == subprotocol


def test_the_bearer_subprotocol_is_never_selected(gatekeeper):
    # A browser that offered only the token gets no subprotocol back (and fails the handshake itself):
    # echoing bearer.<jwt> would put the token in a response header.
    admission = gatekeeper.admit({"sec-websocket-protocol": "bearer.good.token.here"}, {})
    assert admission.subprotocol is None


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, {}),
        ({"authorization": "Basic dXNlcjpwYXNz"}, {}),
        ({"authorization": "Bearer "}, {}),
        ({}, {"token": ""}),
        ({"sec-websocket-protocol": "wsbroadcast"}, {}),
    ],
)
def test_without_a_token_the_handshake_is_refused_with_401(gatekeeper, headers, query):
    with pytest.raises(Unauthorized) as refusal:
        gatekeeper.admit(headers, query)
    assert refusal.value.status == 401
    assert "token is required" in refusal.value.text


def test_an_invalid_token_is_refused_with_401(gatekeeper):
    with pytest.raises(Unauthorized):
        gatekeeper.admit({"authorization": "Bearer forged"}, {})


def test_an_origin_not_on_the_list_is_refused_with_403_before_the_token_is_looked_at(gatekeeper):
    with pytest.raises(Forbidden) as refusal:
        gatekeeper.admit({"origin": "https://evil.example", "authorization": "Bearer good.token.here"}, {})
    assert refusal.value.status == 403


def test_an_allowed_origin_and_no_origin_at_all_are_let_in(gatekeeper):
    token = {"authorization": "Bearer good.token.here"}
    assert gatekeeper.admit({**token, "origin": "https://app.example.com"}, {}).principal == "alice"
    # Non-browser clients send no Origin: the allow-list is a browser protection (OWASP ASVS V4.4).
    assert gatekeeper.admit(token, {}).principal == "alice"


def test_auth_mode_none_admits_anyone_and_still_selects_the_subprotocol():
    gatekeeper = Gatekeeper(None)
    admission = gatekeeper.admit({"sec-websocket-protocol": "wsbroadcast"}, {})
    assert admission.principal is None
    assert admission.subprotocol == "wsbroadcast"
    assert Gatekeeper(None).admit({}, {}).subprotocol is None


@pytest.mark.parametrize(
    "origin",
    [
        "https://APP.example.com",
        "HTTPS://app.example.com",
        "https://app.example.com:443",
        "https://App.Example.COM:443",
    ],
)
def test_an_allowed_origin_matches_whatever_the_case_of_its_scheme_and_host_and_with_its_default_port(
    gatekeeper, origin
):
    headers = {"origin": origin, "authorization": "Bearer good.token.here"}
    assert gatekeeper.admit(headers, {}).principal == "alice"


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil",
        "null",
        "https://",
    ],
)
def test_another_scheme_port_or_host_is_still_refused(gatekeeper, origin):
    with pytest.raises(Forbidden):
        gatekeeper.admit({"origin": origin, "authorization": "Bearer good.token.here"}, {})


def test_an_allowed_origin_listed_with_its_default_port_matches_one_sent_without_it():
    gatekeeper = Gatekeeper(AcceptsOneToken(), ("HTTP://Localhost:80",))
    headers = {"origin": "http://localhost", "authorization": "Bearer good.token.here"}
    assert gatekeeper.admit(headers, {}).principal == "alice"


_HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=_HOSTS,
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
    flips=st.lists(st.booleans(), min_size=1, max_size=20),
)
def test_canonical_origin_ignores_case_and_default_ports_and_is_idempotent(scheme, host, port, flips):
    origin = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    shouted = "".join(c.upper() if flips[i % len(flips)] else c for i, c in enumerate(origin))
    canonical = canonical_origin(origin)
    assert canonical_origin(shouted) == canonical == canonical_origin(canonical)
    default = {"http": 80, "https": 443}[scheme]
    assert canonical == f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


@given(st.text(max_size=60))
def test_canonical_origin_never_raises_on_any_header_value(value):
    canonical = canonical_origin(value)
    assert canonical is None or canonical_origin(canonical) == canonical
