"""What the metrics cost: cold start and CPU per publish, with chalicelib/metrics.py on and off.

- **Cold start**, measured as bench/cold_start.py measures (the zip `make package` builds, unzipped
  read-only, imported by a fresh interpreter that writes no bytecode, boto3 from a compiled copy after
  it): `import app` then `import chalicelib.metrics`, against `import app` alone; goal at most 1.05x.
  For the choice of writing the EMF document ourselves: `import app` then Powertools for AWS Lambda's
  `aws_lambda_powertools.metrics`, installed with pip into a directory of its own and compiled as
  `make package` would ship it (unchecked-hash bytecode), against the same `import app`. Powertools
  is never installed into the project: when pip cannot fetch it, that figure is left out and said so.
- **CPU per publish**: the app's real publish handler on API Gateway events, 10 recipients (a small
  publish, where a fixed cost per invocation shows the most), a real redis-server and the Management
  API stand-in in another process; "on" is the handler as wired (its ``metrics.recording`` writes the
  one EMF line, here to /dev/null), "off" the same handler with ``metrics.recording`` replaced by one
  that writes nothing; process CPU per publish, medians of rounds in which on and off take turns.
  Goal at most 1.05x.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.cold_start import SAMPLES, lambda_runtime, package_ours
from bench.common import AWS_ENV, REPO, Figure, at_most
from bench.cpu_per_recipient import process_cpu_seconds, publishing_app

sys.path.insert(0, str(REPO / "scripts"))
from lambda_import import import_like_lambda, make_read_only, make_writable, unpack_read_only

POWERTOOLS = "aws-lambda-powertools==3.37.0"
RECIPIENTS = 10
PUBLISHES = 300
ROUNDS = 7


def _powertools(target: Path) -> Path | None:
    """Powertools in ``target``, compiled as `make package` ships bytecode; None when pip cannot."""
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(target), POWERTOOLS]  # fmt: skip
    if subprocess.run(install, capture_output=True, text=True, check=False).returncode != 0:
        return None
    compile_all = [
        sys.executable,
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        str(target),
    ]
    subprocess.run(compile_all, check=True, capture_output=True)
    make_read_only(target)
    return target


def cold_start(tmp: Path) -> list[Figure]:
    """Each sample is one fresh interpreter importing ``app`` then the metrics module: the baseline is
    the same interpreter's ``import app``, so the machine's load between processes cannot tip a ratio
    that differs by a few percent."""
    print("metrics: packaging ours, installing Powertools for the comparison", flush=True)
    task = unpack_read_only(package_ours(tmp / "out"), tmp / "task")
    runtime = lambda_runtime(tmp / "runtime")
    powertools = _powertools(tmp / "powertools")
    cases = {"ours": ("chalicelib.metrics", [runtime])}
    if powertools:
        cases["powertools"] = ("aws_lambda_powertools.metrics", [runtime, powertools])
    app_ms: dict[str, list[float]] = {case: [] for case in cases}
    module_ms: dict[str, list[float]] = {case: [] for case in cases}
    try:
        for round_ in range(SAMPLES):
            print(f"metrics: cold start round {round_ + 1}/{SAMPLES}", flush=True)
            for case, (module, paths) in cases.items():
                ms = import_like_lambda(task, ["app", module], paths, AWS_ENV)["ms"]
                app_ms[case].append(ms["app"])
                module_ms[case].append(ms[module])
    finally:
        make_writable(task)
        if powertools:
            make_writable(powertools)
    median = statistics.median
    whole = {
        case: median(a + m for a, m in zip(app_ms[case], module_ms[case], strict=True)) for case in cases
    }
    figures = [
        Figure("metrics", "cold start: import app + chalicelib.metrics", "ms", whole["ours"],
               median(app_ms["ours"]), "import app alone (same interpreters)", at_most(1.05)),
    ]  # fmt: skip
    if powertools:
        figures += [
            Figure("metrics", "cold start: import app + Powertools' metrics", "ms", whole["powertools"],
                   median(app_ms["powertools"]), "import app alone (same interpreters)",
                   measured_name="Powertools"),
            Figure("metrics", "cold start: Powertools' metrics module against ours, after app", "ms",
                   median(module_ms["powertools"]), median(module_ms["ours"]), "chalicelib.metrics",
                   measured_name="Powertools"),
            # Powertools would have been chosen at 1.05 or less: a rule for the choice, not a goal of ours.
            Figure("metrics", "cold start with Powertools' metrics against with ours", "ms",
                   whole["powertools"], whole["ours"], "import app + chalicelib.metrics",
                   measured_name="Powertools"),
        ]  # fmt: skip
    else:
        print(f"metrics: pip could not install {POWERTOOLS}: no Powertools figure", flush=True)
    return figures


def cpu_per_publish(tmp: Path) -> list[Figure]:
    from chalicelib.log import logger
    from testing.lambda_context import LambdaContext

    # limits off: this measures the handler, not the buckets
    limits_off = {"PUBLISH_RATE_PER_SECOND": "0", "MAX_POSTS_PER_SECOND": "0"}
    with (
        publishing_app(tmp, RECIPIENTS, **limits_off) as (app, connections, _),
        open(os.devnull, "w") as sink,
    ):
        logger.setLevel("WARNING")  # the same "published" line both ways would only add noise
        event = connections[0].message_event('{"type": 99, "data": "data to publish"}')

        def publish():
            assert app.message(event, LambdaContext()) == {"statusCode": 200}

        # "on": the handler as wired, its one line to /dev/null; "off": the same without any document
        phases = {"off": _unrecorded, "on": lambda: contextlib.redirect_stdout(sink)}
        samples: dict[str, list[float]] = {"off": [], "on": []}
        for round_number in range(ROUNDS + 1):  # the first round warms up
            for name, phase in phases.items():
                with phase():
                    started = process_cpu_seconds()
                    for _ in range(PUBLISHES):
                        publish()
                if round_number:
                    samples[name].append((process_cpu_seconds() - started) * 1000 / PUBLISHES)
        logger.setLevel("INFO")
        document_ms = _document_cpu_ms(sink)
    off_ms = statistics.median(samples["off"])
    return [
        Figure("metrics", f"CPU per publish to {RECIPIENTS}, metrics on", "ms",
               statistics.median(samples["on"]), off_ms, "metrics off", at_most(1.05)),
        # The difference above is within the machine's noise: the document's own CPU, alone, beside it.
        Figure("metrics", f"CPU per publish to {RECIPIENTS} + its document (recorded, built, written)",
               "ms", off_ms + document_ms, off_ms, "metrics off", at_most(1.05)),
    ]  # fmt: skip


@contextlib.contextmanager
def _unrecorded():
    """The handler without its metrics document: ``metrics.recording`` keeps a recorder nobody writes
    out (the use cases' few calls into it still run, so "off" is, if anything, generous)."""
    from chalicelib import metrics

    def recording(namespace, function_name, write=None):
        return contextlib.nullcontext(metrics.current())

    wired = metrics.recording
    metrics.recording = recording
    try:
        yield
    finally:
        metrics.recording = wired


def _document_cpu_ms(sink) -> float:
    """Process CPU of one publish's recording and its one EMF line, median of ROUNDS rounds."""
    from chalicelib import metrics
    from chalicelib.fanout import DeliveryReport

    samples = []
    for _ in range(ROUNDS):
        started = process_cpu_seconds()
        for _ in range(PUBLISHES * 10):
            recorder = metrics.Metrics("WsBroadcast", "ws-broadcast-prod-websocket_message")
            recorder.count(metrics.PUBLISHED)
            recorder.delivery(DeliveryReport(RECIPIENTS, RECIPIENTS), 1.5)
            recorder.flush(sink.write)
        samples.append((process_cpu_seconds() - started) * 1000 / (PUBLISHES * 10))
    return statistics.median(samples)


def run(tmp_dir) -> list[Figure]:
    tmp = Path(tmp_dir) / "metrics"
    return cpu_per_publish(tmp) + cold_start(tmp)
