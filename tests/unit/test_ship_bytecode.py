"""scripts/ship_bytecode.py: every source in the zip gets unchecked-hash bytecode, whatever the
project's own __pycache__ held when `chalice package` copied it."""

from __future__ import annotations

import importlib.util
import py_compile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ship_bytecode", REPO / "scripts" / "ship_bytecode.py")
ship_bytecode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ship_bytecode)


def test_a_stale_timestamp_pyc_copied_from_the_project_is_replaced(tmp_path):
    # GIVEN a zip whose module comes with the developer's own, timestamp-checked bytecode of an older edit
    old = tmp_path / "old.py"
    old.write_text("VALUE = 'old'\n")
    py_compile.compile(
        str(old), cfile=str(tmp_path / "old.pyc"), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
    )
    archive = tmp_path / "deployment.zip"
    pyc = ship_bytecode.pyc_name("chalicelib/settings.py")
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("chalicelib/settings.py", "VALUE = 'new'\n")
        zipped.writestr(pyc, (tmp_path / "old.pyc").read_bytes())
    # WHEN bytecode is added
    compiled, skipped = ship_bytecode.add_bytecode(archive)
    # THEN the zip holds one .pyc for it: unchecked-hash, compiled from the source in the zip
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.namelist().count(pyc) == 1
        header = zipped.read(pyc)
    assert (compiled, skipped) == (1, [])
    assert int.from_bytes(header[4:8], "little") == 0b01  # PEP 552: hash-based, source not checked
    assert b"new" in header and b"old" not in header
