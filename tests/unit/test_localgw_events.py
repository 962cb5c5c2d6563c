"""The local gateway's event builders against recorded API Gateway events: pure, no server."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testing import apigw as events
from tests.support.apigw_events import recorded


def info(**overrides) -> events.ConnectionInfo:
    values = dict(
        connection_id="Xk2pQc_WIAMCK1Q=",
        connected_at_ms=1731324924553,
        source_ip="203.0.113.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
        domain_name="abcde12345.execute-api.us-east-1.amazonaws.com",
        stage="prod",
        api_id="abcde12345",
    )
    values.update(overrides)
    return events.ConnectionInfo(**values)


def keys(value, path=""):
    """Every key path in a JSON value, e.g. ``requestContext.identity.sourceIp``."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{path}{k}"} | keys(v, f"{path}{k}.")}
    return set()


def test_ids_are_16_characters_of_base64_ending_in_one_equals_sign():
    ids = {events.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{15}=", i) for i in ids)


def test_request_time_is_written_as_api_gateway_writes_it():
    # the recorded connect event's requestTimeEpoch and requestTime
    assert events.format_request_time(1731324924561) == "11/Nov/2024:11:35:24 +0000"
    assert events.format_request_time(1795654173215) == "26/Nov/2026:00:49:33 +0000"


def test_connect_event_has_the_recorded_fields_and_the_values_api_gateway_puts():
    # GIVEN the headers a browser sends and a query string
    client_headers = [
        ("Host", "abcde12345.execute-api.us-east-1.amazonaws.com"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"),
        ("X-Forwarded-For", "10.9.9.9"),  # a client's own forwarding header is replaced
    ]
    # WHEN the event is built
    event = events.connect_event(
        info(),
        headers=client_headers,
        query_string="room=lobby",
        local_port=443,
        scheme="https",
        epoch_ms=1731324924561,
    )
    # THEN it has exactly the recorded event's fields
    assert keys(event) == keys(recorded("connect"))
    assert event["headers"]["X-Forwarded-For"] == "203.0.113.7"
    assert event["headers"]["X-Forwarded-Port"] == "443"
    assert event["headers"]["X-Forwarded-Proto"] == "https"
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", event["headers"]["X-Amzn-Trace-Id"])
    assert event["queryStringParameters"] == {"room": "lobby"}
    context = event["requestContext"]
    assert context["requestTime"] == "11/Nov/2024:11:35:24 +0000"
    assert context["requestId"] == context["extendedRequestId"]
    expected = recorded("connect")["requestContext"]
    for fixed in ("routeKey", "eventType", "messageDirection", "stage", "connectedAt", "domainName", "apiId"):
        assert context[fixed] == expected[fixed], fixed


def test_connect_event_without_query_string_or_user_agent():
    event = events.connect_event(
        info(user_agent=None), headers=[("Host", "h")], query_string="", local_port=1
    )
    assert "queryStringParameters" not in event and "multiValueQueryStringParameters" not in event
    assert event["requestContext"]["identity"] == {"sourceIp": "203.0.113.7"}


def test_repeated_query_parameters_and_headers_keep_every_value_in_order():
    event = events.connect_event(
        info(), headers=[("X-A", "1"), ("X-A", "2")], query_string="a=1&a=2&b=", local_port=1
    )
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["headers"]["X-A"] == "2" and event["multiValueHeaders"]["X-A"] == ["1", "2"]


def test_message_event_has_the_recorded_fields():
    event = events.message_event(info(), body='{"type": 1}')
    assert keys(event) == keys(recorded("message"))
    assert event["body"] == '{"type": 1}' and event["isBase64Encoded"] is False
    assert event["requestContext"]["messageId"] != event["requestContext"]["requestId"]
    assert list(event["requestContext"])[:2] == ["routeKey", "messageId"]


@pytest.mark.parametrize(("code", "reason"), [(1000, "Connection Closed Normally"), (1001, "Going away")])
def test_disconnect_event_has_the_recorded_fields(code, reason):
    event = events.disconnect_event(info(), status_code=code, reason=reason)
    assert keys(event) == keys(recorded("disconnect"))
    assert event["requestContext"]["disconnectStatusCode"] == code
    assert event["requestContext"]["disconnectReason"] == reason
    assert event["headers"] == recorded("disconnect")["headers"]


@given(st.integers(min_value=0, max_value=2**41))
def test_request_time_always_matches_its_epoch(epoch_ms):
    written = events.format_request_time(epoch_ms)
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000", written)
    assert written == time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch_ms // 1000))


def test_internal_server_error_is_api_gateways_frame():
    connection_id, request_id = events.new_id(), events.new_id()
    frame = events.internal_server_error(connection_id, request_id)
    assert frame == (
        f'{{"message": "Internal server error", "connectionId":"{connection_id}", "requestId":"{request_id}"}}'
    )
    assert json.loads(frame) == {
        "message": "Internal server error",
        "connectionId": connection_id,
        "requestId": request_id,
    }
