"""``seg1b calibrate``: search the remediation knobs for the bundle with the least
``relocated_share`` that passes every gate of a grade, with a stated margin, on every seed
(DESIGN §12).

- **The search** is Optuna's TPE sampler, constrained (a trial is feasible when its worst
  shortfall is ≤ 0). Its study lives in a journal file beside the trials, so an interrupted
  search resumes where it stopped: trials left running are evaluated again.
- **Reproducible.** Trials are asked in batches of ``parallel``, evaluated at once and told
  in trial order. Each batch's sampler is seeded from ``search_seed`` and the batch's first
  trial number. The same seed and batch size therefore give the same trials on one worker
  or many, whatever finishes first.
- **Screening.** A trial is first predicted by the feasibility model for every seed, from
  1A's counts and the trial's S2 vector: country gates and plausibility (shares ranking
  with population). A trial that fails there is told as infeasible without running S4–S9.
- **Survivors** run as fast-lane runs of every seed, from driver threads, on the shared Dask
  cluster: S1 and the seeds' S0/S3 come from the cache.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field
from scipy.stats import spearmanr

from seg1b_dask.engine.interrupts import in_threads
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.io.lineage import write_text
from seg1b_dask.io.package import BUNDLES
from seg1b_dask.lanes import feasibility
from seg1b_dask.policies.base import Strict
from seg1b_dask.policies.bundle import PolicyBundle, parse_model

COUNT_GATES = ("sentinel_flagged", "merchant_countries_median")
SPACE_FILE = BUNDLES / "calibration.yaml"


class SearchSpace(Strict):
    """``calibration.yaml``: the knobs, their ranges, the margins and the plausibility floor."""

    version: Literal[1]
    knobs: dict[str, tuple[float, float]]
    margin: float = Field(ge=0.0, le=0.5)
    margin_by_gate: dict[str, float] = {}
    min_population_rank_correlation: float = Field(ge=-1.0, le=1.0)

    def margin_for(self, gate: str) -> float:
        """A gate's own margin, else its family's (``cv`` for ``cv:…``), else the default."""
        family = gate.split(":", 1)[0]
        default = 0.0 if gate in COUNT_GATES else self.margin
        return self.margin_by_gate.get(gate, self.margin_by_gate.get(family, default))


def load_space(path: Path) -> SearchSpace:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise Seg1BError(Code.E_POLICY_INVALID, f"cannot read the search space ({exc})", file=path) from None
    space = parse_model(SearchSpace, data, path, (SearchSpace,))
    for knob, (low, high) in space.knobs.items():
        if not low < high:
            raise Seg1BError(
                Code.E_POLICY_INVALID, "a knob's range must be [low, high] with low < high", file=path, key=knob
            )
    return space


def knob_values(bundle_dir: Path, space: SearchSpace) -> dict[str, float]:
    """The knobs' values in a bundle folder (the search's first trial)."""
    out = {}
    for knob in space.knobs:
        file, *keys = knob.split(".")
        node: Any = yaml.safe_load((bundle_dir / f"{file}.yaml").read_text())
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise Seg1BError(
                    Code.E_POLICY_UNKNOWN_KEY,
                    "the bundle has no such setting",
                    file=bundle_dir / f"{file}.yaml",
                    key=knob,
                )
            node = node[key]
        out[knob] = float(node)
    return out


def write_bundle(start: Path, params: dict[str, float], target: Path) -> Path:
    """``start``'s policy files with ``params`` set (gates.yaml included), as a normal bundle
    folder; the first line of each changed file says what the search set."""
    target.mkdir(parents=True, exist_ok=True)
    gates = start / "gates.yaml" if (start / "gates.yaml").is_file() else start.parent / "gates.yaml"
    shutil.copy(gates, target / "gates.yaml")
    by_file: dict[str, dict[str, float]] = {}
    for knob, value in params.items():
        file, rest = knob.split(".", 1)
        by_file.setdefault(file, {})[rest] = value
    for source in sorted(start.glob("*.yaml")):
        if source.name == "gates.yaml":
            continue
        changes = by_file.get(source.stem)
        if not changes:
            shutil.copy(source, target / source.name)
            continue
        data = yaml.safe_load(source.read_text())
        for path, value in changes.items():
            node = data
            *parents, leaf = path.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = round(float(value), 6)
        header = "# set by seg1b calibrate: " + ", ".join(f"{k}={round(v, 6)}" for k, v in sorted(changes.items()))
        write_text(target / source.name, header + "\n" + yaml.safe_dump(data, sort_keys=False))
    return target


@dataclass
class TrialResult:
    number: int
    params: dict[str, float]
    bundle: Path
    stage: str  # screened | ran
    relocated_share: float  # mean over seeds (predicted when screened)
    worst_gate: str
    worst_shortfall: float  # ≤ 0: every gate passes with its margin on every seed
    rank_correlation: float
    seconds: float = 0.0
    per_seed: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.stage == "ran" and self.worst_shortfall <= 0.0


def shortfalls(rows: list[dict[str, Any]], space: SearchSpace) -> dict[str, float]:
    """Per gate, how far it is from passing with its margin (≤ 0: passes). A count gate
    that passes reads −0.5 and one that fails +0.5 or more, so it is never the "closest"
    gate only because its margin is an integer."""
    out = {}
    for row in rows:
        base = row["gate"].split(":", 1)[-1] if row["gate"].startswith("bootstrap_upper:") else row["gate"]
        margin = row["margin"]
        if margin is None or math.isnan(margin):
            out[row["gate"]] = math.inf
        elif base in COUNT_GATES:
            out[row["gate"]] = -margin - 0.5
        else:
            out[row["gate"]] = space.margin_for(base) - margin
    return out


def rank_correlation(counts: np.ndarray, inputs: feasibility.CountryInputs) -> float:
    eligible = inputs.vector.eligible
    return float(spearmanr(counts[eligible], inputs.vector.population[eligible])[0])


def screen(
    number: int,
    params: dict[str, float],
    bundle_dir: Path,
    bundle: PolicyBundle,
    inputs: dict[int, feasibility.CountryInputs],
    level: grading.Level,
    space: SearchSpace,
) -> TrialResult:
    """The feasibility model's verdict on a trial for every seed: its country gates with
    their margins and its plausibility."""
    worst, gate, rhos, relocated = -math.inf, "", [], []
    for seed, seed_inputs in inputs.items():
        try:
            counts = feasibility.predicted_counts(seed_inputs, bundle)
        except Seg1BError as exc:  # limits no vector meets: an infeasible trial, not a failed search
            return TrialResult(number, params, bundle_dir, "screened", 1.0, f"{exc.code} (seed {seed})", math.inf, 0.0)
        rows = feasibility.country_gate_rows(feasibility.country_card(counts, seed_inputs), bundle.gates, level)
        for name, value in shortfalls(rows, space).items():
            if value > worst:
                worst, gate = value, f"{name} (seed {seed}, predicted)"
        rho = rank_correlation(counts, seed_inputs)
        if space.min_population_rank_correlation - rho > worst:
            worst, gate = space.min_population_rank_correlation - rho, f"population rank correlation (seed {seed})"
        rhos.append(rho)
        relocated.append(int(np.abs(counts - seed_inputs.a_count).sum()) // 2 / seed_inputs.total)
    return TrialResult(number, params, bundle_dir, "screened", float(np.mean(relocated)), gate, worst, min(rhos))


def judge(
    trial: TrialResult, cards: dict[int, Any], level: grading.Level, bundle: PolicyBundle, space: SearchSpace
) -> None:
    """Fill a screened-in trial with its runs' figures: every gate of the grade (bootstrap
    bounds included for B+) with its margin, on every seed."""
    worst, gate, relocated = -math.inf, "", []
    for seed, scored in cards.items():
        rows = grading.gate_table(scored.card, bundle.gates, level, scored.bootstrap or None)
        for name, value in shortfalls(rows, space).items():
            if value > worst:
                worst, gate = value, f"{name} (seed {seed})"
        fidelity = scored.card.get("fidelity", {})
        relocated.append(float(fidelity.get("relocated_share", math.nan)))
        trial.per_seed[seed] = {"relocated_share": relocated[-1], **{r["gate"]: r["observed"] for r in rows}}
    if len(cards) > 1:  # the seeds' spread, as the certification grades it
        threshold = getattr(bundle.gates.cross_seed_cv_max, level)
        for metric in grading.CV_METRICS:
            cv = grading.population_cv([scored.card["metrics"][metric] for scored in cards.values()])
            value = math.inf if math.isnan(cv) else cv - (threshold - space.margin_for(f"cv:{metric}"))
            if value > worst:
                worst, gate = value, f"cv:{metric}"
    rho_gap = space.min_population_rank_correlation - trial.rank_correlation
    if rho_gap > worst:
        worst, gate = rho_gap, "population rank correlation"
    trial.stage, trial.relocated_share, trial.worst_gate, trial.worst_shortfall = (
        "ran",
        float(np.mean(relocated)),
        gate,
        worst,
    )


def trials_table(trials: list[TrialResult], knobs: list[str]) -> str:
    """One row per trial: parameters, stage, figures, pass/fail (CSV)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "trial",
            *knobs,
            "stage",
            "relocated_share",
            "rank_correlation",
            "worst_gate",
            "worst_shortfall",
            "passed",
            "seconds",
        ]
    )
    for t in sorted(trials, key=lambda t: t.number):
        writer.writerow(
            [
                t.number,
                *(f"{t.params[k]:.6f}" for k in knobs),
                t.stage,
                f"{t.relocated_share:.6f}",
                f"{t.rank_correlation:.4f}",
                t.worst_gate,
                f"{t.worst_shortfall:.6f}",
                t.passed,
                f"{t.seconds:.1f}",
            ]
        )
    return out.getvalue()


def best(trials: list[TrialResult]) -> TrialResult | None:
    """The passing trial with the least relocation (ties: the earlier trial)."""
    passing = [t for t in trials if t.passed]
    return min(passing, key=lambda t: (round(t.relocated_share, 9), t.number)) if passing else None


def parallel_map(fn: Callable[..., Any], items: list[Any], threads: int) -> list[Any]:
    """``fn`` over ``items`` from ``threads`` driver threads (their tasks share the cluster)."""
    return in_threads(fn, items, threads, "trial")
