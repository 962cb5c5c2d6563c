"""The Management API client's HTTP/1.1 lines, without sockets: what a post sends, and how an answer is
read whatever pieces it arrives in, or refused when it cannot be trusted."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.management_api.http11 import (
    MAX_HEAD_BYTES,
    Answer,
    AnswerReader,
    ProtocolError,
    encode_request,
)

GONE = b"HTTP/1.1 410 Gone\r\nx-amzn-ErrorType: GoneException\r\nContent-Length: 24\r\n\r\n"
GONE_BODY = b'{"message": "Gone"}\n    '


def read(pieces: list[bytes]) -> tuple[Answer | None, int]:
    """The answer, and how many pieces it took."""
    reader = AnswerReader()
    for count, piece in enumerate(pieces, 1):
        if (answer := reader.feed(piece)) is not None:
            return answer, count
    return None, len(pieces)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


def test_a_request_is_its_line_its_length_its_headers_and_its_body():
    request = encode_request("POST /api/@connections/abc%3D HTTP/1.1", [("Host", "x.example")], b'{"a":1}')
    assert request == (
        b"POST /api/@connections/abc%3D HTTP/1.1\r\nContent-Length: 7\r\nHost: x.example\r\n\r\n" + b'{"a":1}'
    )


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_an_answer_is_the_same_whatever_pieces_it_arrives_in(cuts):
    answer, pieces_used = read(split(GONE + GONE_BODY, cuts))
    assert answer == Answer(410, {"x-amzn-errortype": "GoneException", "content-length": "24"}, reusable=True)
    assert pieces_used == len(split(GONE + GONE_BODY, cuts)), "whole only once its body has arrived"


def test_an_answer_is_not_whole_before_its_body():
    assert read([GONE, GONE_BODY[:-1]]) == (None, 2)


@pytest.mark.parametrize(
    ("head", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        # a body of unknown length is not waited for, and ends the connection
        (b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", False),
        # more than one answer to one request: the stream cannot be trusted
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n", False),
    ],
)
def test_what_leaves_the_connection_usable_for_the_next_post(head, reusable):
    answer, _ = read([head])
    assert answer is not None and answer.reusable is reusable


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
    ],
)
def test_an_answer_that_cannot_be_read_is_refused(head):
    with pytest.raises(ProtocolError):
        read([head])


def test_a_head_that_never_ends_is_refused_past_its_limit():
    reader = AnswerReader()
    start = b"HTTP/1.1 200 OK\r\nX-Padding: "
    assert reader.feed(start + b"x" * (MAX_HEAD_BYTES - len(start))) is None
    with pytest.raises(ProtocolError, match="too large"):
        reader.feed(b"x")


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=6))
def test_any_bytes_are_an_answer_a_refusal_or_a_wait_never_another_error(data, cuts):
    with contextlib.suppress(ProtocolError):
        read(split(data, cuts))


def test_started_says_whether_any_byte_of_the_answer_came():
    reader = AnswerReader()
    assert not reader.started
    reader.feed(b"H")
    assert reader.started
