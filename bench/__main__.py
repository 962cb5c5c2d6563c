"""`make bench`: every benchmark in one run, each figure beside its baseline, as a ratio.

python -m bench [NAME ...]     (names: cpu, firstpublish, connect, redis, rtt, channels, history, backend,
                               coldstart, metrics, simlatency, fanout, fanout-https, scale; default: all but
                               fanout-https, a part of fanout on its own)

BENCH_SCALE_MILLION=1 adds the scale suite's broadcast to 1 000 000 (about 10 minutes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import common


def main() -> None:
    from bench import (
        backend_publish,
        broadcast_scale,
        channel_costs,
        cold_start,
        connect_cpu,
        cpu_per_recipient,
        fanout_latency,
        first_publish,
        history_costs,
        metrics_cost,
        redis_costs,
        sharded_latency,
        simulated_latency,
    )

    suites = {
        "simlatency": simulated_latency.run,
        "fanout": fanout_latency.run,
        "fanout-https": fanout_latency.run_https,
        "cpu": cpu_per_recipient.run,
        "firstpublish": first_publish.run,
        "connect": connect_cpu.run,
        "redis": redis_costs.run,
        "rtt": sharded_latency.run,
        "channels": channel_costs.run,
        "history": history_costs.run,
        "backend": backend_publish.run,
        "coldstart": cold_start.run,
        "metrics": metrics_cost.run,
        "scale": broadcast_scale.run,
    }
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(suites)} (default: all but fanout-https)"
    )
    names = parser.parse_args().names or [name for name in suites if name != "fanout-https"]
    unknown = sorted(set(names) - set(suites))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(suites)}")
    figures, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.monotonic()
            try:
                figures += suites[name](Path(tmp))
            except Exception as error:  # one failed benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(f"{name}: {type(error).__name__}: {error}")
            print(f"bench: {name} took {time.monotonic() - started:.0f} s", flush=True)
    print()
    common.print_table(figures)
    path = common.write_json(
        figures, "latest", {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )
    print(f"\nfigures written to {path.relative_to(common.REPO)}")
    if failed:
        print("\nbench: FAILED\n" + "\n".join(f"  {line}" for line in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
