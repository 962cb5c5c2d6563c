#!/usr/bin/env python3
"""Which Lambda runtime `chalice package` will name, and whether Lambda still accepts it.

    scripts/lambda_runtime.py            exit 1, saying why, when new functions cannot use the runtime

Chalice names the runtime after the interpreter it runs on (python3.X), and `hiredis`' compiled wheel
and the shipped bytecode (scripts/ship_bytecode.py) are built for that same version, so the local
Python decides the runtime. Lambda's dates come from cfn-lint's runtime lifecycle data (the
development dependency pinned in requirements-dev.txt), the same data its deprecation rules use.
"""

from __future__ import annotations

import datetime
import json
import sys
from importlib import resources

# Runtimes this project is packaged and tested for: chalice 1.34 knows them, every compiled
# dependency has a manylinux wheel for them, and Lambda has not deprecated them (python3.10 was on
# 2026-10-31: no longer offered, though Lambda still creates functions on it until 2027-02-01).
SUPPORTED = ("python3.11", "python3.12", "python3.13", "python3.14")


def runtime_of(version_info=sys.version_info) -> str:
    """The runtime chalice names for this interpreter (chalice.config.Config.lambda_python_version)."""
    major, minor = version_info[0], version_info[1]
    if (major, minor) < (3, 10):
        return "python3.10"
    if (major, minor) <= (3, 14):
        return f"python{major}.{minor}"
    return "python3.15"


def lifecycle() -> dict[str, dict]:
    data = resources.files("cfnlint") / "data" / "AdditionalSpecs" / "LmbdRuntimeLifecycle.json"
    return json.loads(data.read_text())


def problems(runtime: str, version_info, today: datetime.date, dates: dict[str, dict]) -> tuple[list, list]:
    """(errors, warnings) for packaging ``runtime`` with the interpreter ``version_info`` on ``today``."""
    local = f"python{version_info[0]}.{version_info[1]}"
    fix = (
        f"package with one of {', '.join(SUPPORTED)}, from a virtual environment of that Python: "
        "make package PYTHON=python3.X VENV=.venv-3.X"
    )
    if runtime != local:
        return [f"chalice would name the runtime {runtime} for this Python {local[6:]}: {fix}"], []
    phases = dates.get(runtime)
    if runtime not in SUPPORTED:
        retired = phases and today >= datetime.date.fromisoformat(phases["deprecated"])
        why = f" (Lambda deprecated it on {phases['deprecated']})" if retired else ""
        return [f"{runtime} is not a runtime this project supports{why}: {fix}"], []
    if phases is None:
        return [f"Lambda has no runtime {runtime} (cfn-lint's lifecycle data): {fix}"], []
    create_block = datetime.date.fromisoformat(phases["create-block"])
    if today >= create_block:
        return [f"Lambda stopped accepting {runtime} for new functions on {create_block}: {fix}"], []
    deprecated = datetime.date.fromisoformat(phases["deprecated"])
    if today >= deprecated:
        return [], [
            f"Lambda deprecated {runtime} on {deprecated} and refuses new functions from {create_block}: "
            f"move to {phases.get('successor') or 'a newer runtime'}"
        ]
    return [], []


def main() -> int:
    runtime = runtime_of()
    errors, warnings = problems(runtime, sys.version_info, datetime.date.today(), lifecycle())
    for message in warnings:
        print(f"lambda_runtime: warning: {message}", file=sys.stderr)
    for message in errors:
        print(f"lambda_runtime: {message}", file=sys.stderr)
    if not errors:
        print(f"lambda_runtime: packaging for {runtime}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
