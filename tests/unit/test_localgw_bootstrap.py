"""scripts/bootstrap, as `make run` and `make test` show it: pip's progress is visible while it works."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Stands in for the venv's python: answers `-m pip install` as pip does, silent under --quiet.
FAKE_PYTHON = """#!/bin/sh
case " $* " in *" --quiet "*) exit 0 ;; esac
echo "Collecting chalice==1.34.0"
echo "Collecting redis==8.1.0"
echo "Successfully installed chalice-1.34.0 redis-8.1.0"
"""


def test_installing_python_packages_shows_pips_progress(tmp_path):
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)

    result = subprocess.run(
        [str(REPO / "scripts" / "bootstrap"), "python"],
        env={**os.environ, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert "Collecting chalice==1.34.0" in shown and "Collecting redis==8.1.0" in shown
    assert "Successfully installed" in shown
