"""What every benchmark shares: dummy AWS settings, a results table, ratios, and JSON output."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from botocore.httpsession import get_cert_path

from testing.aws import DUMMY_AWS_ENV
from testing.tls import TlsFiles, make_certificates

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

# Never real AWS: the dummy environment every fake shares.
AWS_ENV = DUMMY_AWS_ENV


@dataclass(frozen=True)
class Goal:
    """What our figure's ratio to its baseline must be, so that every run says whether it was met."""

    bound: float
    relation: str  # "<=", ">=" or "=="
    note: str = ""

    def met(self, ratio: float) -> bool:
        return _RELATIONS[self.relation](ratio, self.bound)

    def __str__(self) -> str:
        return f"{self.relation} {self.bound:g}" + (f" ({self.note})" if self.note else "")


_RELATIONS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


def at_most(bound: float, note: str = "") -> Goal:
    return Goal(bound, "<=", note)


def at_least(bound: float, note: str = "") -> Goal:
    return Goal(bound, ">=", note)


def exactly(bound: float, note: str = "") -> Goal:
    return Goal(bound, "==", note)


@dataclass
class Figure:
    """One measured figure beside its baseline from the same run.

    ``measured_name`` names what was measured when it is not ours (botocore's urllib3 session,
    Powertools): such a row is a comparison, a baseline of its own, so it may not carry a goal.
    """

    benchmark: str
    case: str
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    goal: Goal | None = None
    measured_name: str = ""

    def __post_init__(self) -> None:
        if self.goal is not None and self.measured_name:
            raise ValueError(f"{self.case}: only our own figures carry goals, not {self.measured_name}'s")

    @property
    def ratio(self) -> float | None:
        """ours / baseline; 0 for nothing against nothing (0 duplicates against 0); None when only
        the baseline is 0, which has no finite ratio."""
        if self.baseline:
            return self.ours / self.baseline
        return 0.0 if not self.ours else None

    @property
    def met(self) -> bool | None:
        """Whether the goal was met (None without one); a ratio over a baseline of 0 counts as infinite."""
        if self.goal is None:
            return None
        return self.goal.met(math.inf if self.ratio is None else self.ratio)

    def ratio_text(self) -> str:
        """The ratio as the table prints it; over a baseline of 0, the two figures themselves."""
        if self.baseline:
            return f"{self.ratio:.3f}"
        return "0 (0 / 0)" if self.ratio == 0 else f"n/a ({self.ours:g} / 0)"

    def as_dict(self) -> dict:
        ratio = None if self.ratio is None else round(self.ratio, 4)
        return {**asdict(self), "goal": str(self.goal or ""), "ratio": ratio, "met": self.met}


def https_files(folder: Path) -> TlsFiles:
    """A server certificate from a throwaway CA; its ``ca_cert`` is the bundle to trust it by (for
    AWS_CA_BUNDLE): botocore's default bundle with the CA appended, since every TLS dial loads the
    whole bundle, and on AWS that is botocore's default one."""
    files = make_certificates(folder)
    bundle = folder / "ca-bundle.pem"
    bundle.write_text(Path(get_cert_path(True)).read_text() + "\n" + files.ca_cert.read_text())
    return dataclasses.replace(files, ca_cert=bundle)


def median_call_ms(call: Callable[[], object], *, repeats: int) -> float:
    """The median wall-clock milliseconds of ``repeats`` calls, after one uncounted (warm-up) call."""
    call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


def print_table(figures: list[Figure], out=sys.stdout) -> None:
    header = ("benchmark", "case", "measured", "baseline", "ratio", "goal", "met")
    rows = [
        (
            f.benchmark,
            f.case,
            f"{f.ours:,.3f} {f.unit}" + (f" ({f.measured_name})" if f.measured_name else ""),
            f"{f.baseline:,.3f} {f.unit} ({f.baseline_name})",
            f.ratio_text(),
            str(f.goal or ""),
            {None: "", True: "yes", False: "no"}[f.met],
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
