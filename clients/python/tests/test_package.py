"""``pip install ./clients/python`` builds what the README promises: distribution ws-broadcast-client,
Python 3.10+, one runtime dependency, botocore only with [sigv4], and the types (py.typed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_package_its_types_and_one_dependency(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(PACKAGE)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("ws_broadcast_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = Parser().parsestr(archive.read(metadata).decode())
    assert "ws_broadcast_client/py.typed" in names
    assert not [n for n in names if "tests/" in n], "the tests stay out of the wheel"
    assert fields["Name"] == "ws-broadcast-client"
    assert fields["Requires-Python"] == ">=3.10"
    requires = fields.get_all("Requires-Dist")
    assert [r for r in requires if "extra" not in r] == ["websockets>=13.0"]
    assert [r for r in requires if "extra" in r] == ["botocore>=1.31; extra == 'sigv4'"]
