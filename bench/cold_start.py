"""Cold start as Lambda runs it: the package `make package` builds, imported the way Lambda imports it.

Each package is unzipped into a read-only directory and imported by a fresh interpreter that can write
no bytecode, with boto3 and botocore on the path after it, compiled, as Lambda's runtime provides them
(scripts/lambda_import.py). Ours against:
- the minimal Chalice WebSocket app (bench/minimal_app: boto3 + redis) packaged the same way
  (chalice package, then scripts/ship_bytecode.py); goal at most 1.2x; and with what `$connect` of
  an AUTH_MODE=jwt stage imports on its first token added to ours: chalicelib.tokens and chalicelib.jwk
  (a JWKS stage, RS256/ES256 through cryptography's primitives; goal at most 1.15x), chalicelib.tokens
  alone (an HS256 stage: the standard library), and, before, PyJWT (`import jwt`, what tokens.py used
  to import) from a copy of our package that bundles it;
- our own package imported with a warm bytecode cache (its sources in a writable directory, after
  one untimed import wrote their bytecode);
  goal at most 1.3x: shipping bytecode leaves almost nothing to compile;
and, for the record, the same package without its bytecode (as `chalice package` alone ships it) and
with boto3/botocore bundled (as requirements.txt pinned them before). Samples alternate between the
cases, so disk cache and CPU frequency treat them alike. Sizes of each zip, zipped and unzipped.

Lambda gives a function CPU in proportion to its memory, one full vCPU at 1769 MB: the figures at
256 and 1024 MB are this machine's, scaled by 1769 / memory, a model, not a measurement.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.common import AWS_ENV, REPO, Figure, at_most

sys.path.insert(0, str(REPO / "scripts"))
from lambda_import import import_like_lambda, make_writable, unpack_read_only

SAMPLES = 9
FULL_VCPU_MB = 1769
# What Lambda's Python runtimes put on the path after /var/task: the AWS SDK and its dependencies.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")
# The project files `chalice package` needs, for a copy packaged with other requirements.
PROJECT_FILES = ("app.py", "chalicelib", ".chalice")
MB = 1024 * 1024
# What tokens.py imported before it verified tokens itself, for the before-and-after figure.
PYJWT_REQUIREMENT = "PyJWT==2.15.1\n"
# $connect's imports on its first token with AUTH_MODE=jwt: (package, modules), now and before.
CONNECT_JWT = {
    "jwks": ("ours", ("app", "chalicelib.tokens", "chalicelib.jwk")),
    "hs256": ("ours", ("app", "chalicelib.tokens")),
    "pyjwt": ("pyjwt", ("app", "jwt")),
}


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, **AWS_ENV, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def package_ours(out: Path) -> Path:
    _run(["make", "--no-print-directory", "package", f"OUT={out}", f"BUILD={out.parent / 'build'}"], REPO)
    return out / "deployment.zip"


def package_like_ours(project: Path, stage: str, out: Path) -> Path:
    """`chalice package` then the same bytecode step `make package` runs."""
    bin_dir = Path(sys.executable).parent
    _run([str(bin_dir / "chalice"), "package", "--stage", stage, str(out)], project)
    _run([sys.executable, str(REPO / "scripts" / "ship_bytecode.py"), str(out / "deployment.zip"),
          "--template", str(out / "sam.json")], project)  # fmt: skip
    return out / "deployment.zip"


def project_copy(target: Path, requirements: str) -> Path:
    target.mkdir(parents=True)
    for item in PROJECT_FILES:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, target / item, ignore=shutil.ignore_patterns("deployed", "deployments"))
        else:
            shutil.copy(source, target / item)
    (target / "requirements.txt").write_text(requirements)
    return target


def lambda_runtime(target: Path) -> Path:
    """The SDK as Lambda's runtime ships it: these packages from our environment, compiled."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for name in RUNTIME_PACKAGES:
        source = site / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    _run([sys.executable, "-m", "compileall", "-q", str(target)], target)
    return target


def without_bytecode(archive: Path, target: Path) -> Path:
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as stripped:
        for info in source.infolist():
            if not info.filename.endswith(".pyc"):
                stripped.writestr(info, source.read(info))
    return target


def sizes(archive: Path) -> tuple[float, float]:
    """(zipped, unzipped) megabytes."""
    with zipfile.ZipFile(archive) as zipped:
        return archive.stat().st_size / MB, sum(i.file_size for i in zipped.infolist()) / MB


