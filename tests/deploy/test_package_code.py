"""The code `make package` ships: what the zip holds, the runtime it names, and bytecode Lambda uses.

Every test reads the session's one `make package` (conftest). The bytecode test imports the unzipped
package as Lambda does (scripts/lambda_import.py: read-only directory, fresh interpreter, no bytecode
writes, boto3 from the "runtime" after it) and watches every source the interpreter compiles.
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import OFFLINE_ENV, REPO

pytestmark = pytest.mark.timeout(600)
FUNCTIONS = ("WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lambda_runtime = _script("lambda_runtime")
lambda_import = _script("lambda_import")


@pytest.fixture(scope="module")
def names(package_dir) -> set[str]:
    with zipfile.ZipFile(package_dir / "deployment.zip") as archive:
        return set(archive.namelist())


# ------------------------------------------------------------------------------------------ runtime
def test_every_function_runs_on_the_runtime_of_the_python_that_built_it(resources):
    runtimes = {resources[name]["Properties"]["Runtime"] for name in FUNCTIONS}
    local = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert runtimes == {local}  # hiredis' wheel and the bytecode are built for this Python
    assert local in lambda_runtime.SUPPORTED


def test_lambda_still_accepts_the_runtime_for_new_functions():
    # The same check `make package` runs first; it fails here on the day Lambda stops accepting it.
    runtime = lambda_runtime.runtime_of()
    errors, _ = lambda_runtime.problems(
        runtime, sys.version_info, datetime.date.today(), lambda_runtime.lifecycle()
    )
    assert errors == []


DATES = {
    "python3.10": {"deprecated": "2026-10-31", "create-block": "2027-02-01", "successor": "python3.14"},
    "python3.11": {"deprecated": "2027-06-30", "create-block": "2027-07-31", "successor": "python3.14"},
}


@pytest.mark.parametrize(
    ("runtime", "version", "today", "error", "warning"),
    [
        ("python3.11", (3, 11), "2027-01-01", None, None),
        ("python3.11", (3, 11), "2027-07-01", None, "deprecated python3.11 on 2027-06-30"),
        ("python3.11", (3, 11), "2027-07-31", "stopped accepting python3.11 for new functions", None),
        ("python3.10", (3, 9), "2027-01-01", "would name the runtime python3.10 for this Python 3.9", None),
        ("python3.15", (3, 15), "2027-01-01", "python3.15 is not a runtime this project supports", None),
        # deprecated, yet still accepted by Lambda for new functions: no longer offered
        (
            "python3.10",
            (3, 10),
            "2026-12-03",
            "python3.10 is not a runtime this project supports (Lambda deprecated it on 2026-10-31)",
            None,
        ),
        ("python3.12", (3, 12), "2027-01-01", "Lambda has no runtime python3.12", None),
    ],
)
def test_the_runtime_check_says_what_lambda_will_refuse(runtime, version, today, error, warning):
    errors, warnings = lambda_runtime.problems(runtime, version, datetime.date.fromisoformat(today), DATES)
    if error:
        (message,) = errors
        assert error in message
        assert "make package PYTHON=python3.X VENV=.venv-3.X" in message
    else:
        assert errors == []
    assert bool(warnings) == bool(warning)
    if warning:
        assert warning in warnings[0]


TODAY = datetime.date(2026, 12, 3)


def test_the_supported_runtimes_are_exactly_those_lambda_has_not_deprecated_as_of_today():
    # Lambda's published dates (cfn-lint's pinned lifecycle data) on 2026-12-03: python3.10 was
    # deprecated on 2026-10-31, 3.11 to 3.14 are current (chalice 1.34 knows none newer).
    dates = lambda_runtime.lifecycle()
    current = {
        runtime
        for runtime, phases in dates.items()
        if runtime.startswith("python3.")
        and datetime.date.fromisoformat(phases["deprecated"]) > TODAY
        and int(runtime.split(".")[1]) <= 14
    }
    assert set(lambda_runtime.SUPPORTED) == current == {f"python3.{minor}" for minor in range(11, 15)}
    for runtime in lambda_runtime.SUPPORTED:
        version = (3, int(runtime.split(".")[1]))
        assert lambda_runtime.problems(runtime, version, TODAY, dates) == ([], []), runtime


def test_python_3_10_is_refused_as_of_today_with_lambdas_deprecation_date():
    (error,), warnings = lambda_runtime.problems("python3.10", (3, 10), TODAY, lambda_runtime.lifecycle())
    assert "Lambda deprecated it on 2026-10-31" in error
    assert "python3.11, python3.12, python3.13, python3.14" in error  # what to use instead
    assert warnings == []


# ------------------------------------------------------------------------------------------ contents
def test_the_zip_holds_the_app_and_its_runtime_dependencies_only(names):
    tops = {name.split("/")[0] for name in names}
    assert {
        "app.py",
        "chalicelib/registry/connections.py",
        "chalicelib/fanout.py",
        "chalicelib/envelope.py",
    } <= names
    # the registry's Lua scripts travel beside its modules
    assert {f"chalicelib/registry/lua/{name}.lua" for name in ("message", "budget", "streams")} <= names
    assert {"redis", "cryptography"} <= tops
    # The Lambda runtime provides boto3 and botocore (with their bytecode): not bundled again.
    assert not tops & {"boto3", "botocore", "s3transfer"}
    # redis-py's C parser, built for Lambda's platform (a manylinux wheel), not for this machine's by chance
    assert any(n.startswith("hiredis/hiredis.cpython-") and n.endswith("-x86_64-linux-gnu.so") for n in names)
    for unwanted in ("tests", "localgw", "bench", "infra", "scripts", "fakeredis", "pytest", "hypothesis",
                     "aiohttp", "cfnlint", "jwt"):  # fmt: skip
        assert unwanted not in tops, unwanted


def test_every_module_ships_with_unchecked_hash_bytecode_for_the_runtime(package_dir, names):
    sources = {n for n in names if n.endswith(".py")}
    tag = sys.implementation.cache_tag  # cpython-3XY: the runtime's Python, checked above
    with zipfile.ZipFile(package_dir / "deployment.zip") as archive:
        for source in ("app.py", "chalicelib/settings.py", "redis/client.py", "chalicelib/jwk.py"):
            path = Path(source)
            pyc = f"{path.parent / '__pycache__' / path.stem}.{tag}.pyc".removeprefix("./")
            header = archive.read(pyc)[:16]
            assert header[:4] == importlib.util.MAGIC_NUMBER, source
            # PEP 552 flags: bit 0 = hash-based, bit 1 = check_source; 0b01 = unchecked hash
            assert int.from_bytes(header[4:8], "little") == 0b01, source
    assert len([n for n in names if n.endswith(f".{tag}.pyc")]) >= 0.95 * len(sources)


def test_lambda_imports_the_shipped_bytecode_and_compiles_nothing(package_dir, tmp_path):
    # GIVEN the package unzipped read-only, as /var/task, and boto3 from the environment, as the runtime's
    task = lambda_import.unpack_read_only(package_dir / "deployment.zip", tmp_path / "task")
    runtime = Path(importlib.util.find_spec("boto3").submodule_search_locations[0]).parent
    try:
        # WHEN a fresh interpreter that may write no bytecode imports the handlers, and token verification
        modules = ["app", "chalicelib.tokens", "chalicelib.jwk"]
        result = lambda_import.import_like_lambda(task, modules, [runtime], OFFLINE_ENV)
    finally:
        lambda_import.make_writable(task)
    # THEN no source of the package was compiled: every module came from the shipped .pyc
    assert result["ms"].keys() == set(modules)
    assert [path for path in result["compiled"] if path.startswith(str(task))] == []
    assert list(task.rglob(f"*.{sys.implementation.cache_tag}.pyc"))  # the shipped ones were there to use


def test_the_same_import_without_the_bytecode_compiles_every_module(package_dir, tmp_path):
    """The control: the probe does see compilation, so the test above cannot pass by accident."""
    stripped = tmp_path / "sources.zip"
    with zipfile.ZipFile(package_dir / "deployment.zip") as source, zipfile.ZipFile(stripped, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith(".pyc"):
                target.writestr(info, source.read(info))
    task = lambda_import.unpack_read_only(stripped, tmp_path / "task")
    runtime = Path(importlib.util.find_spec("boto3").submodule_search_locations[0]).parent
    try:
        result = lambda_import.import_like_lambda(task, ["app"], [runtime], OFFLINE_ENV)
    finally:
        lambda_import.make_writable(task)
    compiled = {Path(path).relative_to(task).as_posix() for path in result["compiled"]}
    assert {"app.py", "chalicelib/settings.py", "redis/client.py"} <= compiled
    assert not list(task.rglob("*.pyc"))  # and nothing was written
