"""Hostile input: what a sender can post must leave as strict JSON (RFC 8259) or be refused with a code.

Every recipient parses what is published with a strict parser (a browser's or Node's JSON.parse), so
one sender's NaN, Infinity or control character must never reach them; and no input may crash the
handler (a recursion too deep for the standard library's parser or encoder, an integer too long for
int()) instead of getting its documented error.
"""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import envelope
from chalicelib.envelope import MAX_DEPTH, InvalidMessage, Publication

HOSTILE_NUMBERS = [
    "1e400",
    "-1e999",
    "1E309",
    "1e+400",
    "1.8e308",
    "-1.8e308",
    "0.1e310",
    "1" + "0" * 400 + ".0",
]
WHERE = [
    '{{"type": 1, "data": {}}}',
    '{{"type": 1, "data": [1, {{"a": [2, {}]}}]}}',
    '{{"type": {}}}',
    '{{"type": 1, "echo": {}}}',
    '{{"type": 1, "ignored": {}}}',
]
# Every code point that is neither JSON whitespace nor allowed between tokens, but looks harmless.
STRAY = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n\r"] + ["\ufeff", "\xa0"]
MESSAGE_TOKENS = ["{", '"type"', ":", "1", ",", '"data"', ":", "[", "2", ",", '"x"', "]", "}"]


def strict_loads(payload: bytes):
    """What a recipient's JSON.parse accepts: UTF-8, no NaN/Infinity, no number beyond a double."""

    def finite(literal):
        assert math.isfinite(float(literal)), f"{literal} is not a finite JSON number"
        return float(literal)

    def constant(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(payload.decode("utf-8"), parse_float=finite, parse_constant=constant)


def code_of(body) -> str:
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse(body)
    assert caught.value.message
    return caught.value.code


def nested(depth: int, shapes: list[str], leaf: str = "0") -> str:
    """A message whose arrays and objects nest ``depth`` deep, the message object being level 1."""
    opening, closing = [], []
    for level in range(depth - 1):
        if shapes[level % len(shapes)] == "array":
            opening.append("[")
            closing.append("]")
        else:
            opening.append('{"k[\\"{": ')
            closing.append("}")
    return '{"type": 1, "data": ' + "".join(opening) + leaf + "".join(reversed(closing)) + "}"


# --- non-finite numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
def test_a_number_beyond_a_double_is_invalid_json_wherever_it_is(number, where):
    # GIVEN a number that Python's float() turns into an infinity, anywhere in the message
    # WHEN it is parsed THEN it is refused as invalid JSON, so no recipient ever gets Infinity
    assert code_of(where.format(number)) == envelope.INVALID_JSON


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_invalid_json(constant):
    assert code_of(f'{{"type": 1, "data": [{constant}]}}') == envelope.INVALID_JSON


def test_the_refusal_names_the_number_and_the_fix():
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse('{"type": 1, "data": [-1e999]}')
    assert "-1e999" in caught.value.message
    assert "string" in caught.value.message


def test_the_largest_and_smallest_doubles_are_published_unchanged():
    publication = envelope.parse('{"type": 1, "data": [1.7976931348623157e308, -5e-324, 1e-400]}')
    assert strict_loads(envelope.encode_publication(publication, 5))["data"] == [
        1.7976931348623157e308,
        -5e-324,
        0.0,
    ]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, [1, {"a": math.inf}]])
def test_a_publication_holding_a_non_finite_number_is_never_encoded(value):
    # GIVEN a publication not made by parse (a future code path) WHEN it is encoded THEN it is refused
    with pytest.raises(InvalidMessage) as caught:
        envelope.encode_publication(Publication(1, value, False), 5)
    assert caught.value.code == envelope.INVALID_JSON


# --- nesting depth --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["array", "object"])
def test_the_deepest_message_allowed_is_published_and_one_level_more_is_too_deep(shape):
    deepest = envelope.parse(nested(MAX_DEPTH, [shape]))
    assert strict_loads(envelope.encode_publication(deepest, 5))["data"] == deepest.data
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse(nested(MAX_DEPTH + 1, [shape]))
    assert caught.value.code == envelope.TOO_DEEP
    assert f"{MAX_DEPTH + 1} levels" in caught.value.message
    assert f"at most {MAX_DEPTH}" in caught.value.message


@pytest.mark.parametrize("depth", [981, 982, 983, 65_000])
def test_depths_that_crashed_the_handler_are_too_deep(depth):
    # 982 levels parsed, then re-encoding raised RecursionError (a 500); 983+ parsed as invalid_json
    assert code_of(nested(depth, ["array"])) == envelope.TOO_DEEP


@pytest.mark.parametrize("body", ["[" * 100_000, '{"type": 1, "data": ' + "[" * 5000 + "1", "{" * 3000])
def test_unclosed_nesting_is_too_deep_rather_than_a_recursion_error(body):
    assert code_of(body) == envelope.TOO_DEEP