def run(tmp_dir) -> list[Figure]:
    tmp = Path(tmp_dir) / "coldstart"
    print("coldstart: packaging ours, the minimal app, ours with boto3 bundled, ours with PyJWT", flush=True)
    ours_zip = package_ours(tmp / "ours" / "out")
    minimal_zip = package_like_ours(REPO / "bench" / "minimal_app", "dev", tmp / "minimal" / "out")
    bundled_requirements = (REPO / "requirements.txt").read_text() + "boto3==1.44.8\nbotocore==1.44.8\n"
    bundled_zip = package_like_ours(
        project_copy(tmp / "bundled", bundled_requirements), "prod", tmp / "bundled" / "out"
    )
    pyjwt_requirements = (REPO / "requirements.txt").read_text() + PYJWT_REQUIREMENT
    pyjwt_zip = package_like_ours(
        project_copy(tmp / "pyjwt", pyjwt_requirements), "prod", tmp / "pyjwt" / "out"
    )
    sources_zip = without_bytecode(ours_zip, tmp / "sources.zip")
    runtime = lambda_runtime(tmp / "runtime")

    dirs = {
        "ours": unpack_read_only(ours_zip, tmp / "run" / "ours"),
        "minimal": unpack_read_only(minimal_zip, tmp / "run" / "minimal"),
        "bundled": unpack_read_only(bundled_zip, tmp / "run" / "bundled"),
        "sources": unpack_read_only(sources_zip, tmp / "run" / "sources"),
        "pyjwt": unpack_read_only(pyjwt_zip, tmp / "run" / "pyjwt"),
    }
    warm = tmp / "run" / "warm"  # the sources, where Python writes its own bytecode as it imports them
    with zipfile.ZipFile(sources_zip) as zipped:
        zipped.extractall(warm)

    def sample(name: str, modules=("app",)) -> dict:
        if name == "warm":
            return import_like_lambda(warm, list(modules), [runtime], AWS_ENV, write_bytecode=True)["ms"]
        return import_like_lambda(dirs[name], list(modules), [runtime], AWS_ENV)["ms"]

    sample("warm")  # writes whatever bytecode the warm copy still lacks
    times: dict[str, list[float]] = {
        key: [] for key in ("ours", "minimal", "warm", "sources", "bundled", *CONNECT_JWT)
    }
    for round_ in range(SAMPLES):
        print(f"coldstart: round {round_ + 1}/{SAMPLES}", flush=True)
        for name in ("ours", "minimal", "warm", "sources", "bundled"):
            times[name].append(sample(name)["app"])
        for case, (package, modules) in CONNECT_JWT.items():
            times[case].append(sum(sample(package, modules).values()))
    for directory in dirs.values():
        make_writable(directory)
    median = {key: statistics.median(values) for key, values in times.items()}

    ours_size, minimal_size, bundled_size = sizes(ours_zip), sizes(minimal_zip), sizes(bundled_zip)
    as_lambda = "as Lambda imports it (median)"
    figures = [
        Figure("cold start", f"import app, {as_lambda}", "ms", median["ours"], median["minimal"],
               "minimal Chalice WebSocket app, packaged the same way", at_most(1.2)),
        Figure("cold start", "import app + tokens + jwk ($connect, AUTH_MODE=jwt, JWKS)", "ms", median["jwks"],
               median["minimal"], "minimal Chalice WebSocket app", at_most(1.15)),
        Figure("cold start", "import app + tokens ($connect, AUTH_MODE=jwt, HS256)", "ms", median["hs256"],
               median["minimal"], "minimal Chalice WebSocket app", at_most(1.15)),
        Figure("cold start", "before: import app + PyJWT ($connect, AUTH_MODE=jwt)", "ms", median["pyjwt"],
               median["minimal"], "minimal Chalice WebSocket app"),
        Figure("cold start", "$connect's JWT imports, JWKS stage: now against before", "ms", median["jwks"],
               median["pyjwt"], "import app + PyJWT"),
        Figure("cold start", "import app, shipped bytecode", "ms", median["ours"], median["warm"],
               "our package with a warm bytecode cache", at_most(1.3)),
        Figure("cold start", "import app without bytecode (chalice package alone)", "ms", median["sources"],
               median["ours"], "with the shipped bytecode"),
        Figure("cold start", "import app with boto3/botocore bundled", "ms", median["bundled"], median["ours"],
               "boto3/botocore from the runtime"),
        Figure("package size", "deployment.zip, zipped", "MB", ours_size[0], minimal_size[0], "minimal app"),
        Figure("package size", "deployment.zip, unzipped", "MB", ours_size[1], minimal_size[1], "minimal app"),
        Figure("package size", "zipped, boto3/botocore bundled", "MB", bundled_size[0], ours_size[0],
               "from the runtime"),
        Figure("package size", "unzipped, boto3/botocore bundled", "MB", bundled_size[1], ours_size[1],
               "from the runtime"),
    ]  # fmt: skip
    for memory in (256, 1024):
        scale = FULL_VCPU_MB / memory
        figures.append(
            Figure(
                "cold start (model)",
                f"import app at {memory} MB",
                "ms",
                median["ours"] * scale,
                median["minimal"] * scale,
                f"minimal app at {memory} MB",
            )
        )
    return figures
