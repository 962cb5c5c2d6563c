"""The API Gateway WebSocket events recorded from real APIs (tests/fixtures/apigw_events/), to compare
the fakes' events against (testing.apigw builds them)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apigw_events"


def recorded(name: str) -> dict:
    """A fresh copy of the recorded event ``connect``, ``message`` or ``disconnect``."""
    return copy.deepcopy(_load(name))


@cache
def _load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())
