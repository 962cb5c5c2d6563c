"""The browser module's sans-I/O units (clients/browser/ws-broadcast.js: reorder, dedupe, frames)
under node's own test runner; the module's I/O runs in a real browser in tests/e2e/test_sample_client.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2] / "clients" / "browser" / "ws-broadcast.test.mjs"


@pytest.mark.node
def test_the_browser_modules_units_pass_under_node():
    node = shutil.which("node")
    assert node, "node is missing: install Node.js 20+ (scripts/bootstrap says how)"
    ran = subprocess.run([node, "--test", str(TESTS)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
