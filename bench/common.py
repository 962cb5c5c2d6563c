"""What every benchmark shares: dummy AWS settings, a results table, ratios, and JSON output."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from testing.aws import DUMMY_AWS_ENV

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

# Never real AWS: the dummy environment every fake shares.
AWS_ENV = DUMMY_AWS_ENV


@dataclass
class Figure:
    """One measured figure beside its baseline from the same run."""

    benchmark: str
    case: str
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    goal: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


def print_table(figures: list[Figure], out=sys.stdout) -> None:
    header = ("benchmark", "case", "ours", "baseline", "ours/baseline", "goal")
    rows = [
        (
            f.benchmark,
            f.case,
            f"{f.ours:,.3f} {f.unit}",
            f"{f.baseline:,.3f} {f.unit} ({f.baseline_name})",
            f"{f.ratio:.3f}",
            f.goal,
        )
        for f in figures
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)) + " |"
    print(line, file=out)
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|", file=out)
    for row in rows:
        print(
            "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |",
            file=out,
        )


def write_json(figures: list[Figure], name: str, extra: dict | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"figures": [f.as_dict() for f in figures], **(extra or {})}, indent=2) + "\n")
    return path
