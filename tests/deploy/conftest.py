import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Dummy credentials: nothing here may reach AWS (`make package` needs no account).
OFFLINE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory) -> Path:
    """`make package` (its real command lines: chalice package, the merge, the bytecode), once per
    session; every packaging test reads its sam.json and deployment.zip."""
    tmp = tmp_path_factory.mktemp("package")
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(REPO),
            "package",
            f"OUT={tmp / 'out'}",
            f"BUILD={tmp / 'build'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
        timeout=600,  # chalice package downloads the runtime wheels on a fresh machine
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "out"


@pytest.fixture(scope="session")
def template(package_dir) -> dict:
    return json.loads((package_dir / "sam.json").read_text())


@pytest.fixture(scope="session")
def resources(template) -> dict:
    return template["Resources"]
