"""Reconnect waits: the first within a second, doubling to a cap of 30 s, forgotten after a healthy minute."""

from __future__ import annotations

from ws_broadcast_client import Backoff


def test_the_bounds_double_up_to_the_cap_and_the_draw_spreads_within_them():
    at_most = Backoff(draw=lambda: 1.0)
    assert [at_most.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(draw=lambda: 0.25).next_delay() == 0.25, "full jitter: anywhere from 0 to the bound"


def test_a_healthy_minute_starts_the_count_again_and_a_short_connection_does_not():
    backoff = Backoff(draw=lambda: 1.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.connection_ended(lasted=59)
    assert backoff.next_delay() == 16
    backoff.connection_ended(lasted=60)
    assert backoff.next_delay() == 1
