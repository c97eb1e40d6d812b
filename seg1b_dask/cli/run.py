"""The fast lane's commands: run, score, baseline, feasibility."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from seg1b_dask.chain.runner import ensure_standin, peak_rss_mb
from seg1b_dask.cli.app import (
    _existing,
    connect_timeout_option,
    main,
    policies_option,
    root_option,
    scale_option,
    scheduler_option,
    seed_option,
    task_size_options,
    upstream_option,
)
from seg1b_dask.cli.progress import progress
from seg1b_dask.engine.execution import Execution, reporting
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.runroot import RunRoot


@main.command()
@seed_option
@policies_option
@root_option
@upstream_option
@scale_option
@scheduler_option
@click.option(
    "--workers", default=None, type=click.IntRange(1), help="worker threads or processes (default: all cores)"
)
@task_size_options
@connect_timeout_option
@click.option("--quiet", is_flag=True, help="no progress output (the summary still prints)")
def run(
    seed: int,
    policies: Path,
    root: Path,
    upstream: Path | None,
    scale: int | None,
    scheduler: str,
    workers: int | None,
    country_batch: int,
    sites_per_task: int,
    connect_timeout: float,
    quiet: bool,
) -> None:
    """Fast lane: run one seed from the first dirty state, score it, compare to its baseline.

    A bundle that targets a grade (the default remediation bundle) first runs and pins the
    baseline of the seed, the bundle's grid and the 1A bundle if none is pinned yet: the
    summary says so. A grade below the bundle's target ends the summary with one loud line.
    """
    from seg1b_dask.chain.registry import STATES
    from seg1b_dask.cli.summaries import below_target_line, run_summary, score_summary
    from seg1b_dask.lanes.fast import fast_lane

    started = time.perf_counter()
    click.echo(f"run root: {root.resolve()}", err=True)
    if scale is not None:
        if upstream is not None:
            raise Seg1BError(Code.E_BAD_OPTION, "give --upstream or --scale, not both", key="--scale")
        upstream = ensure_standin(RunRoot.open(root), seed, scale)
    execution = Execution(
        scheduler=scheduler,
        workers=workers,
        country_batch=country_batch,
        sites_per_task=sites_per_task,
        connect_timeout=connect_timeout,
    )
    chain = len(STATES)
    with progress(chain, "S0 gate", quiet) as bar:

        def on_state(name: str) -> None:
            if name.startswith("baseline") and bar.total == chain:  # the seed's baseline runs first
                bar.grow(chain)
            bar.step(name)

        with reporting(None if quiet else bar.tasks):
            result, scored = fast_lane(root, seed, policies, upstream, execution, on_state)
    lines = run_summary(result) + score_summary(scored)
    lines += [
        "",
        f"  site_locations     {result.outputs['site_locations']}",
        f"  validation bundle  {result.outputs['validation_bundle']}",
        f"  run receipt        {result.run_dir / 'run.json'}",
        f"  tile grid          {result.outputs['tile_grid'] / 'tile_grid.zarr'}  (xarray.open_zarr)",
        f"  report             {result.run_dir / 'report.html'}",
        f"  this run: wall {result.wall_seconds:.2f} s, peak RSS {result.peak_rss_mb:.0f} MiB;  whole command "
        f"(baseline, scoring, report included): {time.perf_counter() - started:.1f} s, "
        f"peak RSS {peak_rss_mb():.0f} MiB",
    ]
    below = below_target_line(scored.grade, scored.card["target_grade"])
    click.echo("\n".join([*lines, *([f"\n{below}"] if below else [])]))


GLOSSARY = (
    ("country_gini", "Gini coefficient of sites per country over the eligible countries (0 = even, 1 = one country)"),
    ("top1/5/10_share", "share of sites in the top 1 %, 5 %, 10 % of eligible countries; k = how many countries"),
    ("eligible countries", "countries with at least one tile and the grid policy's minimum population"),
    ("eligible_country_nonzero_share", "share of eligible countries holding at least one site (coverage)"),
    ("southern_hemisphere_share", "share of sites south of the equator"),
    ("nn_ratio", "p99 / p50 of each site's distance to its nearest neighbour (great circle, km)"),
    ("nn_contraction", "(baseline nn_ratio − nn_ratio) / baseline nn_ratio, against the seed's pinned baseline"),
    (
        "sentinel",
        "collapse detector on the 10 largest countries, against as many sites drawn by the country's own tile "
        "weights: a corridor far narrower than the weights, or sites on under 15 % of the grid rows/columns they fill",
    ),
    ("merchant_countries_*", "countries per merchant over distinct (merchant, country) pairs"),
    ("near_city_share", "share of sites within gates.yaml near_city_km of a place of near_city_min_population"),
    ("bootstrap_upper", "upper 95 % bound of a concentration metric, resampling merchants, bias-corrected (B+)"),
    ("relocated_share", "share of 1A outlets placed in another country than 1A gave them: the price of realism"),
    ("cv", "coefficient of variation of a metric across the certification seeds"),
    ("merchants: retention", "share of a merchant's outlets in its own 1A countries (median, p10 over merchants)"),
    ("lost their home", "merchants left without an outlet in their 1A home country (0 by construction)"),
    ("outlets in pairs 1A lacks", "share of outlets in (merchant, country) pairs that 1A does not have"),
    ("new countries", "countries a merchant spans beyond its 1A ones (median, p90, max over merchants)"),
    ("moves", "km between the centres of a moved outlet's 1A country and its 1B country (median, p90)"),
    (
        "plausibility",
        "reported, not graded: Spearman of country shares against population, the country served most per "
        "person (its share ÷ its population share; an ISO code), outlets in countries under 100 k people, "
        "rural share",
    ),
)


@main.command()
@click.argument("run_ref", required=False)
@root_option
@click.option("--explain", is_flag=True, help="print what each scorecard term means and exit")
def score(run_ref: str | None, root: Path, explain: bool) -> None:
    """Score RUN_REF (a run id or folder) with the policies sealed in it."""
    from seg1b_dask.cli.summaries import below_target_line, score_summary
    from seg1b_dask.io.discipline import run_dir
    from seg1b_dask.lanes.score import score_run

    if explain:
        click.echo("\n".join(f"  {term:<32} {text}" for term, text in GLOSSARY))
        return
    if not run_ref:
        raise Seg1BError(Code.E_BAD_OPTION, "name a run (its id or folder), or pass --explain", key="RUN_REF")
    with _existing(root).shared():  # writes the run's scorecard: never while a prune runs
        scored = score_run(root, run_dir(root, run_ref))
    below = below_target_line(scored.grade, scored.card["target_grade"])
    click.echo("\n".join([*score_summary(scored), *([f"\n{below}"] if below else [])]))


@main.command()
@seed_option
@root_option
@scheduler_option
@policies_option
@upstream_option
def baseline(seed: int, root: Path, scheduler: str, policies: Path, upstream: Path | None) -> None:
    """Run the baseline bundle for SEED on the grid of --policies over the 1A bundle
    (--upstream, default the seed's stand-in) and pin it: runs on that grid over that 1A
    bundle are graded against it."""
    from seg1b_dask.io.refdata import refdata_version
    from seg1b_dask.lanes.score import pin_baseline_run
    from seg1b_dask.policies.bundle import load_bundle

    grid = load_bundle(policies, refdata_version()).grid
    pin = pin_baseline_run(root, seed, Execution(scheduler=scheduler), upstream=upstream, grid=grid)
    click.echo(
        f"baseline for seed {seed} ({pin['grid_arcsec']}″ grid, 1A {pin['upstream_flag'][:16]}): "
        f"run {pin['run_id']}, nn_ratio {pin['nn_ratio']:.3f} (pinned)"
    )


@main.command()
@seed_option
@policies_option
@root_option
@upstream_option
@click.option(
    "--json", "json_out", default=None, type=click.Path(dir_okay=False, path_type=Path), help="also write this"
)
def feasibility(seed: int, policies: Path, root: Path, upstream: Path | None, json_out: Path | None) -> None:
    """Before any run: the bundle's predicted country gates, and the least relocation with
    which B and B+ are reachable at all (from 1A's counts and S2's country mass vector)."""
    from seg1b_dask.io.lineage import write_json
    from seg1b_dask.lanes.fast import feasibility_of

    result = feasibility_of(root, seed, policies, upstream, Execution())
    click.echo("\n".join(feasibility_summary(result)))
    if json_out is not None:
        write_json(json_out, result.as_dict())


def feasibility_summary(result: Any) -> list[str]:
    rows = {level: {r["gate"]: r for r in result.rows[level]} for level in ("B", "B_PLUS")}
    lines = [
        f"feasibility of bundle {result.bundle} for seed {result.seed}: {result.total:,} outlets in "
        f"{result.active_1a} of {result.eligible} eligible countries (1A)",
        "",
        f"  {'country gate':<34}{'predicted':>10}{'B':>9}{'margin':>9}{'B+':>9}{'margin':>9}",
    ]
    for gate, row in rows["B"].items():
        plus = rows["B_PLUS"][gate]
        sign = "≤" if row["direction"] == "max" else "≥"
        lines.append(
            f"  {gate:<34}{row['observed']:>10.4f}{sign:>3}{row['threshold']:>6.3f}{row['margin']:>+9.4f}"
            f"{sign:>3}{plus['threshold']:>6.3f}{plus['margin']:>+9.4f}"
        )
    verdict_b = "passes" if result.passes("B") else "fails"
    verdict_bp = "passes" if result.passes("B_PLUS") else "fails"
    lines += [
        "",
        f"  this bundle relocates {result.relocated_share:.4f} of outlets (the least its targets need); "
        f"predicted: {verdict_b} B's and {verdict_bp} B+'s country gates",
        "  least relocation of any target vector meeting the grade's country gates (a lower bound, linear programme):",
    ]
    for level in ("B", "B_PLUS"):
        lines.append(f"    {result.verdict(level)}")
    lines.append(
        "  not predicted here (they need sites): nn_contraction, sentinel, merchant footprint, near_city_share, "
        "and B+'s bootstrap bounds"
    )
    return lines
