"""The metrics of one invocation: one Embedded Metric Format line that CloudWatch accepts, or none.

Every document is checked against the EMF specification's rules
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html),
including every document any sequence of recordings can make (hypothesis).
"""

from __future__ import annotations

import io
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import metrics
from chalicelib.fanout import DeliveryReport
from chalicelib.metrics import Metrics
from tests.support.emf import UNITS, emf_problems

NOW = 1_796_000_000.123


def _recorder() -> Metrics:
    return Metrics("WsBroadcast", "ws-broadcast-prod-websocket_message", wall_clock=lambda: NOW)


def test_a_publish_becomes_one_document_with_the_function_as_its_dimension():
    # GIVEN a publish's outcome
    recorder = _recorder()
    recorder.count(metrics.PUBLISHED)
    report = DeliveryReport(1000, 990, gone=[f"g{n}" for n in range(7)], failed=dict.fromkeys("abc", "500"))
    recorder.delivery(report, elapsed_ms=412.5)
    # WHEN
    document = recorder.document()
    # THEN
    assert emf_problems(document) == []
    assert document["_aws"] == {
        "Timestamp": 1_796_000_000_123,
        "CloudWatchMetrics": [
            {
                "Namespace": "WsBroadcast",
                "Dimensions": [["FunctionName"]],
                "Metrics": [
                    {"Name": "Published", "Unit": "Count"},
                    {"Name": "Recipients", "Unit": "Count"},
                    {"Name": "Delivered", "Unit": "Count"},
                    {"Name": "Gone", "Unit": "Count"},
                    {"Name": "Failed", "Unit": "Count"},
                    {"Name": "FanoutDuration", "Unit": "Milliseconds"},
                ],
            }
        ],
    }
    assert {k: v for k, v in document.items() if k != "_aws"} == {
        "FunctionName": "ws-broadcast-prod-websocket_message",
        "Published": 1,
        "Recipients": 1000,
        "Delivered": 990,
        "Gone": 7,
        "Failed": 3,
        "FanoutDuration": 412.5,
    }


def test_a_refused_handshake_is_counted_by_reason_and_only_it_has_that_dimension():
    recorder = _recorder()
    recorder.refused(metrics.BAD_TOKEN)
    document = recorder.document()
    assert emf_problems(document) == []
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["FunctionName", "Reason"]]
    assert directive["Metrics"] == [{"Name": "ConnectRefused", "Unit": "Count"}]
    assert (document["Reason"], document["ConnectRefused"]) == ("BadToken", 1)


def test_other_metrics_beside_a_refusal_keep_the_function_alone():
    recorder = _recorder()
    recorder.refused(metrics.REDIS_DOWN)
    recorder.count(metrics.QUEUED_JOBS, 0)
    first, second = recorder.document()["_aws"]["CloudWatchMetrics"]
    assert (first["Dimensions"], [m["Name"] for m in first["Metrics"]]) == (
        [["FunctionName"]],
        ["QueuedJobs"],
    )
    assert second["Dimensions"] == [["FunctionName", "Reason"]]


def test_counts_add_up_and_durations_keep_every_value_for_percentiles():
    recorder = _recorder()
    for _ in range(3):
        recorder.count(metrics.RATE_LIMITED)
    recorder.duration_ms(metrics.FANOUT_DURATION, 10)
    recorder.duration_ms(metrics.FANOUT_DURATION, 30)
    document = recorder.document()
    assert (document["RateLimited"], document["FanoutDuration"]) == (3, [10, 30])
    assert emf_problems(document) == []


def test_nothing_recorded_writes_nothing():
    written = io.StringIO()
    _recorder().flush(written.write)
    assert written.getvalue() == ""


