"""``seg1b diagnose``: at which state each failing gate of a run first goes wrong, read from
its checkpoints beside the pinned baseline it is graded against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import checkpoints
from seg1b_dask.grading.checkpoints import GateTrace
from seg1b_dask.grading.gates import Level
from seg1b_dask.grading.scoring import read_scorecard
from seg1b_dask.io import packs
from seg1b_dask.io.discipline import baseline_of_run, load_run
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.policies.bundle import sealed_bundle
from seg1b_dask.states.triage import triage_hints


@dataclass(frozen=True)
class Diagnosis:
    run_id: str
    seed: int
    bundle: str
    level: Level
    baseline_run_id: str | None
    traces: list[GateTrace]

    @property
    def failing(self) -> list[GateTrace]:
        return [t for t in self.traces if t.first_wrong is not None]


def diagnose(root: Path, run: Path, level: Level | None = None) -> Diagnosis:
    """The run's gates at ``level`` (default: its bundle's target grade, else B) traced
    through its checkpoints, beside the pinned baseline it is graded against."""
    meta = load_run(run, needs=("states", "policies"))
    if not (packs.scorecard_json(run)).is_file():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "this run has no scorecard yet: `seg1b score RUN` first", file=run)
    card = read_scorecard(packs.scorecard_dir(run))
    bundle = sealed_bundle(meta)
    level = level or ("B_PLUS" if bundle.s9_validation.target_grade == "B_PLUS" else "B")
    pin = baseline_of_run(root, meta)
    base_card = base_profiles = None
    if pin and pin["run_id"] != meta["run_id"]:
        pinned = RunRoot(root).run(pin["run_id"])
        base_card, base_profiles = read_scorecard(packs.scorecard_dir(pinned)), checkpoints.ensure(root, pinned)
    hints = triage_hints(bundle)
    traces = checkpoints.trace_runs(
        card, checkpoints.ensure(root, run), bundle.gates, level, hints, base_card, base_profiles
    )
    return Diagnosis(meta["run_id"], meta["seed"], bundle.name, level, pin["run_id"] if pin else None, traces)
