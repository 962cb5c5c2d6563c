"""A connection's outbox: bounded in bytes, first in first out, never past its limit."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from localgw.outbox import Outbox


@given(st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=100)), max_size=60))
def test_what_is_queued_never_passes_the_limit_and_comes_out_in_order(frames):
    async def scenario():
        outbox = Outbox(limit=1000)
        accepted = []
        for frame in frames:
            if outbox.put(frame):
                accepted.append(frame)
            # THEN a refused frame is one that would have passed the limit, and nothing else is
            assert outbox.queued_bytes <= outbox.limit
        drained = []
        while outbox:
            drained.append(await outbox.next())
            outbox.sent()
        return accepted, drained

    accepted, drained = asyncio.run(scenario())
    assert drained == accepted


def test_a_refused_frame_leaves_room_for_smaller_ones_and_a_drained_outbox_takes_more():
    async def scenario():
        outbox = Outbox(limit=10)
        assert outbox.put(b"12345678")
        assert not outbox.put("abc")  # 11 bytes would pass 10
        assert outbox.put("ab") and outbox.queued_bytes == 10
        assert await outbox.next() == b"12345678"
        outbox.sent()
        assert outbox.put("é" * 4) and outbox.queued_bytes == 10  # counted in UTF-8 bytes

    asyncio.run(scenario())
