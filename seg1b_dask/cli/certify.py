"""The certification lane's commands: certify, calibrate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import click

from seg1b_dask.chain.runner import ensure_standin
from seg1b_dask.cli.app import (
    U64_MAX,
    connect_timeout_option,
    main,
    parse_seeds,
    policies_option,
    root_option,
    scale_option,
    scheduler_callback,
    task_size_options,
)
from seg1b_dask.cli.progress import progress
from seg1b_dask.io.runroot import RunRoot


@main.command()
@click.option("--seeds", default=None, help="comma-separated seeds (default: required_seeds of gates.yaml)")
@policies_option
@root_option
@click.option(
    "--scheduler",
    default=None,
    callback=scheduler_callback,
    help="tls://HOST:PORT (or tcp://) of a running scheduler (default: a LocalCluster)",
)
@click.option("--workers", default=None, type=click.IntRange(1), help="LocalCluster workers (default 2)")
@task_size_options
@connect_timeout_option
@scale_option
@click.option("--promote", is_flag=True, help="move last_good to this pack if it grades GREEN")
@click.option("--quiet", is_flag=True, help="no progress output (the summary still prints)")
def certify(
    seeds: str | None,
    policies: Path,
    root: Path,
    scheduler: str | None,
    workers: int | None,
    country_batch: int,
    sites_per_task: int,
    connect_timeout: float,
    scale: int | None,
    promote: bool,
    quiet: bool,
) -> None:
    """Certification lane: every seed's full chain in parallel on Dask, graded across seeds.
    Exits 1 when the pack grades below the bundle's target grade (s9_validation.yaml)."""
    from seg1b_dask.chain.registry import STATES
    from seg1b_dask.cli.summaries import below_target_line, pack_summary
    from seg1b_dask.io.discipline import baseline_pointer
    from seg1b_dask.io.refdata import refdata_version
    from seg1b_dask.lanes.certify import certify as run_certify
    from seg1b_dask.lanes.score import candidate_key
    from seg1b_dask.policies.bundle import load_bundle

    parsed = parse_seeds(seeds)
    bundle = load_bundle(policies, refdata_version())
    seed_list = parsed if parsed is not None else list(bundle.gates.required_seeds)
    click.echo(f"run root: {root.resolve()}", err=True)
    upstreams = [None if scale is None else ensure_standin(RunRoot.open(root), s, scale) for s in seed_list]
    keys = [candidate_key(root, s, bundle.grid, up) for s, up in zip(seed_list, upstreams, strict=True)]
    pins = [baseline_pointer(root, key) for key in keys]
    unpinned = len(seed_list) - sum(pin is not None for pin in pins)
    with progress(len(STATES) * (len(seed_list) + unpinned), "certify", quiet) as bar:

        def on_event(msg: str) -> None:
            if msg.startswith("dashboard"):
                click.echo(f"Dask dashboard: {msg.split(' ', 1)[1]}", err=True)
            else:
                bar.step(msg)

        pack = run_certify(
            root,
            seed_list,
            policies,
            scheduler,
            workers,
            promote,
            on_event,
            country_batch,
            sites_per_task,
            connect_timeout,
            scale,
        )
    click.echo("\n".join(pack_summary(pack)))
    below = below_target_line(pack.report, pack.target_grade)
    if below:  # after the pack and its summary: a job or CI step sees the failure
        click.echo(f"CERTIFICATION FAILED: {below}")
        sys.exit(1)


