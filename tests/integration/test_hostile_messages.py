"""Hostile messages through the message handler: each gets its documented error, none is published."""

import json

import pytest

from chalicelib import envelope

DEEPEST = '{"type": 1, "data": ' + "[" * (envelope.MAX_DEPTH - 1) + "]" * (envelope.MAX_DEPTH - 1) + "}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"type": 1, "data": 1e400}', envelope.INVALID_JSON),
        ('{"type": 1, "data": [-1e999, 1E309]}', envelope.INVALID_JSON),
        ('{"type": 1, "data": ' + "[" * 981 + "]" * 981 + "}", envelope.TOO_DEEP),
        ('{"type": ' + "9" * 5000 + "}", envelope.INVALID_TYPE),
        ('{"type": 1, "data": ' + "9" * 5000 + "}", envelope.INTEGER_TOO_LONG),
        ("\x00" + "\x00".join('{"type": 1, "data": 2}'), envelope.INVALID_JSON),
    ],
    ids=["1e400", "infinities", "981-levels-of-data", "long-type", "long-data", "nul-interleaved"],
)
def test_a_hostile_message_gets_its_error_and_reaches_no_one(gateway, management_api, body, code):
    # GIVEN two connected clients
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    # WHEN alice sends a message that used to be published as non-JSON, crash the handler or misparse
    response = gateway.send(alice, body)
    # THEN she alone gets one error reply with its code, and bob gets nothing
    assert response == {"statusCode": 400}
    (reply,) = management_api.wait_for(alice.connection_id, 1)
    assert reply["error"]["code"] == code
    assert management_api.received(bob.connection_id) == []


def test_the_deepest_message_allowed_is_published(gateway, management_api):
    alice, _ = gateway.connect()
    bob, _ = gateway.connect()
    assert gateway.send(alice, DEEPEST) == {"statusCode": 200}
    (message,) = management_api.wait_for(bob.connection_id, 1)
    assert message["data"] == json.loads(DEEPEST)["data"]
