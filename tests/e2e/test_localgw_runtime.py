"""The runtime process as the gateway drives it: a runtime that dies is replaced at the next invocation,
whatever the order in which its pipe closes and its process is reaped."""

from __future__ import annotations

import json
from concurrent.futures import Future

import pytest

from localgw.lambdaenv import HandlerError
from localgw.runtime import Runtime
from testing import apigw as events
from testing.gateway_process import FIXTURE_APP


def _message(body: dict) -> dict:
    info = events.ConnectionInfo(
        connection_id=events.new_id(),
        connected_at_ms=events.now_ms(),
        source_ip="127.0.0.1",
        user_agent=None,
        domain_name="127.0.0.1:9",
        stage="api",
        api_id="localgw001",
    )
    return events.message_event(info, body=json.dumps(body))


@pytest.fixture
def runtime(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    logged: list[str] = []
    started = Runtime(
        FIXTURE_APP,
        chalice_stage="dev",
        endpoint="http://127.0.0.1:9/api",
        region="us-east-1",
        workers=4,
        log=logged.append,
        output=lambda line: None,
    )
    yield started, logged
    started.stop()


def test_the_invocation_after_a_runtime_died_runs_in_a_new_one(runtime):
    runtime, logged = runtime
    function = runtime.functions[events.ROUTE_DEFAULT]
    for round_ in range(5):
        # WHEN a handler takes its process down
        died: Future = runtime.invoke(function, _message({"do": "exit"}), timeout_seconds=5)
        with pytest.raises(HandlerError, match="Runtime exited"):
            died.result(10)
        # THEN the runtime counts as exited as soon as its failure is known (the pipe closed)
        assert runtime.exited
        # AND the very next invocation runs in a new process instead of down the dead pipe
        after = runtime.invoke(function, _message({"do": "status", "code": 204}), timeout_seconds=5)
        assert after.result(30) == {"statusCode": 204}, f"round {round_}"
        assert not runtime.exited
    assert logged == ["the runtime process exited (3): starting a new one"] * 5
