"""``seg1b``: the command line. User mistakes print one coded line, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import Seg1BError
from .execution import Execution
from .runner import DEFAULT_POLICIES, DEFAULT_ROOT, RunResult, run_seed


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Seg1BError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
def main() -> None:
    """seg1b_dask — Segment 1B: where on Earth every outlet sits."""


def summary(result: RunResult) -> str:
    lines = [f"seg1b run {result.run_id}  seed={result.seed}", f"  parameter_hash       {result.tokens.parameter_hash}", f"  manifest_fingerprint {result.tokens.manifest_fingerprint}", "", "  state              seconds  note"]
    for r in result.states:
        note = "reused from cache" if r.reused else ", ".join(f"{k}={v}" for k, v in r.stats.items() if not isinstance(v, dict | list))[:70]
        lines.append(f"  {r.id} {r.name:<15} {r.seconds:7.2f}  {note}")
    m = result.validation["metrics"]
    lines += [
        "",
        f"  validation: {'PASS (bundle sealed with _passed.flag)' if result.validation['passed'] else 'FAIL'}",
        f"  sites {m['sites']:,}  active countries {m['active_countries']} of {m['eligible_countries']} eligible  ({m['eligible_country_nonzero_share']:.4f})",
        f"  country_gini {m['country_gini']:.4f}  top1/5/10 {m['top1_share']:.4f} / {m['top5_share']:.4f} / {m['top10_share']:.4f}  (k = {m['top1_k']} / {m['top5_k']} / {m['top10_k']})",
        f"  southern_hemisphere_share {m['southern_hemisphere_share']:.4f}  nn p50 {m['nn_p50_km']:.3f} km  p99 {m['nn_p99_km']:.3f} km  ratio {m['nn_ratio']:.2f}",
        "",
        f"  site_locations     {result.outputs['site_locations']}",
        f"  validation bundle  {result.outputs['validation_bundle']}",
        f"  run receipt        {result.run_dir / 'run.json'}",
        f"  wall {result.wall_seconds:.2f} s   peak RSS {result.peak_rss_mb:.0f} MiB",
    ]
    return "\n".join(lines)


@main.command()
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--policies", "policies", default=str(DEFAULT_POLICIES), show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--root", default=str(DEFAULT_ROOT), show_default=True, type=click.Path(file_okay=False, path_type=Path), help="run root")
@click.option("--upstream", default=None, type=click.Path(file_okay=False, path_type=Path), help="a 1A bundle (default: the stand-in for --seed)")
@click.option("--scheduler", default="threads", show_default=True, help="threads | processes | synchronous | distributed | tcp://HOST:PORT")
@click.option("--workers", default=None, type=int)
@click.option("--country-batch", default=24, show_default=True, type=click.IntRange(1))
@click.option("--quiet", is_flag=True)
def run(seed: int, policies: Path, root: Path, upstream: Path | None, scheduler: str, workers: int | None, country_batch: int, quiet: bool) -> None:
    """Run S0-S9 for one seed (default: seed 42, baseline policies)."""
    from tqdm import tqdm

    execution = Execution(scheduler=scheduler, workers=workers, country_batch=country_batch)
    with tqdm(total=9, desc="S0 gate", unit="state", disable=quiet, leave=False, file=sys.stderr) as bar:
        def on_state(name: str) -> None:
            bar.set_description(name)
            bar.update(1)

        result = run_seed(root=root, seed=seed, policies=policies, upstream=upstream, execution=execution, on_state=on_state)
    click.echo(summary(result))


@main.group()
def upstream() -> None:
    """Segment 1A bundles."""


@upstream.command()
@click.option("--seed", required=True, type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def synth(seed: int, out: Path) -> None:
    """Write the 1A stand-in bundle for SEED into OUT (must be empty or absent)."""
    from .upstream import write_bundle

    if out.exists() and any(out.iterdir()):
        raise Seg1BError("E_OUT_NOT_EMPTY", "output folder is not empty", file=out)
    flag = write_bundle(seed, out)
    click.echo(f"1A bundle for seed {seed} written to {out} (sha256_hex = {flag})")


if __name__ == "__main__":
    main()
