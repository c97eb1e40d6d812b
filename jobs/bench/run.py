"""Benchmarks of seg1b_dask: wall seconds, peak RSS and results, one suite per file of
suites/, written as one JSON (with the machine's description) and summed up at the end.

Usage::

    python jobs/bench/run.py SUITE[,SUITE…] [--out bench/NAME.json] [--repeat 3] [suite options]
    python jobs/bench/run.py engine,grid30,scorer,certify,report,memory --out bench/benchmark.json
    python jobs/bench/run.py scale,strong --out bench/scale.json
    python jobs/bench/run.py realism --out bench/realism.json
    python jobs/bench/run.py knn --knn-sites 1000000 --repeat 2 --out bench/knn.json

``--help`` lists every suite and its options. Progress (step / total) goes to stderr; the
JSON is rewritten after every suite, and as it goes by the long ones.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from harness import Bench, Progress, Suite, common_options, machine
from suites import certify, engine, grid30, knn, memory, realism, report, scale, scorer, strong

SUITES: dict[str, Suite] = {
    "engine": engine,
    "grid30": grid30,
    "scorer": scorer,
    "certify": certify,
    "report": report,
    "memory": memory,
    "scale": scale,
    "strong": strong,
    "realism": realism,
    "knn": knn,
}


def _about(suite: Suite) -> str:
    """The first paragraph of the suite's docstring, without its name."""
    doc = (suite.__doc__ or "").split("\n\n")[0]
    return " ".join(doc.split(":", 1)[1].split())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("suites", nargs="+", help=f"one or more of {', '.join(SUITES)} (commas or spaces)")
    common_options(p)
    for name, suite in SUITES.items():
        suite.options(p.add_argument_group(f"suite {name}", _about(suite)))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = [n for arg in args.suites for n in arg.split(",") if n]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"unknown suite(s) {', '.join(unknown)}: use {', '.join(SUITES)}")
    out = args.out or Path("bench") / f"{'-'.join(names)}.json"
    work = args.work or Path(tempfile.mkdtemp(prefix="seg1b-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work, out, Progress(sum(SUITES[n].steps(args) for n in names)))
    bench.save(
        {
            "machine": machine(),
            "execution": bench.execution.as_dict(),
            "suites": names,
            "targets": {k: v for n in names for k, v in SUITES[n].TARGETS.items()},
        }
    )
    done = {}
    try:
        for name in names:
            done[name] = SUITES[name].run(bench)
            bench.save(done[name])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for name, fields in done.items():
        print("\n".join(SUITES[name].summary(fields)))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
