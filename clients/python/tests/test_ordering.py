"""The reorder and dedupe unit, sans I/O: whatever the interleaving of duplicates, delays and losses,
each offset is yielded once, in order, and what could not be recovered is reported as a Gap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ws_broadcast_client.ordering import Reorderer
from ws_broadcast_client.wire import Gap, Message

HOLD = 1.0


def message(offset: int, channel: str | None = "c", epoch: str = "E") -> Message:
    return Message(type=1, data=offset, received=0, channel=channel, offset=offset, epoch=epoch)


def offsets(outputs) -> list[int]:
    return [o.offset for o in outputs if isinstance(o, Message)]


@st.composite
def scenarios(draw):
    """N publications; each arrives 0 to 3 times (0: lost in transit), each copy at its own time;
    the service's history keeps the offsets after ``trimmed``."""
    count = draw(st.integers(1, 30))
    arrivals = []
    for offset in range(1, count + 1):
        for _ in range(draw(st.integers(0, 3))):
            arrivals.append((draw(st.floats(0, 5, allow_nan=False)), offset))
    arrivals.sort()
    trimmed = draw(st.integers(0, count))
    return count, arrivals, trimmed


def run(count: int, arrivals: list[tuple[float, int]], trimmed: int) -> list:
    """Feed the arrivals; answer each recovery as the service does (all or nothing)."""
    order = Reorderer(hold=HOLD)
    out = order.acknowledged("c", 0, "E", None, now=0.0)

    def tick(now: float) -> None:
        for point in order.due(now):
            recovered = point.offset >= trimmed
            out.extend(order.acknowledged("c", count, "E", recovered, now))
            if recovered:
                for offset in range(point.offset + 1, count + 1):
                    out.extend(order.delivered(message(offset), now))

    for now, offset in arrivals:
        tick(now)
        out.extend(order.delivered(message(offset), now))
    now = max((t for t, _ in arrivals), default=0.0)
    while (deadline := order.deadline()) is not None:
        now = max(now, deadline)
        tick(now)
    return out


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_each_offset_is_yielded_once_in_order_or_reported_lost(scenario):
    count, arrivals, trimmed = scenario
    out = run(count, arrivals, trimmed)
    yielded = offsets(out)
    assert yielded == sorted(set(yielded)), "in order, each once"
    gaps = [range(g.from_offset, g.to_offset + 1) for g in out if isinstance(g, Gap)]
    # A loss after the last message that arrived shows in nothing the client sees (until the next
    # message or reconnect): those offsets are yielded or lost at most once, the others exactly once.
    last_seen = max((offset for _, offset in arrivals), default=0)
    for offset in range(1, count + 1):
        accounted = (offset in yielded) + sum(offset in gap for gap in gaps)
        assert accounted == 1 if offset <= last_seen else accounted <= 1, f"offset {offset}"


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_with_the_whole_history_kept_nothing_is_lost(scenario):
    count, arrivals, _ = scenario
    out = run(count, arrivals, trimmed=0)
    last_seen = max((offset for _, offset in arrivals), default=0)
    assert out == [message(offset) for offset in range(1, len(out) + 1)]
    assert len(out) >= last_seen


def test_a_message_waits_for_its_predecessor_and_both_come_out_in_order():
    order = Reorderer(hold=HOLD)
    order.acknowledged("c", 0, "E", None, now=0)
    assert order.delivered(message(2), now=0) == []
    assert order.deadline() == HOLD
    assert order.delivered(message(1), now=0.5) == [message(1), message(2)]
    assert order.deadline() is None


def test_a_missing_message_is_recovered_after_the_hold():
    order = Reorderer(hold=HOLD)
    order.acknowledged("c", 0, "E", None, now=0)
    order.delivered(message(1), now=0)
    order.delivered(message(3), now=0)
    assert order.due(now=0.9) == []
    [point] = order.due(now=1.0)
    assert (point.channel, point.offset, point.epoch) == ("c", 1, "E")
    assert order.due(now=5) == [], "one recovery at a time"


def test_a_refused_recovery_yields_what_was_held_and_a_gap():
    order = Reorderer(hold=HOLD)
    order.acknowledged("c", 0, "E", None, now=0)
    order.delivered(message(1), now=0)
    order.delivered(message(4), now=0)
    order.due(now=1)
    out = order.acknowledged("c", 6, "E", False, now=1)
    assert out == [Gap("c", 2, 3), message(4), Gap("c", 5, 6)]
    assert order.delivered(message(7), now=1) == [message(7)]


def test_a_new_epoch_in_a_message_is_a_gap_then_the_stream_goes_on():
    order = Reorderer(hold=HOLD)
    order.acknowledged("c", 5, "E", None, now=0)
    assert order.delivered(message(1, epoch="F"), now=0) == [Gap("c", 6, 0), message(1, epoch="F")]


def test_the_messages_to_everyone_start_at_the_first_one_seen():
    order = Reorderer(hold=HOLD)
    assert order.delivered(message(41, channel=None), now=0) == [message(41, channel=None)]
    assert order.delivered(message(41, channel=None), now=0) == [], "a duplicate"
    assert order.point(None).offset == 41


def test_without_history_every_message_passes_through():
    order = Reorderer(hold=HOLD)
    plain = Message(type=1, data="x", received=0, channel="c")
    assert order.acknowledged("c", None, None, None, now=0) == []
    assert order.delivered(plain, now=0) == [plain]
    assert order.delivered(plain, now=0) == [plain], "no offset: nothing to deduplicate by"
