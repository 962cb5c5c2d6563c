"""The benchmark table's rules: only our own figures carry goals, a ratio over a zero baseline is never
NaN or infinite, and every row with a goal says whether it was met."""

import io
import json
import math

import pytest

from bench.common import Figure, at_least, at_most, exactly, print_table


def figure(ours: float, baseline: float, **fields) -> Figure:
    return Figure("cpu per recipient", "a case", "ms", ours, baseline, "boto3 post loop", **fields)


def table_rows(*figures: Figure) -> list[dict[str, str]]:
    out = io.StringIO()
    print_table(list(figures), out=out)
    header, _rule, *lines = out.getvalue().splitlines()
    names = [cell.strip() for cell in header.strip("|").split("|")]
    return [
        dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines
    ]


def test_a_comparison_row_cannot_carry_a_goal():
    # GIVEN a row measuring botocore's urllib3 session, not ours
    # WHEN it is given a goal THEN it is refused: a baseline has no goal of ours to meet
    with pytest.raises(ValueError, match="only our own figures carry goals"):
        figure(0.5, 0.49, goal=at_most(0.333), measured_name="botocore's URLLib3Session")


def test_a_comparison_row_shows_what_it_measured_and_no_goal_or_met():
    # GIVEN a comparison row beside one of ours
    rows = table_rows(
        figure(0.12, 0.48, goal=at_most(0.333)), figure(0.5, 0.48, measured_name="botocore's URLLib3Session")
    )
    # THEN ours has a goal and a met; the comparison names what it measured and has neither
    assert (rows[0]["goal"], rows[0]["met"]) == ("<= 0.333", "yes")
    assert rows[1]["measured"] == "0.500 ms (botocore's URLLib3Session)"
    assert (rows[1]["goal"], rows[1]["met"]) == ("", "")


def test_nothing_against_nothing_is_a_ratio_of_zero():
    # GIVEN 0 recipients posted twice against 0 jobs retried whole
    nothing = figure(0, 0, goal=at_most(1))
    # THEN the ratio is 0, printed with its two figures, in the JSON too, and the goal is met
    assert nothing.ratio == 0
    assert table_rows(nothing)[0]["ratio"] == "0 (0 / 0)"
    assert json.loads(json.dumps(nothing.as_dict()))["ratio"] == 0
    assert nothing.met is True


def test_something_against_nothing_has_no_ratio_and_misses_an_upper_bound():
    # GIVEN 3 recipients posted twice against 0 jobs retried whole
    twice = figure(3, 0, goal=at_most(1))
    # THEN there is no ratio (never inf or NaN), the table shows the two figures, and the goal is missed
    assert twice.ratio is None
    assert table_rows(twice)[0]["ratio"] == "n/a (3 / 0)"
    assert json.loads(json.dumps(twice.as_dict(), allow_nan=False))["ratio"] is None
    assert twice.met is False
    assert figure(3, 0, goal=at_least(1)).met is True


@pytest.mark.parametrize(
    ("ours", "baseline", "goal", "met"),
    [
        (0.12, 0.48, at_most(0.333), "yes"),
        (0.2, 0.48, at_most(0.333), "no"),
        (1.0, 1.0, at_most(1), "yes"),
        (1000, 1000, exactly(1, "nothing lost"), "yes"),
        (999, 1000, exactly(1, "nothing lost"), "no"),
        (2.0, 1.0, at_least(1.5), "yes"),
        (1.0, 1.0, at_least(1.5), "no"),
    ],
)
def test_each_row_with_a_goal_says_whether_it_was_met(ours, baseline, goal, met):
    row = table_rows(figure(ours, baseline, goal=goal))[0]
    assert row["met"] == met
    assert figure(ours, baseline, goal=goal).as_dict()["met"] is (met == "yes")


def test_a_row_without_a_goal_says_nothing_about_meeting_one():
    plain = figure(0.7, 0.48)
    assert (table_rows(plain)[0]["goal"], table_rows(plain)[0]["met"]) == ("", "")
    assert plain.as_dict()["met"] is None


def test_no_printed_or_written_ratio_is_nan_or_infinite():
    figures = [figure(0, 0), figure(5, 0), figure(1, 3), figure(0, 2)]
    for row in table_rows(*figures):
        assert "nan" not in row["ratio"].lower() and "inf" not in row["ratio"].lower()
    for written in (f.as_dict()["ratio"] for f in figures):
        assert written is None or math.isfinite(written)
