"""What every suite shares: the options, the run's context, progress with a total, wall
seconds and peak RSS (of this process, of a callable, of a command and its children),
medians over repeats, and the JSON with the machine's description."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil

from seg1b_dask.engine.execution import Execution

T = TypeVar("T")
MIB = 2**20


class Suite(Protocol):
    """One file of ``suites/``: its options, its number of progress steps, its run (the
    top-level JSON fields it owns), the targets it is judged against, its summary lines."""

    TARGETS: dict[str, float]

    def options(self, group: argparse._ArgumentGroup) -> None: ...

    def steps(self, args: argparse.Namespace) -> int: ...

    def run(self, bench: Bench) -> dict[str, Any]: ...

    def summary(self, fields: dict[str, Any]) -> list[str]: ...


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: bench/SUITES.json)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--scheduler", default="threads", help="the engine's scheduler (threads, distributed, …)")
    parser.add_argument("--workers", type=int, default=None, help="workers for --scheduler (default: all cores)")
    parser.add_argument("--work", type=Path, default=None, help="run roots, kept (default: a temporary folder)")


class Progress:
    """``[step/total, elapsed] label … seconds`` on stderr, one line per step."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.done += 1
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.perf_counter() - self.started))
        print(f"[{self.done}/{self.total}, {elapsed}] {label} … ", end="", file=sys.stderr, flush=True)
        t = time.perf_counter()
        yield
        print(f"{time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """A benchmark run: its options, scratch folder, engine execution, progress and JSON."""

    args: argparse.Namespace
    work: Path
    out: Path
    progress: Progress
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def execution(self) -> Execution:
        return Execution(scheduler=self.args.scheduler, workers=self.args.workers)

    def save(self, fields: dict[str, Any]) -> None:
        """Add ``fields`` to the JSON and write it (a long suite saves as it goes)."""
        self.report.update(fields)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2) + "\n")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


class RssSampler:
    """Peak resident memory, sampled every 20 ms: per phase (``mark``), of the process plus
    its children (or the process alone), and of its largest child."""

    def __init__(self, proc: psutil.Process | None = None, children: bool = True) -> None:
        self.children = children
        self.proc = proc or psutil.Process()
        self.current = "setup"
        self.peaks: dict[str, float] = {}
        self.largest_child = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        own = self.proc.memory_info().rss / MIB
        kids = []
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids.append(child.memory_info().rss / MIB)
        total = own + sum(kids) if self.children else own
        self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), total)
        self.largest_child = max([self.largest_child, *kids])

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self._sample()
            time.sleep(0.02)

    def mark(self, phase: str) -> None:
        self.current = phase.split()[0]

    @property
    def peak(self) -> float:
        return max(self.peaks.values(), default=0.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_rss_mb: float
    rss_growth_mb: float  # the peak above the process's RSS when the call began


def measured(fn: Callable[[], T]) -> tuple[T, Measure]:
    """``fn()``, its wall seconds and this process's peak RSS while it ran."""
    start = psutil.Process().memory_info().rss / MIB
    with RssSampler(children=False) as rss:
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
    peak = max(rss.peak, start)
    return result, Measure(round(seconds, 4), round(peak, 1), round(peak - start, 1))


def medians(measures: list[Measure]) -> dict[str, Any]:
    """Every repeat's seconds, their median, and the largest peak RSS."""
    return {
        "runs": len(measures),
        "seconds": [m.seconds for m in measures],
        "seconds_median": round(statistics.median(m.seconds for m in measures), 4),
        "peak_rss_mb_max": max(m.peak_rss_mb for m in measures),
        "rss_growth_mb_max": max(m.rss_growth_mb for m in measures),
    }


@dataclass(frozen=True)
class CommandRun:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_mb_driver: float
    peak_rss_mb_worker: float  # the largest child process (a Dask worker)


def run_command(cmd: list[str], check: bool = True) -> CommandRun:
    """``cmd`` in its own process, as a user runs it: wall seconds, peak RSS of the process and
    of its largest child. ``check``: a non-zero exit raises, with the end of stderr."""
    t = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with RssSampler(proc, children=False) as rss:
        out, err = proc.communicate()
    wall = time.perf_counter() - t
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return CommandRun(
        proc.returncode, out.decode(), err.decode(), round(wall, 3), round(rss.peak, 1), round(rss.largest_child, 1)
    )
