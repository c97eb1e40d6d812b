"""``seg1b``: the command line. User mistakes print one coded line, never a traceback."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click

from . import __version__
from .errors import Code, InternalError, Seg1BError
from .execution import Execution, check_scheduler, reporting
from .runner import DEFAULT_POLICIES, DEFAULT_ROOT, ensure_standin, peak_rss_mb
from .runroot import RunRoot, environment_error

U64_MAX = 2**64 - 1


class _Group(click.Group):
    """Every refusal is one coded line: input and environment exit 2, a bug exits 3."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Click's own parse errors (a value out of range, an unknown option or command, a
        missing argument) become one ``E_BAD_OPTION`` line naming the option and what it
        accepts, like every other refusal."""
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as exc:  # `seg1b` alone: the help, as asked
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            bad = Seg1BError(Code.E_BAD_OPTION, f"{message} (see --help)", key=_option_of(exc))
            click.echo(f"error: {bad}", err=True)
            sys.exit(bad.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Seg1BError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"error: {environment_error(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was published half-written; run again to resume from the cache", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("SEG1B_DEBUG"):
                raise
            if type(exc).__module__.startswith("distributed"):  # KilledWorker: the cluster, not a bug
                lost = Seg1BError(
                    Code.E_SCHEDULER_UNREACHABLE, f"the Dask cluster failed ({type(exc).__name__}: {exc})"
                )
                click.echo(f"error: {lost}", err=True)
                sys.exit(lost.exit_code)
            bug = InternalError(Code.E_INTERNAL, f"{type(exc).__name__}: {exc}; SEG1B_DEBUG=1 shows the traceback")
            click.echo(f"error: {bug}", err=True)
            sys.exit(bug.exit_code)


def _option_of(exc: click.ClickException) -> str | None:
    """The option, argument or command a click error is about."""
    if isinstance(exc, click.NoSuchOption):
        return exc.option_name
    param = getattr(exc, "param", None)
    if param is not None:
        return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    if isinstance(exc, click.UsageError) and exc.ctx is not None and exc.ctx.command is not None:
        return exc.ctx.command_path
    return None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="seg1b")
def main() -> None:
    """seg1b_dask — Segment 1B: where on Earth every outlet sits."""


root_option = click.option(
    "--root",
    default=str(DEFAULT_ROOT),
    show_default=True,
    type=click.Path(path_type=Path),
    help="run root: data, cache, runs, pins and packs live below it (relative to the current folder)",
)
policies_option = click.option(
    "--policies",
    default=str(DEFAULT_POLICIES),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="policy bundle folder (the remediation bundle shipped with the package by default)",
)
upstream_option = click.option(
    "--upstream",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="a 1A bundle (default: the stand-in for --seed, written under the run root)",
)
scale_option = click.option(
    "--scale",
    default=None,
    type=click.IntRange(1, 1_000_000_000),
    help="run on the seed's 1A stand-in at about this many outlets (written once under the run root)",
)
seed_option = click.option(
    "--seed", default=42, show_default=True, type=click.IntRange(0, U64_MAX), help="the 1A seed (0 … 2^64−1)"
)


def _scheduler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_scheduler(value)


def parse_seeds(value: str | None) -> list[int] | None:
    """``42,7,101`` → [42, 7, 101]; anything else is one coded line naming the bad item."""
    if value is None:
        return None
    seeds = []
    for item in (i.strip() for i in value.split(",")):
        if not item.isdigit() or int(item) > U64_MAX:
            message = "seeds are integers 0 … 2^64−1, comma-separated, none empty"
            raise Seg1BError(Code.E_BAD_OPTION, message, key=f"--seeds {item}")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise Seg1BError(Code.E_BAD_OPTION, "a seed is listed twice", key=f"--seeds {value}")
    return seeds


class Progress:
    """A bar with a total on a terminal (and under it the current state's tasks, with a rate);
    plain ``[k/N] name`` lines in logs (no carriage returns), with a tasks line for a long state."""

    TASK_LINE_SECONDS = 10.0  # in logs: a state's tasks line at most this often, and at its end

    def __init__(self, total: int, desc: str, quiet: bool = False) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.lock = threading.Lock()
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.task_bar: Any = None
        self.name = desc
        self.task_started = self.task_said = time.perf_counter()
        if self.tty and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="state", leave=False, file=sys.stderr, position=0)
            self.task_bar = tqdm(total=0, desc="tasks", unit="task", leave=False, file=sys.stderr, position=1)

    def grow(self, extra: int) -> None:
        self.total += extra
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def step(self, name: str) -> None:
        with self.lock:  # certification steps arrive from every seed's thread
            self._step(name)

    def _step(self, name: str) -> None:
        self.done += 1
        self.name = name
        if self.bar is not None:
            self.bar.set_description(name[:40])
            self.bar.update(1)
        elif not self.quiet:
            click.echo(f"[{self.done}/{self.total}] {name}", err=True)

    def tasks(self, done: int, total: int) -> None:
        """A graph of the current state advanced: ``done`` of ``total`` tasks finished."""
        now = time.perf_counter()
        if done == 0:
            self.task_started = self.task_said = now
        if self.task_bar is not None:
            if done == 0:
                self.task_bar.reset(total=total)
                self.task_bar.set_description(f"{self.name[:32]} tasks")
            else:
                self.task_bar.update(done - self.task_bar.n)
        elif not self.quiet and done and (done == total or now - self.task_said >= self.TASK_LINE_SECONDS):
            elapsed = max(now - self.task_started, 1e-9)
            if done < total or elapsed >= self.TASK_LINE_SECONDS:  # quick graphs stay silent
                click.echo(f"      {self.name}: {done}/{total} tasks, {done / elapsed:.1f} tasks/s", err=True)
            self.task_said = now

    def close(self) -> None:
        for bar in (self.task_bar, self.bar):
            if bar is not None:
                bar.close()


@contextmanager
def progress(total: int, desc: str, quiet: bool = False) -> Iterator[Progress]:
    bar = Progress(total, desc, quiet)
    try:
        yield bar
    finally:
        bar.close()


def _existing(root: Path) -> RunRoot:
    """The run root a command reads from; a missing one is refused, never created."""
    if not root.is_dir():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "no run root here: run `seg1b run` first, or pass --root", file=root)
    return RunRoot.open(root)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


scheduler_option = click.option(
    "--scheduler",
    default="threads",
    show_default=True,
    callback=_scheduler,
    help="threads | processes | synchronous | distributed (a local cluster) | tcp://HOST:PORT",
)


connect_timeout_option = click.option(
    "--connect-timeout",
    default=Execution.connect_timeout,
    show_default=True,
    type=click.FloatRange(0.1),
    help="seconds to reach a tcp:// scheduler and see a worker join (raise it where the cluster starts with the job)",
)


def task_size_options(fn: Any) -> Any:
    """--country-batch and --sites-per-task: how work is cut into tasks (never the outputs)."""
    fn = click.option(
        "--sites-per-task",
        default=Execution.sites_per_task,
        show_default=True,
        type=click.IntRange(1),
        help="at most this many sites per task, a larger country alone (outputs never depend on it)",
    )(fn)
    return click.option(
        "--country-batch",
        default=Execution.country_batch,
        show_default=True,
        type=click.IntRange(1),
        help="at most this many countries per task (outputs never depend on it)",
    )(fn)


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
    from .lanes import fast_lane
    from .registry import STATES
    from .summaries import below_target_line, run_summary, score_summary

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
)


@main.command()
@click.argument("run_ref", required=False)
@root_option
@click.option("--explain", is_flag=True, help="print what each scorecard term means and exit")
def score(run_ref: str | None, root: Path, explain: bool) -> None:
    """Score RUN_REF (a run id or folder) with the policies sealed in it."""
    from .discipline import run_dir
    from .scorer import score_run
    from .summaries import below_target_line, score_summary

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
    from .policies import load_bundle
    from .refdata import refdata_version
    from .scorer import pin_baseline_run

    grid = load_bundle(policies, refdata_version()).grid
    pin = pin_baseline_run(root, seed, Execution(scheduler=scheduler), upstream=upstream, grid=grid)
    click.echo(
        f"baseline for seed {seed} ({pin['grid_arcsec']}″ grid, 1A {pin['upstream_flag'][:16]}): "
        f"run {pin['run_id']}, nn_ratio {pin['nn_ratio']:.3f} (pinned)"
    )


@main.command()
@click.option("--seeds", default=None, help="comma-separated seeds (default: required_seeds of gates.yaml)")
@policies_option
@root_option
@click.option(
    "--scheduler",
    default=None,
    callback=_scheduler,
    help="tcp://HOST:PORT of a running scheduler (default: a LocalCluster)",
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
    from .discipline import baseline_pointer
    from .lanes import certify as run_certify
    from .policies import load_bundle
    from .refdata import refdata_version
    from .registry import STATES
    from .scorer import candidate_key
    from .summaries import below_target_line, pack_summary

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
    from .lanes import feasibility_of
    from .lineage import write_json

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
@click.option("--scheduler", default=None, callback=_scheduler, help="tcp://HOST:PORT (default: a LocalCluster)")
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
    from .calibration import SPACE_FILE
    from .calibration_lane import calibrate as run_calibration

    level: Literal["B", "B_PLUS"] = "B_PLUS" if grade == "B+" else "B"
    click.echo(f"run root: {root.resolve()}", err=True)
    with progress(trials, "calibrate", quiet) as bar:

        def on_event(msg: str) -> None:
            if msg.startswith("trial") and ":" in msg:
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


@main.command()
@click.argument("ref")
@root_option
def report(ref: str, root: Path) -> None:
    """Write the HTML report of REF (a run or a certification pack, by id or folder)."""
    from .report import report as write_report

    with _existing(root).shared():
        click.echo(f"report: {write_report(root, ref)}")


@main.command()
@root_option
@click.option("--dry-run", is_flag=True, help="list what would go, remove nothing")
def prune(root: Path, dry_run: bool) -> None:
    """Remove runs nothing references (never baseline, pointers, locks or packs) and the
    staging leftovers of killed processes. Refused while a run is in flight."""
    from .discipline import prune as do_prune

    out = do_prune(root, dry_run)
    verb = "would remove" if dry_run else "removed"
    removed, datasets, kept = len(out["removed_runs"]), len(out["removed_datasets"]), len(out["kept_runs"])
    staging = len(out["removed_staging"])
    click.echo(
        f"{verb} {_n(removed, 'run')}, {_n(datasets, 'dataset')}, {_n(staging, 'staging leftover')}; "
        f"kept {_n(kept, 'run')}"
    )
    for run_id in out["removed_runs"]:
        click.echo(f"  {verb} {run_id}")
    for run_id, why in out["kept_runs"].items():
        click.echo(f"  kept {run_id}: {', '.join(why)}")


phase_argument = click.argument("phase", type=click.Choice(["P1", "P2", "P3"]))


@main.command()
@root_option
@click.option(
    "--seed",
    default=None,
    type=click.IntRange(0, U64_MAX),
    help="the plan's seed (default: the seed its locks were made on, else 42)",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write it as JSON")
def status(root: Path, seed: int | None, json_out: Path | None) -> None:
    """Where the remediation plan stands: every DoD item of P0–P5 from the evidence under the
    run root (pass / fail / not yet, with the file that proves it) and the next action."""
    from .plan import next_action, plan_seed
    from .plan import status as plan_status

    if seed is None:
        locked = plan_seed(root) if root.is_dir() else None
        seed = 42 if locked is None else locked
    if root.is_dir():
        with RunRoot(root.resolve()).shared():
            phases = plan_status(root, seed)
    else:  # nothing run yet: every phase is still ahead
        phases = plan_status(root, seed)
    click.echo("\n".join(status_lines(root, seed, phases)))
    click.echo(f"\nnext: {next_action(phases)}")
    if json_out:
        from .lineage import write_json

        write_json(json_out, {"seed": seed, "phases": [p.as_dict() for p in phases], "next": next_action(phases)})


STATUS_MARK = {"pass": "pass   ", "fail": "FAIL   ", "not yet": "not yet"}


def status_lines(root: Path, seed: int, phases: list[Any]) -> list[str]:
    from .plan import TITLES

    lines = [f"remediation plan, seed {seed}, run root {root.resolve()}"]
    for p in phases:
        about = f"  [{p.subject}]" if p.subject else ""
        state = f"waiting for {p.waiting}" if p.waiting else p.state
        lines += ["", f"{p.phase} {TITLES[p.phase]:<36} {state}{about}"]
        for item in p.items:
            mark = STATUS_MARK[item.status] if item.blocking or item.status == "pass" else "attempt"
            lines.append(f"  {mark}  {item.text}")
            lines.append(f"           {item.evidence}" + (f"  ({item.detail})" if item.detail else ""))
            if item.status != "pass" and item.action:
                lines.append(f"           → {item.action}")
    return lines


@main.command()
@click.argument("run_ref")
@root_option
@click.option("--grade", type=click.Choice(["B", "B+"]), default=None, help="the level (default: the run's target)")
def diagnose(run_ref: str, root: Path, grade: str | None) -> None:
    """At which state each failing gate of RUN_REF first goes wrong (S2 mass, S4 integer
    allocation, S8 sites), beside the seed's pinned baseline at the same states."""
    from .checkpoints import diagnose as do_diagnose
    from .discipline import run_dir

    with _existing(root).shared():
        found = do_diagnose(root, run_dir(root, run_ref), {"B": "B", "B+": "B_PLUS", None: None}[grade])
    click.echo("\n".join(diagnosis_lines(found)))


def diagnosis_lines(found: Any) -> list[str]:
    from .checkpoints import CHECKED, STAGES

    level = found.level.replace("_PLUS", "+")
    base = f"the pinned baseline {found.baseline_run_id}" if found.baseline_run_id else "no pinned baseline"
    lines = [
        f"diagnose {found.run_id} (seed {found.seed}, bundle {found.bundle}) at {level}, beside {base}",
        "  values at each stage: run (baseline); * marks a failing value; 1A is the input;",
        "  'sites only': measured on the published sites alone, so S8 says where it shows, not its cause",
        "",
        f"  {'gate':<34}{'limit':>10}" + "".join(f"{s:>22}" for s in STAGES) + "  first wrong",
    ]
    for t in found.traces:
        cells = []
        for s in STAGES:
            if s not in t.run:
                cells.append(f"{'–':>22}")
                continue
            value = f"{t.run[s]:.4f}{'*' if not t.passed[s] else ' '}"
            base_value = f"({t.baseline[s]:.4f}{'' if t.baseline_passed[s] else '*'})" if s in t.baseline else ""
            cells.append(f"{value + base_value:>22}")
        sign = "≤" if t.direction == "max" else "≥"
        where = t.first_wrong or "passes"
        if t.first_wrong and t.inherited:
            where += " (1A already)"
        elif t.first_wrong and t.sites_only:
            where += " (sites only)"
        lines.append(f"  {t.gate:<34}{sign + format(t.threshold, '.4f'):>10}" + "".join(cells) + f"  {where}")
    failing = found.failing
    lines.append("")
    if not failing:
        lines.append(f"  every {level} gate passes: nothing to diagnose")
        return lines
    for state in CHECKED:
        at = [t for t in failing if t.first_wrong == state]
        if at:
            lines.append(f"  first wrong at {state}: {', '.join(t.gate for t in at)}")
            for hint in dict.fromkeys(t.hint for t in at):
                lines.append(f"    → {hint}")
    return lines


@main.command()
@phase_argument
@click.argument("run_ref")
@root_option
def lock(phase: str, run_ref: str, root: Path) -> None:
    """Close PHASE (P1 = S2, P2 = S4, P3 = S6) at RUN_REF: refused unless the phase's DoD
    passes; reruns the seed from scratch to prove the bytes reproduce; writes the closure
    record (locks/PHASE.json)."""
    from .closure import lock as close_phase
    from .discipline import run_dir

    with _existing(root).shared():
        record = close_phase(root, phase, run_dir(root, run_ref), Execution())
    click.echo(
        f"{phase} locked at run {record['run_id']}: {record['policy']} digest {record['policy_digest'][:16]}…; "
        f"reproduced from scratch ({record['dod'][-1]['detail']})"
    )
    click.echo(f"  closure record {RunRoot(root.resolve()).lock_record(phase)}")
    click.echo(f"  {record['freeze_statement']}")


@main.command()
@phase_argument
@root_option
@click.option("--reason", required=True, help="why the locked phase must change")
@click.option("--evidence", "evidence_ref", required=True, help="a run, made under the lock, that contradicts it")
def reopen(phase: str, root: Path, reason: str, evidence_ref: str) -> None:
    """Reopen a locked PHASE: needs a reason and a run, made under the lock, whose
    checkpoints show a gate first going wrong at the phase's state. Both are recorded."""
    from .closure import reopen as reopen_phase
    from .discipline import run_dir

    with _existing(root).shared():
        record, cascaded = reopen_phase(root, phase, reason, run_dir(root, evidence_ref))
    last = record["reopened"][-1]
    click.echo(
        f"{phase} reopened on the evidence of run {last['evidence_run']} ({last['level'].replace('_PLUS', '+')}):"
    )
    for line in last["contradiction"]:
        click.echo(f"  {line}")
    if cascaded:
        click.echo(f"  reopened with it (built on {phase}): {', '.join(cascaded)}")


@main.command()
@click.argument("pack_ref")
@root_option
def freeze(pack_ref: str, root: Path) -> None:
    """P5: make the GREEN certification pack PACK_REF the authority: record the final lock
    set, point last_good at it, prune superseded runs. Refused while a run is in flight."""
    from .closure import freeze as freeze_pack
    from .discipline import pack_dir
    from .plan import freeze_record_path

    record = freeze_pack(root, pack_dir(root, pack_ref))
    click.echo(f"frozen: pack {record['pack_id']} ({record['grade']}) is last_good")
    click.echo(f"  final lock set {freeze_record_path(RunRoot(root.resolve()), record['pack_id'])}")
    locks = ", ".join(record["phase_locks"]) or "none"
    click.echo(f"  {len(record['artifacts'])} pack files with their sha256; locks: {locks}")
    click.echo(f"  pruned {_n(len(record['pruned']), 'run')}; retained {_n(len(record['retained']), 'run')}:")
    for run_id, why in record["retained"].items():
        click.echo(f"    {run_id}: {', '.join(why)}")


# Everything after the command name goes to Dask's own command line, in order.
DASK_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@main.command(context_settings=DASK_PASS_THROUGH)
@click.argument("dask_args", nargs=-1, type=click.UNPROCESSED)
def scheduler(dask_args: tuple[str, ...]) -> None:
    """A Dask scheduler for certification: DASK_ARGS are `dask scheduler`'s options
    (e.g. --port 8786 --dashboard-address :8787; see `dask scheduler --help`)."""
    from .cluster import start

    start("scheduler", dask_args)


@main.command(context_settings=DASK_PASS_THROUGH)
@click.option(
    "--root",
    required=True,
    type=click.Path(path_type=Path),
    help="the shared run-root volume, mounted at the same path as on the job (checked before the worker starts)",
)
@click.argument("dask_args", nargs=-1, type=click.UNPROCESSED)
def worker(root: Path, dask_args: tuple[str, ...]) -> None:
    """A Dask worker for certification: DASK_ARGS are `dask worker`'s scheduler address and
    options (e.g. tcp://scheduler:8786 --nthreads 1 --memory-limit 4GiB; see `dask worker --help`)."""
    from .cluster import check_volume, start

    check_volume(root)
    start("worker", dask_args)


@main.group()
def upstream() -> None:
    """Segment 1A bundles."""


@upstream.command()
@click.option("--seed", required=True, type=click.IntRange(0, U64_MAX), help="the 1A seed")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="empty or absent output folder"
)
@click.option(
    "--scale",
    type=click.IntRange(1, 10**9),
    default=None,
    help="about this many outlets: independent blocks of merchants drawn from the same profile (benchmarks)",
)
def synth(seed: int, out: Path, scale: int | None) -> None:
    """Write the 1A stand-in bundle for SEED into OUT (must be empty or absent)."""
    from .upstream import scale_blocks, write_bundle

    if out.exists() and any(out.iterdir()):
        raise Seg1BError(Code.E_OUT_NOT_EMPTY, "output folder is not empty", file=out)
    blocks = 1 if scale is None else scale_blocks(seed, scale)
    with progress(blocks, "1A blocks", quiet=blocks == 1) as bar:
        flag = write_bundle(seed, out, scale, on_block=lambda done: bar.step(f"block {done}/{blocks}"))
    click.echo(f"1A bundle for seed {seed} written to {out} (sha256_hex = {flag})")


if __name__ == "__main__":
    main()
