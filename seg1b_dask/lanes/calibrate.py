"""The calibration lane: Optuna's study around the trials of ``calibration.py``, run on a
Dask cluster, resumable from its journal, ending with the winner's certification."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg1b_dask.chain.runner import Chain, code_digest, ensure_standin
from seg1b_dask.engine.execution import Execution, dask_cluster
from seg1b_dask.errors import Code, InputError, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.io.hashing import canonical_json, sha256_hex
from seg1b_dask.io.lineage import write_text
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.lanes import certify as lanes
from seg1b_dask.lanes import score as scorer
from seg1b_dask.lanes import search as calibration
from seg1b_dask.lanes.fast import country_inputs
from seg1b_dask.lanes.score import run_and_score
from seg1b_dask.lanes.search import SearchSpace, TrialResult
from seg1b_dask.plan import closure
from seg1b_dask.policies.bundle import PolicyBundle, load_bundle
from seg1b_dask.states import s0_gate

STUDY = "seg1b-calibrate"


@dataclass
class Calibration:
    folder: Path
    trials: list[TrialResult]
    start: TrialResult
    winner: TrialResult | None
    bundle: Path | None  # the winning bundle, a normal policy folder
    pack: lanes.Pack | None  # its certification


def batch_seed(search_seed: int, first_trial: int) -> int:
    """The sampler seed of the batch starting at ``first_trial`` (any search seed, 32 bits)."""
    return int(np.random.SeedSequence(search_seed, spawn_key=(first_trial,)).generate_state(1)[0])


def trials_to_run(complete: int, running: int, trials: int, parallel: int) -> int:
    """How many trials a search will evaluate: those left running by an interrupted search
    first (at most ``parallel`` at once), then whole batches of ``parallel`` new ones until at
    least ``trials`` are complete (``--trials`` is a floor)."""
    planned = 0
    while complete < trials:
        resumed = min(running, parallel)
        running -= resumed
        complete += resumed or parallel
        planned += resumed or parallel
    return planned


def _settings(
    start: PolicyBundle, space: SearchSpace, level: str, seeds: list[int], search_seed: int, parallel: int
) -> dict[str, Any]:
    return {
        "start_parameter_hash": start.parameter_hash,
        "space_sha256": sha256_hex(canonical_json(space.model_dump(mode="json"))),
        "grade": level,
        "seeds": seeds,
        "search_seed": search_seed,
        "parallel": parallel,
    }


def _from_attrs(attrs: dict[str, Any]) -> TrialResult:
    fields = dict(attrs["result"])
    fields["bundle"] = Path(fields["bundle"])
    fields["per_seed"] = {int(k): v for k, v in fields.get("per_seed", {}).items()}
    return TrialResult(**fields)


def calibrate(
    root: Path,
    start_dir: Path,
    space_path: Path,
    level: grading.Level,
    seeds: list[int] | None,
    out: Path,
    scheduler: str | None,
    workers: int | None,
    trials: int,
    parallel: int,
    search_seed: int,
    on_event: Callable[[str], None] | None = None,
    connect_timeout: float = Execution.connect_timeout,
) -> Calibration:
    import optuna
    from optuna.distributions import BaseDistribution, FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    emit = on_event or (lambda _msg: None)
    run_root = RunRoot.open(root)
    space = calibration.load_space(space_path)
    start = load_bundle(start_dir, refdata_version())
    seeds = list(seeds) if seeds else list(start.gates.required_seeds)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(start, space, level, seeds, search_seed, parallel)
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize", load_if_exists=True)
    if not study.trials:
        for key, value in settings.items():
            study.set_user_attr(key, value)
        study.enqueue_trial(calibration.knob_values(start_dir, space))  # trial 0: the start bundle
    elif {k: study.user_attrs.get(k) for k in settings} != json.loads(json.dumps(settings)):
        raise Seg1BError(
            Code.E_BAD_OPTION,
            "this folder holds a search with other settings (start bundle, search space, grade, seeds, "
            "--search-seed or --parallel): resume it with those, or use another --out",
            file=out / "study.journal",
        )
    distributions: dict[str, BaseDistribution] = {k: FloatDistribution(lo, hi) for k, (lo, hi) in space.knobs.items()}
    with run_root.shared(), dask_cluster(scheduler, workers, run_root.path, connect_timeout) as client:
        execution = Execution(scheduler="attached")
        emit(f"dashboard {client.dashboard_link or ''}")
        upstream = _prepare(run_root, start, seeds, execution, emit)
        states = [t.state for t in study.trials]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        emit(f"trials to run {trials_to_run(complete, running, trials, parallel)}")
        while True:
            done = [t for t in study.trials if t.state == TrialState.COMPLETE]
            if len(done) >= trials:
                break
            batch: list[Any] = [t for t in study.trials if t.state == TrialState.RUNNING][:parallel]
            if batch:
                emit(f"resuming trial(s) {', '.join(str(t.number) for t in batch)}")
            else:
                study.sampler = optuna.samplers.TPESampler(seed=batch_seed(search_seed, len(study.trials)))
                batch = [study.ask(distributions) for _ in range(parallel)]  # whole batches: --trials is a floor
            results = _evaluate(run_root, start_dir, out, batch, seeds, upstream, level, space, execution, emit)
            for trial, result in zip(batch, results, strict=True):
                live = optuna.trial.Trial(study, trial._trial_id)  # a resumed trial comes back frozen
                live.set_user_attr("result", json.loads(json.dumps(asdict(result), default=str)))
                live.set_constraint("worst_shortfall", result.worst_shortfall)
                study.tell(trial.number, result.relocated_share)
                emit(
                    f"trial {result.number}: {result.stage}, relocated {result.relocated_share:.4f}, "
                    f"{'passes' if result.passed else 'fails: ' + result.worst_gate}"
                )
            _write_table(out, study, space)
        _write_table(out, study, space)  # also when a resumed search had nothing left to run
    results = [_from_attrs(t.user_attrs) for t in study.trials if t.state == TrialState.COMPLETE]
    winner = calibration.best(results)
    bundle_dir = pack = None
    if winner is not None:
        emit(f"certifying the winner (trial {winner.number}) on seeds {', '.join(map(str, seeds))}")
        bundle_dir = calibration.write_bundle(start_dir, winner.params, out / "calibrated")
        pack = lanes.certify(
            run_root.path, seeds, bundle_dir, scheduler, workers, on_event=on_event, connect_timeout=connect_timeout
        )
    start_result = next(r for r in results if r.number == 0)
    return Calibration(out, results, start_result, winner, bundle_dir, pack)


def _prepare(
    run_root: RunRoot, start: PolicyBundle, seeds: list[int], execution: Execution, emit: Callable[[str], None]
) -> dict[int, Path]:
    """Verify every seed's 1A bundle and pin its baseline on the start bundle's grid once
    (its states first, so no two threads build the same global state)."""
    baseline = scorer.baseline_bundle(start.grid)
    Chain(run_root, seeds[0], baseline, Path("."), execution).run_global()
    upstream = {}
    for seed in seeds:
        upstream[seed] = ensure_standin(run_root, seed)
        s0_gate.verify(upstream[seed], seed, baseline.parameter_hash, code_digest())
    calibration.parallel_map(
        lambda seed: scorer.pin_baseline_run(
            run_root.path, seed, execution, lambda name: emit(f"seed {seed} baseline {name}"), grid=start.grid
        ),
        seeds,
        len(seeds),
    )
    return upstream


def _evaluate(
    run_root: RunRoot,
    start_dir: Path,
    out: Path,
    batch: list[Any],
    seeds: list[int],
    upstream: dict[int, Path],
    level: grading.Level,
    space: SearchSpace,
    execution: Execution,
    emit: Callable[[str], None],
) -> list[TrialResult]:
    """Screen a batch with the feasibility model, then run the survivors' seeds at once."""
    started = time.perf_counter()
    screened: list[tuple[TrialResult, PolicyBundle]] = []
    for trial in batch:
        folder = calibration.write_bundle(start_dir, dict(trial.params), out / "trials" / f"trial-{trial.number:04d}")
        bundle = load_bundle(folder, refdata_version())
        closure.check_locks(run_root.path, bundle.digests)  # a locked phase's policy cannot move
        chain = Chain(run_root, seeds[0], bundle, upstream[seeds[0]], execution)
        chain.run_global()  # S1 from the cache; S2 once per distinct S2 policy
        inputs = {seed: country_inputs(chain, upstream[seed], seed) for seed in seeds}
        screened.append(
            (calibration.screen(trial.number, dict(trial.params), folder, bundle, inputs, level, space), bundle)
        )
    survivors = [(r, b) for r, b in screened if r.worst_shortfall <= 0.0]
    jobs = [(r, b, seed) for r, b in survivors for seed in seeds]

    def run_one(job: tuple[TrialResult, PolicyBundle, int]) -> Any:
        result, bundle, seed = job
        emit(f"trial {result.number} seed {seed}")
        try:
            return run_and_score(run_root.path, seed, bundle, execution, graded=True).scored
        except InputError as exc:  # the trial's settings refused by a state: a failed trial
            return exc

    scored = calibration.parallel_map(run_one, jobs, len(jobs))
    by_trial: dict[int, dict[int, Any]] = {}
    for (result, _, seed), card in zip(jobs, scored, strict=True):
        by_trial.setdefault(result.number, {})[seed] = card
    for result, bundle in survivors:
        refused = [(seed, c) for seed, c in by_trial[result.number].items() if isinstance(c, InputError)]
        if refused:
            seed, exc = refused[0]
            result.stage, result.worst_gate, result.worst_shortfall = "ran", f"{exc.code} (seed {seed})", math.inf
            continue
        calibration.judge(result, by_trial[result.number], level, bundle, space)
    seconds = (time.perf_counter() - started) / max(len(batch), 1)
    for result, _ in screened:
        result.seconds = seconds
    return [r for r, _ in screened]


def _write_table(out: Path, study: Any, space: SearchSpace) -> None:
    from optuna.trial import TrialState

    results = [_from_attrs(t.user_attrs) for t in study.trials if t.state == TrialState.COMPLETE]
    write_text(out / "trials.csv", calibration.trials_table(results, list(space.knobs)))
