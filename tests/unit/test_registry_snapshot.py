"""A publish's audience as the registry reads it: each entry live or stale by its age, and the young
(in API Gateway's handshake window) among the live, whatever mix of ages and principals it holds."""

from __future__ import annotations

import time

import fakeredis
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.registry import HANDSHAKE_WINDOW_SECONDS, ConnectionRegistry
from testing.apigw import new_id

MAX_AGE = 7200
# Ages around both boundaries: the maximum age (stale at or past it) and the handshake window.
AGES = st.sampled_from([0, 1, HANDSHAKE_WINDOW_SECONDS - 1, HANDSHAKE_WINDOW_SECONDS, HANDSHAKE_WINDOW_SECONDS + 1,
                        600, MAX_AGE - 1, MAX_AGE, MAX_AGE + 1])  # fmt: skip
ENTRIES = st.lists(st.tuples(AGES, st.none() | st.just("a1b2c3d4-5678-90ab-cdef-1234567890ab")), max_size=12)


@settings(max_examples=200, deadline=None)
@given(ENTRIES)
def test_each_entry_is_live_or_stale_by_its_age_and_the_young_are_told_apart(entries):
    # Each connection registered with the clock at its own connection (a $connect prunes a sample of
    # the entries past the maximum age by then, so none is yet), the audience read now.
    now = int(time.time())
    clock = [now]
    registry = ConnectionRegistry(
        fakeredis.FakeRedis(decode_responses=True),
        prefix="snap",
        max_age_seconds=MAX_AGE,
        clock=lambda: clock[0],
    )
    ages = {}
    for age, principal in sorted(entries, key=lambda entry: entry[0]):  # the oldest last
        connection_id = new_id()
        clock[0] = now - age
        registry.add(connection_id, clock[0] * 1000, principal)
        ages[connection_id] = age
    clock[0] = now
    snapshot = registry.read_shard(0)
    assert sorted(snapshot.live) == sorted(c for c, age in ages.items() if age < MAX_AGE)
    assert sorted(snapshot.stale) == sorted(c for c, age in ages.items() if age >= MAX_AGE)
    assert snapshot.young == {c for c, age in ages.items() if age <= HANDSHAKE_WINDOW_SECONDS}
