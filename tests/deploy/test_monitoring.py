"""The packaged template's dashboard, alarms and tracing (infra/monitoring.yaml, infra/app.yaml).

Every metric of the app's namespace the template names must be one chalicelib/metrics.py defines,
with that module's dimensions: a renamed metric fails here, not as an alarm that never fires.
"""

from __future__ import annotations

import json
import re

import pytest

from chalicelib import metrics
from tests.deploy.test_infra_package import FUNCTIONS, ROLES, _actions

pytestmark = pytest.mark.timeout(600)  # the session's `make package`
APP = "APP-NAMESPACE"  # what ${MetricsNamespace} stands for below


def _dashboard(resources: dict) -> dict:
    """The dashboard's body with every ${...} of its Fn::Sub filled (the namespace with APP)."""
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    body = body.replace("${MetricsNamespace}", APP)
    return json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", body))


def _dashboard_metrics(resources: dict) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, name, dimensions) of every line of every widget."""
    found = []
    for widget in _dashboard(resources)["widgets"]:
        for line in widget["properties"]["metrics"]:
            fields = [f for f in line if isinstance(f, str)]
            namespace, name, *pairs = fields
            found.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def _alarm_metrics(resources: dict) -> list[tuple[str, str, dict[str, object]]]:
    found = []
    for alarm in (r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"):
        stats = [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if "MetricStat" in q]
        if "MetricName" in alarm:
            stats.append(alarm)
        for metric in stats:
            namespace = APP if metric["Namespace"] == {"Ref": "MetricsNamespace"} else metric["Namespace"]
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            found.append((namespace, metric["MetricName"], dimensions))
    return found


def test_every_app_metric_the_template_names_is_one_the_app_writes(resources):
    named = _dashboard_metrics(resources) + _alarm_metrics(resources)
    app = [(name, dimensions) for namespace, name, dimensions in named if namespace == APP]
    assert app
    for name, dimensions in app:
        assert name in metrics.UNITS, f"{name} is not a metric chalicelib/metrics.py defines"
        expected = (
            [metrics.FUNCTION_NAME, metrics.REASON]
            if name == metrics.CONNECT_REFUSED
            else [metrics.FUNCTION_NAME]
        )
        assert list(dimensions) == expected, name
        if name == metrics.CONNECT_REFUSED:
            assert dimensions[metrics.REASON] in metrics.REASONS
    # the rest are AWS's own metrics
    assert {namespace for namespace, _, _ in named} == {APP, "AWS/SQS", "AWS/Lambda", "AWS/ElastiCache"}


def test_the_dashboard_shows_what_the_issue_asks_for(resources):
    named = {(namespace, name) for namespace, name, _ in _dashboard_metrics(resources)}
    for name in (metrics.DELIVERED, metrics.FAILED, metrics.GONE, metrics.CONNECT_REFUSED, metrics.RATE_LIMITED,
                 metrics.OVER_CAPACITY, metrics.FANOUT_DURATION):  # fmt: skip
        assert (APP, name) in named, name
    assert {("AWS/SQS", "ApproximateNumberOfMessagesVisible"), ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
            ("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles"), ("AWS/ElastiCache", "EngineCPUUtilization"),
            ("AWS/ElastiCache", "DatabaseMemoryUsagePercentage")} <= named  # fmt: skip
    # refused connects by every reason the app writes, fan-out duration at p50 and p99
    reasons = {
        d.get("Reason") for _, name, d in _dashboard_metrics(resources) if name == metrics.CONNECT_REFUSED
    }
    assert reasons == set(metrics.REASONS)
    widgets = _dashboard(resources)["widgets"]
    stats = {
        line[-1]["stat"]
        for widget in widgets
        for line in widget["properties"]["metrics"]
        if metrics.FANOUT_DURATION in line
    }
    assert stats == {"p50", "p99"}


def _alarm(resources: dict, name: str) -> dict:
    return resources[name]["Properties"]


@pytest.mark.parametrize(
    ("alarm", "metric", "functions", "threshold"),
    [
        ("FailedDeliveriesAlarm", metrics.FAILED, {"WebsocketMessage", "APIHandler", "FanoutWorker"},
         "FailedDeliveriesAlarmThreshold"),
        ("OverCapacityAlarm", metrics.OVER_CAPACITY, {"WebsocketMessage", "APIHandler"}, "OverCapacityAlarmThreshold"),
        ("RefusedConnectsAlarm", metrics.CONNECT_REFUSED, {"WebsocketConnect"}, "RefusedConnectsAlarmThreshold"),
    ],
)  # fmt: skip
def test_each_alarm_sums_its_app_metric_over_every_function_and_reason_that_writes_it(
    template, resources, alarm, metric, functions, threshold
):
    props = _alarm(resources, alarm)
    queries = props["Metrics"]
    stats = [q for q in queries if "MetricStat" in q]
    (total,) = [q for q in queries if q.get("ReturnData")]
    assert not [q for q in stats if q["ReturnData"]]
    ids = sorted(q["Id"] for q in stats)
    assert (
        total["Expression"].startswith("SUM([") and sorted(re.findall(r"\w+", total["Expression"])[1:]) == ids
    )
    assert {q["MetricStat"]["Metric"]["MetricName"] for q in stats} == {metric}
    assert {q["MetricStat"]["Stat"] for q in stats} == {"Sum"}
    written_by = {q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for q in stats}
    assert written_by == functions
    if metric == metrics.CONNECT_REFUSED:  # every reason, each once
        reasons = [q["MetricStat"]["Metric"]["Dimensions"][1]["Value"] for q in stats]
        assert sorted(reasons) == sorted(metrics.REASONS)
    assert props["Threshold"] == {"Ref": threshold}
    assert template["Parameters"][threshold]["Default"] >= 0
    assert props["TreatMissingData"] == "notBreaching"
    # actions only with an SNS topic (network.yaml's AlarmTopicArn), none when it is empty
    actions = {"Fn::If": ["NotifyAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    assert props["AlarmActions"] == props["OKActions"] == actions


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_writes_its_metrics_to_the_namespace_the_dashboard_reads(
    template, resources, function
):
    env = resources[function]["Properties"]["Environment"]["Variables"]
    assert env["METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert template["Parameters"]["MetricsNamespace"]["Default"] == metrics.NAMESPACE_DEFAULT


@pytest.mark.parametrize("function", FUNCTIONS)
def test_x_ray_tracing_is_a_parameter_off_by_default(template, resources, function):
    assert resources[function]["Properties"]["Tracing"] == {
        "Fn::If": ["TraceFunctions", "Active", "PassThrough"]
    }
    assert template["Parameters"]["Tracing"]["Default"] == "off"
    assert template["Conditions"]["TraceFunctions"] == {"Fn::Equals": [{"Ref": "Tracing"}, "on"]}


@pytest.mark.parametrize("role", sorted(set(ROLES.values())))
def test_a_traced_function_may_write_its_traces_and_an_untraced_one_may_not(resources, role):
    (policy,) = resources[role]["Properties"]["Policies"]
    (conditional,) = [
        s for s in policy["PolicyDocument"]["Statement"] if s.get("Fn::If", [None])[0] == "TraceFunctions"
    ]
    _, statement, when_off = conditional["Fn::If"]
    assert when_off == {"Ref": "AWS::NoValue"}
    assert _actions(statement) == ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    others = [s for s in policy["PolicyDocument"]["Statement"] if s is not conditional]
    assert "xray:" not in json.dumps(others)
