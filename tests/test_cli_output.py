"""What the commands print: calibrate's progress never passes its total, and the certify
summary's tables keep every label and value in their columns."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from seg1b_dask.cli import main, summaries
from seg1b_dask.grading.gates import Failure, GradeReport, failure_table
from seg1b_dask.lanes import calibrate as calibration_lane
from seg1b_dask.lanes.calibrate import trials_to_run


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# -- calibrate's progress ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("complete", "running", "trials", "parallel", "expected"),
    [
        (0, 0, 3, 2, 4),  # whole batches: --trials 3 runs 4
        (0, 0, 30, 2, 30),
        (0, 0, 1, 3, 3),
        (2, 1, 3, 2, 1),  # a resumed search finishes the trial left running, and stops
        (2, 3, 3, 2, 2),  # at most --parallel resumed at once
        (1, 0, 4, 2, 4),
        (5, 0, 3, 2, 0),  # nothing left to run
    ],
)
def test_calibrate_plans_whole_batches(complete: int, running: int, trials: int, parallel: int, expected: int) -> None:
    assert trials_to_run(complete, running, trials, parallel) == expected


def _fake_search(events: list[str]) -> Any:
    """A stand-in for the calibration lane that reports ``events`` and finds no winner."""

    def search(*args: Any) -> Any:
        on_event = args[11]
        for event in events:
            on_event(event)
        start = SimpleNamespace(number=0, stage="ran", passed=False, relocated_share=0.5, worst_gate="top1_share")
        return SimpleNamespace(folder=args[5], trials=[start], start=start, winner=None, bundle=None, pack=None)

    return search


@pytest.mark.parametrize(
    ("events", "total"),
    [
        ([f"trial {n}: ran, relocated 0.5000, fails: top1_share" for n in range(4)], 4),  # a new search
        (["trials to run 1", "trial 3: ran, relocated 0.5000, passes"], 1),  # a resumed one
    ],
)
def test_calibrate_progress_never_passes_its_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str], total: int
) -> None:
    monkeypatch.setattr(calibration_lane, "calibrate", _fake_search(events))
    out_dir, root = str(tmp_path / "search"), str(tmp_path / "r")
    code, out = _cli("calibrate", "--root", root, "--out", out_dir, "--trials", "3", "--parallel", "2")
    assert code == 0, out
    steps = re.findall(r"^\[(\d+)/(\d+)\] trial", out, flags=re.M)
    assert steps == [(str(k), str(total)) for k in range(1, total + 1)], out


# -- the certify table ---------------------------------------------------------------------


def _pack(seeds: list[int], outcome: str, failures: list[Failure]) -> Any:
    metrics = {k: 0.123456 for k in (*summaries.CORE_METRICS, *summaries.REALISM_METRICS)}
    metrics["sentinel_flagged"] = 0
    card = {
        "metrics": metrics,
        "fidelity": {"relocated_share": 0.5, "merchant_retention_median": 0.5, "merchants_lost_home": 0},
        "price": {"ratio": {"B_PLUS": 1.25, "B": 1.6}},
        "sealed": True,
    }
    scored = {s: SimpleNamespace(card=card, bootstrap={"top1_share": 0.07, "country_gini": 0.5}) for s in seeds}
    report = GradeReport(
        outcome,  # type: ignore[arg-type]
        seeds,
        [],
        {"B": failures, "B_PLUS": failures},
        cv={k: 0.01 for k in summaries.CORE_METRICS},
        next_action="widen the margins",
    )
    return SimpleNamespace(
        folder=Path("/packs/p"),
        report=report,
        scored=scored,
        results={s: None for s in seeds},
        wall_seconds=1.0,
        content_sha256="0" * 64,
        promoted=False,
    )


def _ends(line: str) -> list[int]:
    return [m.end() for m in re.finditer(r"\S+", line)]


def test_every_certify_table_row_keeps_its_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A label longer than the column (here a 35-character one) widens the column for every
    row: each value ends where its header ends, after the label and a space."""
    long_label = "uniform_alternative_relocated_share"
    monkeypatch.setattr(summaries, "REALISM_METRICS", (*summaries.REALISM_METRICS, long_label))
    seeds = [42, 7, 101, 202]
    lines = summaries.pack_summary(_pack(seeds, "GREEN_BPLUS", []))
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("metric"))
    end = lines.index("", start)
    header, rows = lines[start], lines[start + 1 : end]
    value_ends = [m.end() for m in re.finditer(r"seed \d+|cv", header)]  # where each value column ends
    first_value = value_ends[0] - 10  # the first value column is 10 wide
    assert any(long_label in row for row in rows)
    assert len(rows) == len(summaries.CORE_METRICS) + len(summaries.REALISM_METRICS) + 7  # + bootstrap, price
    for row in rows:
        label = re.match(r"  (\S.*?)\s{2,}\S", row)
        assert label is not None, row
        ends = _ends(row)
        assert ends[-len(seeds) :] == value_ends[: len(seeds)] or ends[-(len(seeds) + 1) :] == value_ends, row
        assert label.end(1) < first_value and row[2] != " ", row


def test_every_failure_table_row_keeps_its_columns() -> None:
    long_gate = "bootstrap_upper:eligible_country_nonzero_share_of_every_region"
    failures = [
        Failure("top1_share", "B", 42, 0.08, 0.09, "raise the cap"),
        Failure(long_gate, "B", None, 0.1, 0.2, "narrow it"),
        Failure("nn_contraction", "B", 18446744073709551615, 0.35, 0.3, "more tiles"),
        Failure("nn_contraction", "B", 18446744073709551614, 0.35, 0.31, "more tiles"),
    ]
    lines = failure_table(GradeReport("RED", [42], [], {"B": failures}), "B")
    table = [line for line in lines if "→" not in line]
    assert len(table) == 4 and sum("→" in line for line in lines) == 3
    header = table[0]
    seeds_at = header.index("seeds")
    for line in table:
        assert _ends(line)[-2:] == _ends(header)[-2:], line  # threshold and observed, right-aligned
        assert line[seeds_at - 1] == " " and line[seeds_at] != " ", line  # seeds start one column