def test_a_flush_writes_one_line_and_starts_afresh():
    recorder, written = _recorder(), io.StringIO()
    recorder.count(metrics.CONNECTED)
    recorder.flush(written.write)
    recorder.flush(written.write)
    (line,) = written.getvalue().splitlines()
    assert json.loads(line)["Connected"] == 1
    assert written.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (lambda m: m.count("Deliverd"), "is not a metric in Count"),
        (lambda m: m.count(metrics.FANOUT_DURATION), "is not a metric in Count"),
        (lambda m: m.duration_ms(metrics.DELIVERED, 1), "is not a metric in Milliseconds"),
        (lambda m: m.count(metrics.FAILED, -1), "counts up"),
        (lambda m: m.count(metrics.CONNECT_REFUSED), r"refused\(reason\)"),
        (lambda m: m.refused("no token, I forgot it"), "unknown refusal reason"),
    ],
)
def test_a_mistake_in_the_wiring_says_what_to_use(record, message):
    with pytest.raises(ValueError, match=message):
        record(_recorder())


def test_one_invocation_refuses_one_handshake():
    recorder = _recorder()
    recorder.refused(metrics.ORIGIN)
    with pytest.raises(ValueError, match="already refused a handshake for Origin"):
        recorder.refused(metrics.NO_TOKEN)


def test_recording_writes_the_invocations_document_on_the_way_out_even_after_an_error():
    written = io.StringIO()
    with pytest.raises(RuntimeError), metrics.recording("Chat", "ws-connect", written.write):
        metrics.current().refused(metrics.REDIS_DOWN)
        raise RuntimeError("the handler failed after the refusal")
    document = json.loads(written.getvalue())
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Chat"
    assert (document["FunctionName"], document["Reason"]) == ("ws-connect", "RedisDown")
    # and after the invocation, what is recorded goes nowhere
    metrics.current().count(metrics.CONNECTED)
    assert written.getvalue().count("\n") == 1


def test_invocations_running_side_by_side_keep_their_own_metrics():
    # GIVEN two invocations on two threads, as the local gateway runs them
    lines: list[str] = []
    both_recording = threading.Barrier(2, timeout=10)

    def invocation(name: str, n: int) -> None:
        with metrics.recording("WsBroadcast", name, lines.append):
            metrics.current().count(metrics.DELIVERED, n)
            both_recording.wait()
            metrics.current().count(metrics.DELIVERED, n)

    threads = [threading.Thread(target=invocation, args=(f"f{n}", n)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # THEN each wrote its own line with its own total
    totals = {json.loads(line)["FunctionName"]: json.loads(line)["Delivered"] for line in lines}
    assert totals == {"f1": 2, "f2": 4}


def test_the_names_are_the_ones_the_issue_asks_for_with_units_from_the_allowed_set():
    assert set(metrics.UNITS) == {
        "Delivered", "Gone", "Failed", "Recipients", "FanoutDuration", "Published", "RateLimited",
        "OverCapacity", "ConnectRefused", "Connected", "Disconnected", "QueuedJobs", "Replayed",
    }  # fmt: skip
    assert set(metrics.UNITS.values()) <= UNITS
    assert len(set(metrics.REASONS)) == len(metrics.REASONS)


_COUNTS = sorted(name for name, unit in metrics.UNITS.items() if unit == "Count" and name != "ConnectRefused")
_recordings = st.lists(
    st.one_of(
        st.tuples(st.just("count"), st.sampled_from(_COUNTS), st.integers(0, 10**9)),
        st.tuples(st.just("duration_ms"), st.just(metrics.FANOUT_DURATION), st.floats(0, 1e6)),
        st.tuples(st.just("refused")),
    ),
    max_size=300,
)


@given(
    recordings=_recordings,
    reason=st.sampled_from(metrics.REASONS),  # one invocation refuses for one reason
    namespace=st.text("AZaz09./#:-_ ", min_size=1, max_size=255).filter(str.strip),
)
def test_every_document_any_invocation_can_make_is_valid_emf(recordings, reason, namespace):
    recorder = Metrics(namespace, "fn", wall_clock=lambda: NOW)
    for method, *args in recordings:
        getattr(recorder, method)(*(args or [reason]))
    document = recorder.document()
    if not recordings:
        assert document is None
        return
    assert emf_problems(json.loads(json.dumps(document))) == []
