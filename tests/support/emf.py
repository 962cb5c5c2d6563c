"""CloudWatch's Embedded Metric Format, as a test checks it: the specification's rules, and the
documents a handler wrote among its log lines.

The rules are those of
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
"""

from __future__ import annotations

import json

# CloudWatch's StandardUnit values, the units EMF allows.
UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def emf_problems(document: dict) -> list[str]:
    """What in ``document`` breaks the EMF specification (an empty list: CloudWatch extracts it)."""
    problems = []
    aws = document.get("_aws")
    if not isinstance(aws, dict) or set(aws) - {"Timestamp", "CloudWatchMetrics"}:
        return ["_aws must be an object with Timestamp and CloudWatchMetrics only"]
    if not isinstance(aws.get("Timestamp"), int) or isinstance(aws["Timestamp"], bool):
        problems.append("Timestamp must be an integer of milliseconds since the epoch")
    directives = aws.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*problems, "CloudWatchMetrics must be a non-empty array of MetricDirective"]
    for directive in directives:
        if set(directive) != {"Namespace", "Dimensions", "Metrics"}:
            problems.append(f"a MetricDirective has Namespace, Dimensions and Metrics: {sorted(directive)}")
            continue
        namespace = directive["Namespace"]
        if not isinstance(namespace, str) or not 1 <= len(namespace) <= 255:
            problems.append(f"Namespace must be 1 to 255 characters: {namespace!r}")
        for dimension_set in directive["Dimensions"]:
            if len(dimension_set) > 30:
                problems.append(f"a dimension set has at most 30 dimensions: {len(dimension_set)}")
            for key in dimension_set:
                value = document.get(key)
                if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                    problems.append(f"dimension {key} must be a top-level string of 1 to 1024 characters")
        if len(directive["Metrics"]) > 100:
            problems.append(f"a directive has at most 100 metrics: {len(directive['Metrics'])}")
        for definition in directive["Metrics"]:
            if set(definition) - {"Name", "Unit", "StorageResolution"} or "Name" not in definition:
                problems.append(f"a MetricDefinition has Name, Unit, StorageResolution: {definition}")
                continue
            if definition.get("Unit", "None") not in UNITS:
                problems.append(f"{definition['Name']}: unit {definition['Unit']!r} is not a CloudWatch unit")
            value = document.get(definition["Name"])
            values = value if isinstance(value, list) else [value]
            if not 1 <= len(values) <= 100 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                problems.append(f"{definition['Name']} must be a top-level number or 1 to 100 numbers")
    return problems


def emf_documents(output: str) -> list[dict]:
    """The EMF documents among ``output``'s lines (a log stream), each checked against the rules."""
    documents = []
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        if "_aws" in document:
            assert emf_problems(document) == [], line
            documents.append(document)
    return documents
