"""The wire format: what a sender may send, what recipients get, and the one error reply."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import envelope
from chalicelib.envelope import InvalidMessage, Publication

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=40,
)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


# Text built from JSON's own punctuation, digits, escapes and control characters: deep, broken and
# hostile documents far more often than arbitrary text is.
json_soup = st.text(st.sampled_from('[]{}",:-+.eE0123456789\\ \t\n\x00\x1f\ufefftrufalsnNIy'), max_size=3000)
any_text = st.text(st.characters(exclude_categories=()))  # lone surrogates too


@given(st.one_of(any_text, json_soup, st.binary(), st.none()))
def test_no_input_crashes_the_parser(body):
    # GIVEN any body at all / WHEN it is parsed / THEN it is a Publication, a ping or a coded InvalidMessage
    try:
        parsed = envelope.parse(body)
        assert parsed is envelope.PING or isinstance(parsed, Publication)
    except InvalidMessage as problem:
        assert problem.code in {
            envelope.INVALID_JSON,
            envelope.TOO_DEEP,
            envelope.INTEGER_TOO_LONG,
            envelope.NOT_AN_OBJECT,
            envelope.MISSING_TYPE,
            envelope.INVALID_TYPE,
            envelope.INVALID_ECHO,
            envelope.MESSAGE_TOO_LARGE,
        }
        assert problem.message


@given(
    message_type=int64,
    data=json_values,
    echo=st.none() | st.booleans(),
    extra=st.dictionaries(
        st.text().filter(lambda k: k not in {"type", "data", "echo"}), json_values, max_size=3
    ),
    received=st.integers(min_value=0, max_value=2**40),
)
def test_every_valid_message_round_trips(message_type, data, echo, extra, received):
    # GIVEN a valid message, with unknown extra fields
    inbound = {**extra, "type": message_type, "data": data}
    if echo is not None:
        inbound["echo"] = echo
    # WHEN it is parsed and encoded for the recipients
    publication = envelope.parse(json.dumps(inbound))
    outbound = json.loads(envelope.encode_publication(publication, received))
    # THEN they get exactly type, data and received, with data equal to what was sent
    assert outbound == {"type": message_type, "data": data, "received": received}
    assert publication.echo is bool(echo)


def test_the_reference_message_is_accepted():
    publication = envelope.parse('{ "echo": false, "type": 99, "data": "data to publish" }')
    assert publication == Publication(type=99, data="data to publish", echo=False)


def test_missing_data_is_published_as_null():
    assert envelope.parse('{"type": 1}') == Publication(type=1, data=None, echo=False)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", envelope.INVALID_JSON),
        ("", envelope.INVALID_JSON),
        (None, envelope.INVALID_JSON),
        ('{"type": NaN}', envelope.INVALID_JSON),
        ("[1, 2]", envelope.NOT_AN_OBJECT),
        ('"hello"', envelope.NOT_AN_OBJECT),
        ('{"data": 1}', envelope.MISSING_TYPE),
        ('{"type": "99"}', envelope.INVALID_TYPE),
        ('{"type": 99.5}', envelope.INVALID_TYPE),
        ('{"type": true}', envelope.INVALID_TYPE),
        ('{"type": null}', envelope.INVALID_TYPE),
        ('{"type": 9223372036854775808}', envelope.INVALID_TYPE),
        ('{"type": 1, "echo": "yes"}', envelope.INVALID_ECHO),
        ('{"type": 1, "echo": 1}', envelope.INVALID_ECHO),
        ('{"type": 1, "echo": null}', envelope.INVALID_ECHO),
    ],
)
def test_bad_messages_get_a_stable_code(body, code):
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse(body)
    assert caught.value.code == code


def test_a_body_over_128_kb_is_refused_before_parsing():
    body = json.dumps({"type": 1, "data": "x" * envelope.MAX_MESSAGE_BYTES})
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse(body)
    assert caught.value.code == envelope.MESSAGE_TOO_LARGE
    assert "131072" in caught.value.message


def test_a_message_that_fits_but_outgrows_the_limit_with_its_envelope_is_refused():
    # GIVEN data that leaves the inbound body just under 128 KB
    data = "x" * (envelope.MAX_MESSAGE_BYTES - len('{"type":1,"data":""}'))
    publication = envelope.parse(json.dumps({"type": 1, "data": data}, separators=(",", ":")))
    # WHEN it is encoded with "received" added THEN it is refused rather than failing for every recipient
    with pytest.raises(InvalidMessage) as caught:
        envelope.encode_publication(publication, received=1795654176)
    assert caught.value.code == envelope.MESSAGE_TOO_LARGE


def test_non_ascii_data_is_sent_as_utf8_and_a_lone_surrogate_stays_escaped():
    assert (
        envelope.encode_publication(Publication(1, "héllo", False), 5)
        == '{"type":1,"data":"héllo","received":5}'.encode()
    )
    lone = envelope.parse('{"type": 1, "data": "\\ud800"}')
    assert json.loads(envelope.encode_publication(lone, 5))["data"] == "\ud800"


def test_error_reply_format():
    assert json.loads(envelope.encode_error("invalid_json", "fix it")) == {
        "error": {"code": "invalid_json", "message": "fix it"}
    }


def test_a_publication_leaves_room_for_its_offset_and_epoch():
    data = "x" * (
        envelope.MAX_MESSAGE_BYTES - envelope.POSITION_ROOM_BYTES - len('{"type":1,"data":"","received":5}')
    )
    fits = envelope.encode_publication(Publication(1, data, False), 5)
    positioned = envelope.positioned(fits, f',"offset":{2**63 - 1},"epoch":"1796286598123456"}}')
    assert len(positioned) <= envelope.MAX_MESSAGE_BYTES
    assert json.loads(positioned)["offset"] == 2**63 - 1
    with pytest.raises(InvalidMessage):
        envelope.encode_publication(Publication(1, data + "x", False), 5)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(offset=st.integers(min_value=0, max_value=2**63 - 1), epoch=st.text(min_size=1, max_size=64))
def test_a_well_formed_since_is_read_exactly(offset, epoch):
    body = json.dumps({"action": "subscribe", "channel": "c", "since": {"offset": offset, "epoch": epoch}})
    assert envelope.parse(body).since == envelope.Since(offset=offset, epoch=epoch)
    resume = envelope.parse(json.dumps({"action": "resume", "since": {"epoch": epoch, "offset": offset}}))
    assert resume == envelope.Resume(since=envelope.Since(offset=offset, epoch=epoch))


@given(since=_JSON)
def test_any_other_since_is_one_invalid_since_error(since):
    well_formed = (
        isinstance(since, dict)
        and type(since.get("offset")) is int
        and 0 <= since["offset"] < 2**63
        and isinstance(since.get("epoch"), str)
        and 0 < len(since["epoch"]) <= 64
    )
    for message in (
        {"action": "subscribe", "channel": "c", "since": since},
        {"action": "resume", "since": since},
    ):
        if well_formed:
            envelope.parse(json.dumps(message))
        else:
            with pytest.raises(InvalidMessage) as caught:
                envelope.parse(json.dumps(message))
            assert caught.value.code == envelope.INVALID_SINCE


def test_a_resume_without_since_and_a_presence_without_channel_are_refused():
    with pytest.raises(InvalidMessage) as no_since:
        envelope.parse('{"action": "resume"}')
    assert no_since.value.code == envelope.INVALID_SINCE
    with pytest.raises(InvalidMessage) as no_channel:
        envelope.parse('{"action": "presence"}')
    assert no_channel.value.code == envelope.INVALID_CHANNEL
