"""Run-root and cluster commands: report, prune, scheduler, worker, upstream synth."""

from __future__ import annotations

from pathlib import Path

import click

from seg1b_dask.cli.app import (
    U64_MAX,
    _existing,
    _n,
    main,
    root_option,
)
from seg1b_dask.cli.progress import progress
from seg1b_dask.errors import Code, Seg1BError


@main.command()
@click.argument("ref")
@root_option
def report(ref: str, root: Path) -> None:
    """Write the HTML report of REF (a run or a certification pack, by id or folder)."""
    from seg1b_dask.report.pages import report as write_report

    with _existing(root).shared():
        click.echo(f"report: {write_report(root, ref)}")


@main.command()
@root_option
@click.option("--dry-run", is_flag=True, help="list what would go, remove nothing")
def prune(root: Path, dry_run: bool) -> None:
    """Remove runs nothing references (never baseline, pointers, locks or packs) and the
    staging leftovers of killed processes. Refused while a run is in flight."""
    from seg1b_dask.io.discipline import prune as do_prune

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


DASK_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@main.command(context_settings=DASK_PASS_THROUGH)
@click.argument("dask_args", nargs=-1, type=click.UNPROCESSED)
def scheduler(dask_args: tuple[str, ...]) -> None:
    """A Dask scheduler for certification: DASK_ARGS are `dask scheduler`'s options
    (e.g. --protocol tls --port 8786 --tls-ca-file …; see `dask scheduler --help` and cluster/README.md)."""
    from seg1b_dask.engine.cluster import start

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
    options (e.g. tls://scheduler:8786 --tls-ca-file … --nthreads 1; see `dask worker --help`)."""
    from seg1b_dask.engine.cluster import check_volume, start

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
    from seg1b_dask.io.upstream import scale_blocks, write_bundle

    if out.exists() and any(out.iterdir()):
        raise Seg1BError(Code.E_OUT_NOT_EMPTY, "output folder is not empty", file=out)
    blocks = 1 if scale is None else scale_blocks(seed, scale)
    with progress(blocks, "1A blocks", quiet=blocks == 1) as bar:
        flag = write_bundle(seed, out, scale, on_block=lambda done: bar.step(f"block {done}/{blocks}"))
    click.echo(f"1A bundle for seed {seed} written to {out} (sha256_hex = {flag})")


if __name__ == "__main__":
    main()
