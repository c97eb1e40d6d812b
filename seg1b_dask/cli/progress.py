"""Progress with a total: a bar on a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


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
        self.set_total(self.total + extra)

    def set_total(self, total: int) -> None:
        self.total = total
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