def test_brackets_and_escaped_quotes_inside_strings_are_not_nesting():
    data = ['\\"[[[' * 400, "{{{" * 400 + "\\\\", "]]]" * 400]
    body = '{"type": 1, "data": [' + ", ".join(f'"{text}"' for text in data) + "]}"
    assert envelope.parse(body).data == json.loads(body)["data"]


@given(
    depth=st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3) | st.integers(1, 3 * MAX_DEPTH) | st.integers(1, 5000),
    shapes=st.lists(st.sampled_from(["array", "object"]), min_size=1, max_size=8),
    leaf=st.sampled_from(["0", '"]]}}"', "[]", "{}", "null", '"\\\\"', "-1.5e300"]),
)
def test_deep_documents_are_published_up_to_the_limit_and_refused_past_it(depth, shapes, leaf):
    # GIVEN a message nesting `depth` levels deep, its leaf possibly an empty array or object
    body = nested(depth, shapes, leaf)
    total = depth + (leaf in ("[]", "{}"))
    # WHEN it is parsed THEN it is published equal up to the limit, and refused as too deep past it
    if total <= MAX_DEPTH:
        publication = envelope.parse(body)
        assert strict_loads(envelope.encode_publication(publication, 5))["data"] == json.loads(body)["data"]
    else:
        assert code_of(body) == envelope.TOO_DEEP


# --- integers too long for int() -----------------------------------------------------------------


@pytest.mark.parametrize("digits", ["9" * 5000, "-" + "9" * 5000, "1" * 4301, "9" * 4300])
def test_an_integer_type_of_any_length_outside_int64_is_an_invalid_type(digits):
    assert code_of(f'{{"type": {digits}, "data": 1}}') == envelope.INVALID_TYPE


@pytest.mark.parametrize("where", [WHERE[0], WHERE[1], WHERE[4]])
def test_an_integer_over_4300_digits_elsewhere_is_refused_with_its_own_code(where):
    with pytest.raises(InvalidMessage) as caught:
        envelope.parse(where.format("-" + "7" * 5000))
    assert caught.value.code == envelope.INTEGER_TOO_LONG
    assert "5000 digits" in caught.value.message
    assert "4300" in caught.value.message


def test_an_integer_of_4300_digits_is_published_exactly():
    number = int("8" * 4300)
    publication = envelope.parse(f'{{"type": 1, "data": [{number}, -{number}]}}')
    assert strict_loads(envelope.encode_publication(publication, 5))["data"] == [number, -number]


def test_a_long_integer_echo_is_an_invalid_echo():
    assert code_of(f'{{"type": 1, "echo": {"1" * 5000}}}') == envelope.INVALID_ECHO


# --- NUL and other control characters -------------------------------------------------------------


@pytest.mark.parametrize("encode", [str, str.encode], ids=["text", "utf8-bytes"])
def test_a_frame_of_nuls_interleaved_with_json_is_invalid_json(encode):
    # json.loads guessed UTF-16 from the NUL bytes and decoded the frame as if they were not there
    frame = "\x00" + "\x00".join('{"type": 1, "data": 2}')
    assert code_of(encode(frame)) == envelope.INVALID_JSON


@pytest.mark.parametrize(
    "body",
    [
        '{"type": 1}'.encode("utf-16-be"),
        '{"type": 1}'.encode("utf-16"),
        '{"type": 1}'.encode("utf-32"),
        "\ufeff" + '{"type": 1}',
        ("\ufeff" + '{"type": 1}').encode(),
        b'{"type": 1, "data": "\xff"}',
    ],
    ids=["utf16be", "utf16-bom", "utf32-bom", "bom-text", "bom-bytes", "not-utf8"],
)
def test_anything_but_utf8_text_is_invalid_json(body):
    assert code_of(body) == envelope.INVALID_JSON


@pytest.mark.parametrize("stray", STRAY, ids=[f"U+{ord(c):04X}" for c in STRAY])
def test_a_control_character_between_tokens_is_invalid_json_where_whitespace_is_fine(stray):
    for gap in range(len(MESSAGE_TOKENS) + 1):
        spaced, strayed = [*MESSAGE_TOKENS], [*MESSAGE_TOKENS]
        spaced.insert(gap, " \t\n\r")
        strayed.insert(gap, stray)
        assert envelope.parse("".join(spaced)).data == [2, "x"]
        assert code_of("".join(strayed)) == envelope.INVALID_JSON, f"{stray!r} before token {gap}"


@pytest.mark.parametrize("control", [chr(c) for c in range(0x20)], ids=[f"U+{c:04X}" for c in range(0x20)])
def test_a_raw_control_character_inside_a_string_is_invalid_json_but_escaped_is_kept(control):
    assert code_of(f'{{"type": 1, "data": "a{control}b"}}') == envelope.INVALID_JSON
    escaped = envelope.parse(json.dumps({"type": 1, "data": f"a{control}b"}))
    assert strict_loads(envelope.encode_publication(escaped, 5))["data"] == f"a{control}b"
