"""The fan-out at N = 1000 of earlier commits' apps, through today's gateway and harness: a regression
hunt that measures instead of guessing (``python -m bench.fanout_by_commit REV [REV ...]``).

Each commit's project is checked out into a temporary worktree and served by this checkout's
``localgw`` (same stand-in, same 20 ms a post, same clients), the commits and this checkout taking
turns for two rounds; each p50 and p95 is printed beside the first commit's, as a ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from bench.common import AWS_ENV, REPO, Figure, percentile, print_table
from bench.fanout_latency import GOAL_CLIENTS, SHIPPED_WORKERS, measure
from testing.redis_server import RedisServer

ROUNDS, REPEATS = 2, 7


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_by_commit", description=__doc__)
    parser.add_argument("revisions", nargs="+", metavar="REV", help="commits to measure beside this checkout")
    revisions = parser.parse_args().revisions
    os.environ.update(AWS_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        projects = {}
        for revision in revisions:
            projects[revision] = Path(tmp) / f"at-{revision}"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(projects[revision]), revision],
                cwd=REPO,
                check=True,
            )
        projects["this checkout"] = REPO
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        samples: dict[str, list[float]] = {name: [] for name in projects}
        try:
            for _ in range(ROUNDS):
                for name, project in projects.items():
                    env = {"FANOUT_WORKERS": str(SHIPPED_WORKERS)}
                    samples[name] += measure(
                        Path(tmp), server, project_dir=project, clients=GOAL_CLIENTS, repeats=REPEATS, env=env
                    )["app"]
        finally:
            server.stop()
            for revision in revisions:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(projects[revision])], cwd=REPO, check=False
                )
    first = revisions[0]
    print_table([
        Figure("fan-out by commit", f"N={GOAL_CLIENTS} {label}, {name}", "s", percentile(samples[name], fraction),
               percentile(samples[first], fraction), f"at {first}")
        for name in projects for label, fraction in (("p50", 0.5), ("p95", 0.95))
    ])  # fmt: skip


if __name__ == "__main__":
    main()
