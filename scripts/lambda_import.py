#!/usr/bin/env python3
"""Import modules from an unpacked deployment package the way Lambda does, and say what it cost.

    scripts/lambda_import.py PACKAGE_DIR [--runtime-path DIR ...] [--module app ...]

One fresh interpreter, as a new Lambda container starts one: ``-I -S`` (no site-packages, no
PYTHON* variables), ``sys.path`` = the package first (Lambda's /var/task), then each runtime path (what
/var/runtime provides, e.g. boto3), then the standard library with its own bytecode, as the runtime
keeps it; ``-B`` and a read-only package directory, so nothing can write bytecode. Each module is
imported in turn; printed as JSON: the milliseconds of each import and every source file the
interpreter had to compile (none when the package ships its bytecode).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

# Runs inside the fresh interpreter: argv = [json of sys.path prefix, module, ...].
_PROBE = """
import importlib._bootstrap_external as external, json, sys, time
prefix, modules = json.loads(sys.argv[1]), sys.argv[2:]
sys.path[:0] = prefix
compiled = []
to_code = external.SourceLoader.source_to_code
def recording(self, data, path, *args, **kwargs):
    compiled.append(path)
    return to_code(self, data, path, *args, **kwargs)
external.SourceLoader.source_to_code = recording
times = {}
for name in modules:
    started = time.perf_counter()
    __import__(name)
    times[name] = (time.perf_counter() - started) * 1000
print(json.dumps({"ms": times, "compiled": compiled}))
"""


def unpack_read_only(archive: Path, target: Path) -> Path:
    """Unzip ``archive`` into ``target`` and make it read-only, as Lambda's /var/task is."""
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    make_read_only(target)
    return target


def make_read_only(target: Path) -> None:
    for path in (target, *target.rglob("*")):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(target: Path) -> None:
    """Undo unpack_read_only, so the directory can be deleted."""
    for path in (target, *target.rglob("*")):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def import_like_lambda(
    package: Path,
    modules: list[str],
    runtime_paths: list[Path] = (),
    env: dict[str, str] | None = None,
    write_bytecode: bool = False,
) -> dict:
    """{"ms": {module: milliseconds}, "compiled": [source paths compiled]} of one fresh interpreter.
    ``write_bytecode`` lifts ``-B`` (a warm-cache baseline, in a writable copy)."""
    flags = ["-I", "-S"] + ([] if write_bytecode else ["-B"])
    prefix = [str(package), *map(str, runtime_paths)]
    result = subprocess.run(
        [sys.executable, *flags, "-c", _PROBE, json.dumps(prefix), *modules],
        cwd=package,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"importing {modules} from {package} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="an unpacked deployment.zip (made read-only here)")
    parser.add_argument("--runtime-path", type=Path, action="append", default=[])
    parser.add_argument("--module", action="append", dest="modules")
    args = parser.parse_args(argv)
    make_read_only(args.package)
    print(json.dumps(import_like_lambda(args.package, args.modules or ["app"], args.runtime_path), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