@main.command()
@click.option(
    "--grade", "grade", default="B+", show_default=True, type=click.Choice(["B", "B+"]), help="the grade to reach"
)
@click.option("--seeds", default=None, help="comma-separated seeds (default: required_seeds of gates.yaml)")
@policies_option
@root_option
@click.option(
    "--space",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="the search space (default: calibration.yaml shipped beside the bundles)",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="the search's folder (resumable)"
)
@click.option(
    "--trials",
    default=30,
    show_default=True,
    type=click.IntRange(1),
    help="at least this many trials (whole batches), the start bundle first",
)
@click.option(
    "--parallel", default=2, show_default=True, type=click.IntRange(1), help="trials asked and evaluated at once"
)
@click.option("--search-seed", default=0, show_default=True, type=click.IntRange(0, U64_MAX), help="the sampler's seed")
@click.option(
    "--scheduler",
    default=None,
    callback=scheduler_callback,
    help="tls://HOST:PORT (or tcp://) of a running scheduler (default: a LocalCluster)",
)
@click.option("--workers", default=None, type=click.IntRange(1), help="LocalCluster workers (default 2)")
@connect_timeout_option
@click.option("--quiet", is_flag=True, help="no progress output (the summary still prints)")
def calibrate(
    grade: str,
    seeds: str | None,
    policies: Path,
    root: Path,
    space: Path | None,
    out: Path,
    trials: int,
    parallel: int,
    search_seed: int,
    scheduler: str | None,
    workers: int | None,
    connect_timeout: float,
    quiet: bool,
) -> None:
    """Search the remediation knobs for the least relocated_share that passes every gate of
    GRADE with the search space's margins on every seed; certify the winner."""
    from seg1b_dask.lanes.calibrate import calibrate as run_calibration
    from seg1b_dask.lanes.calibrate import trials_to_run
    from seg1b_dask.lanes.search import SPACE_FILE

    level: Literal["B", "B_PLUS"] = "B_PLUS" if grade == "B+" else "B"
    click.echo(f"run root: {root.resolve()}", err=True)
    # a step per trial evaluated, of the whole batches a new search runs (the search says how
    # many once it has read its journal: fewer when it resumes)
    with progress(trials_to_run(0, 0, trials, parallel), "calibrate", quiet) as bar:

        def on_event(msg: str) -> None:
            if msg.startswith("trials to run "):
                bar.set_total(int(msg.rsplit(" ", 1)[1]))
            elif msg.startswith("trial") and ":" in msg:
                bar.step(msg)
            elif msg.startswith("certifying"):
                click.echo(msg, err=True)
            elif msg.startswith("dashboard"):
                click.echo(f"Dask dashboard: {msg.split(' ', 1)[1]}", err=True)

        result = run_calibration(
            root,
            policies,
            space or SPACE_FILE,
            level,
            parse_seeds(seeds),
            out,
            scheduler,
            workers,
            trials,
            parallel,
            search_seed,
            on_event,
            connect_timeout,
        )
    click.echo("\n".join(calibration_summary(result, grade)))


def calibration_summary(result: Any, grade: str) -> list[str]:
    ran = [t for t in result.trials if t.stage == "ran"]
    passing = sum(t.passed for t in result.trials)
    lines = [
        f"calibration in {result.folder}: {len(result.trials)} trials, {len(result.trials) - len(ran)} screened out "
        f"by the feasibility model, {len(ran)} run, {passing} passing {grade} with margins",
        f"  trials table: {result.folder / 'trials.csv'}",
        f"  start bundle (trial 0): relocated_share {result.start.relocated_share:.4f}, "
        + ("passes" if result.start.passed else f"fails: {result.start.worst_gate}"),
    ]
    if result.winner is None:
        lines.append(f"  no trial passed {grade} with the margins: widen the search space or add trials")
        return lines
    w = result.winner
    lines += [
        f"  winner (trial {w.number}): relocated_share {w.relocated_share:.4f} "
        f"({w.relocated_share - result.start.relocated_share:+.4f} against the start bundle); "
        f"closest gate {w.worst_gate} ({-w.worst_shortfall:+.4f} beyond its margin)",
        *(f"    {k} = {v:.6f}" for k, v in sorted(w.params.items())),
        f"  bundle: {result.bundle}",
    ]
    if result.pack is not None:
        per_seed = [
            result.pack.scored[s].card["fidelity"].get("relocated_share", float("nan")) for s in result.pack.results
        ]
        lines += [
            f"  certification pack {result.pack.folder}: {result.pack.report.outcome}, relocated_share "
            + " / ".join(f"{v:.4f}" for v in per_seed),
            f"  report: {result.pack.folder / 'report.html'}",
        ]
    return lines
