"""Cold start: the import time of our ``app`` against a minimal Chalice app importing boto3 and redis.

Each sample is a fresh interpreter (as a new Lambda container is), timing only ``import app``;
the two apps alternate so that disk cache and CPU frequency treat them alike. Both import from
compiled bytecode (one untimed import first writes it), so the figure is import work, not the
compiler's: in Lambda, where ``chalice package`` ships no bytecode, both would also pay compilation.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from bench.common import AWS_ENV, REPO, Figure

SAMPLES = 15
_TIMER = (
    "import time; started = time.perf_counter(); import app; print((time.perf_counter() - started) * 1000)"
)


def import_ms(project_dir) -> float:
    env = {**os.environ, **AWS_ENV, "PYTHONPATH": str(project_dir)}
    result = subprocess.run(
        [sys.executable, "-c", _TIMER], cwd=project_dir, env=env, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


def run(tmp_dir) -> list[Figure]:
    ours, minimal = [], []
    import_ms(REPO), import_ms(REPO / "bench" / "minimal_app")
    for _ in range(SAMPLES):
        ours.append(import_ms(REPO))
        minimal.append(import_ms(REPO / "bench" / "minimal_app"))
    return [
        Figure(
            "cold start",
            "import app (median)",
            "ms",
            statistics.median(ours),
            statistics.median(minimal),
            "minimal Chalice app + boto3 + redis",
            "<= 1.2",
        )
    ]
