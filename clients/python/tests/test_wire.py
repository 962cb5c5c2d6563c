"""Reading the service's frames: whatever arrives, the parser answers a frame or None, never raises;
what the service sends reads back as it was meant."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from ws_broadcast_client import RateLimited, ServiceError
from ws_broadcast_client.wire import Ack, ErrorReply, Message, Pong, parse_frame, subprotocols

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(
    ["type", "data", "received", "channel", "offset", "epoch", "action", "error", "lost"]
)
documents = st.dictionaries(fields, json_values, max_size=6)


@given(st.one_of(st.text(), st.binary(), json_values.map(json.dumps), documents.map(json.dumps)))
def test_any_frame_is_read_or_ignored_never_raises(text):
    assert parse_frame(text) is None or isinstance(parse_frame(text), Message | Ack | Pong | ErrorReply)


@given(
    type=st.integers(-(2**63), 2**63 - 1),
    data=json_values,
    channel=st.none() | st.from_regex(r"[A-Za-z0-9_.:@-]{1,64}", fullmatch=True),
    position=st.none() | st.tuples(st.integers(0, 2**53), st.text(min_size=1, max_size=20)),
)
def test_a_delivered_message_reads_back_with_its_offset_and_epoch(type, data, channel, position):
    document = {"type": type, "data": data, "received": 1795654176}
    if channel is not None:
        document["channel"] = channel
    if position is not None:
        document.update(offset=position[0], epoch=position[1])
    offset, epoch = position or (None, None)
    assert parse_frame(json.dumps(document)) == Message(type, data, 1795654176, channel, offset, epoch)


@given(offset=st.one_of(st.integers(max_value=-1), st.booleans(), st.text(), st.floats()))
def test_an_offset_that_is_not_a_count_orders_nothing(offset):
    message = parse_frame(json.dumps({"type": 1, "offset": offset, "epoch": "E"}))
    assert (message.offset, message.epoch) == (None, None)


def test_acks_pongs_and_errors():
    ack = parse_frame('{"action":"subscribed","channel":"c","recovered":false,"offset":9,"epoch":"E"}')
    assert ack == Ack("subscribed", "c", 9, "E", False)
    assert parse_frame('{"action":"resumed","recovered":true,"offset":3,"epoch":"E"}') == Ack(
        "resumed", None, 3, "E", True
    )
    assert parse_frame('{"action":"pong","received":1,"lost":true}') == Pong(lost=True)
    error = parse_frame('{"error":{"code":"rate_limited","message":"slow","retryAfterMs":250}}').error
    assert isinstance(error, RateLimited) and (error.code, error.retry_after) == ("rate_limited", 0.25)
    unknown = parse_frame('{"error":{"code":"brand_new","message":"?"}}').error
    assert type(unknown) is ServiceError and unknown.code == "brand_new"


def test_the_token_travels_as_a_subprotocol_beside_wsbroadcast():
    assert subprotocols(None) == ["wsbroadcast"]
    assert subprotocols("abc.def.ghi") == ["wsbroadcast", "bearer.abc.def.ghi"]
