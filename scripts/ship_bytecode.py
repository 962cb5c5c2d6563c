#!/usr/bin/env python3
"""Add compiled bytecode to the zip `chalice package` built, so Lambda compiles nothing at a cold start.

    scripts/ship_bytecode.py out/deployment.zip --template out/sam.json

`chalice package` ships sources only, and Lambda's /var/task is read-only: without bytecode in the zip,
every cold start of every function compiles each module it imports. Each ``.py`` in the zip gets its
``__pycache__/<name>.cpython-3X.pyc`` beside it, compiled by this interpreter, which must be the
runtime's Python (checked against the template's ``Runtime``: the same minor version writes the same
magic number). The ``.pyc`` files are *unchecked-hash* (PEP 552): the interpreter loads them without
comparing them to the source's modification time, which a zip does not keep faithfully.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import py_compile
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

RUNTIME = f"python{sys.version_info[0]}.{sys.version_info[1]}"
# A fixed time for the added entries: the unchecked-hash .pyc ignores it, and the zip stays reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class BytecodeError(ValueError):
    pass


def runtimes_of(template: dict) -> set[str]:
    """Every Lambda runtime the template names (each function's, or the SAM Globals')."""
    runtimes = {
        resource.get("Properties", {}).get("Runtime")
        for resource in template.get("Resources", {}).values()
        if resource.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function")
    }
    runtimes.add(template.get("Globals", {}).get("Function", {}).get("Runtime"))
    return runtimes - {None}


def pyc_name(source: str) -> str:
    """The zip entry of ``source``'s bytecode, where the import system looks for it."""
    return PurePosixPath(importlib.util.cache_from_source(source)).as_posix()


def add_bytecode(archive: Path) -> tuple[int, list[str]]:
    """Rewrite ``archive`` with a ``.pyc`` beside each ``.py``; returns (compiled, sources that do not
    compile with this Python, which therefore can never be imported by it either)."""
    skipped: list[str] = []
    # A dependency's SyntaxWarning (an invalid escape, say) is not ours to show.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        rebuilt = work / "deployment.zip"
        with (
            zipfile.ZipFile(archive) as source,
            zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED) as target,
        ):
            # A .pyc already beside a source is replaced, never shipped: `chalice package` copies the
            # project's own __pycache__, whose timestamp-checked files a zip's times would invalidate.
            replaced = {pyc_name(name) for name in source.namelist() if name.endswith(".py")}
            compiled: list[tuple[str, Path]] = []
            for info in source.infolist():
                if info.filename in replaced:
                    continue
                data = source.read(info)
                target.writestr(info, data)
                if not info.filename.endswith(".py"):
                    continue
                path = work / "src" / info.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                try:
                    py_compile.compile(
                        str(path),
                        cfile=str(path) + "c",
                        dfile=info.filename,
                        doraise=True,
                        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                    )
                except py_compile.PyCompileError:
                    skipped.append(info.filename)
                    continue
                compiled.append((info.filename, Path(str(path) + "c")))
            for name, pyc in compiled:
                entry = zipfile.ZipInfo(pyc_name(name), ZIP_EPOCH)
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                target.writestr(entry, pyc.read_bytes())
        rebuilt.replace(archive)
    return len(compiled), skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the deployment.zip chalice package wrote")
    parser.add_argument("--template", type=Path, required=True, help="the sam.json beside it")
    args = parser.parse_args(argv)
    runtimes = runtimes_of(json.loads(args.template.read_text()))
    if runtimes != {RUNTIME}:
        print(
            f"ship_bytecode: the template's runtime is {', '.join(sorted(runtimes)) or 'missing'}, but this "
            f"is {RUNTIME}: bytecode is only valid for the Python that wrote it",
            file=sys.stderr,
        )
        return 1
    compiled, skipped = add_bytecode(args.archive)
    print(f"ship_bytecode: {compiled} modules compiled for {RUNTIME} into {args.archive}")
    if skipped:
        print(
            f"ship_bytecode: {len(skipped)} sources do not compile on {RUNTIME}, left as they are:",
            file=sys.stderr,
        )
        for name in skipped:
            print(f"  {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
