import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHALICE = Path(sys.executable).with_name("chalice")


def chalice_package(out_dir: Path, *extra: str) -> Path:
    """Run `chalice package --stage prod` as a user would; no AWS account is needed or reached."""
    subprocess.run(
        [str(CHALICE), "package", "--stage", "prod", *extra, str(out_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out_dir


@pytest.fixture(scope="session")
def prod_package(tmp_path_factory) -> Path:
    return chalice_package(tmp_path_factory.mktemp("package") / "out")
