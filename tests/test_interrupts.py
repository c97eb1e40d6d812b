"""Ctrl-C and SIGTERM stop a job on a real LocalCluster: one line, exit 130 / 143 within
seconds, no worker tracebacks, no process left, nothing published half-written, and the
rerun resumes to the same bytes. Ctrl-C is a SIGINT to the whole process group (what a
terminal sends); SIGTERM goes to the driver alone (what Kubernetes and Compose send)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SharedRun

from seg1b_dask.engine.interrupts import in_threads
from seg1b_dask.io import packs
from seg1b_dask.io.lineage import read_manifest

STOP_SECONDS = 10.0  # from the signal to the exit status


def test_threads_keep_item_order_and_every_item_ends_before_an_error() -> None:
    ended: list[int] = []

    def slow_square(item: int) -> int:
        time.sleep(0.01 * (5 - item))
        ended.append(item)
        return item * item

    assert in_threads(slow_square, [0, 1, 2, 3, 4], 3, "t") == [0, 1, 4, 9, 16]

    def fail_on_odd(item: int) -> int:
        time.sleep(0.01 * item)
        ended.append(item)
        if item % 2:
            raise ValueError(item)
        return item

    ended.clear()
    with pytest.raises(ValueError) as err:
        in_threads(fail_on_odd, [0, 1, 2, 3], 4, "t")
    assert err.value.args == (1,) and sorted(ended) == [0, 1, 2, 3]  # the first in item order, after all ended
    assert in_threads(fail_on_odd, [], 2, "t") == []


_PENDING_READ = """
import asyncio, atexit, threading, time
from seg1b_dask.engine.interrupts import silence_abandoned_reads
loops = [asyncio.new_event_loop()]  # an I/O loop on a thread of its own, closed at exit as Zarr closes its own
thread = threading.Thread(target=loops[0].run_forever, daemon=True)
thread.start()
asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), loops[0])  # a read the interrupt abandons
def close():
    loops[0].call_soon_threadsafe(loops[0].stop)
    thread.join()
    loops[0].close()
    loops.clear()
atexit.register(close)
time.sleep(0.2)
if {silence}:
    silence_abandoned_reads()
"""


@pytest.mark.parametrize("silence", [False, True])
def test_reads_abandoned_by_an_interrupt_print_nothing_at_exit(silence: bool) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", _PENDING_READ.format(silence=silence)], capture_output=True, text=True
    )
    assert ended.returncode == 0
    assert ("Task was destroyed but it is pending" in ended.stderr) is not silence, ended.stderr


def _as_from_a_terminal() -> None:
    """SIGINT as a shell's foreground job has it: a test process may run with SIGINT ignored
    (which a child inherits, and then rightly ignores Ctrl-C like a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Job:
    """``seg1b …`` in a session of its own; its stderr lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seg1b_dask.cli", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_as_from_a_terminal,
        )  # fmt: skip
        self.lines: list[str] = []
        self.seen = threading.Event()
        self.awaited = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if self.awaited and self.awaited in line:
                self.seen.set()

    def stop_at(self, text: str, signum: signal.Signals) -> tuple[int, float]:
        """Wait for a stderr line holding ``text``, send ``signum``; (exit status, seconds)."""
        self.awaited = text
        if not any(text in line for line in self.lines):
            assert self.seen.wait(timeout=600), "".join(self.lines)
        start = time.perf_counter()
        if signum == signal.SIGINT:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        status = self.process.wait(timeout=60)
        seconds = time.perf_counter() - start
        self.reader.join(timeout=10)
        return status, seconds

    def survivors(self) -> list[str]:
        """Live (not zombie) processes left in the job's session, read from /proc."""
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
            except OSError:  # the process ended while we looked
                continue
            state, session = fields[0], int(fields[3])
            if session == self.process.pid and state != "Z":
                alive.append(stat.parent.name)
        return alive


def _assert_stopped_cleanly(job: _Job, status: int, seconds: float, expected: int) -> None:
    err = "".join(job.lines)
    assert status == expected, err
    assert seconds <= STOP_SECONDS, (seconds, err)
    assert "Traceback" not in err and " - ERROR - " not in err and " - WARNING - " not in err, err
    assert job.lines[-1].startswith("interrupted (") and "run again to resume" in job.lines[-1], err
    deadline = time.monotonic() + 10
    while job.survivors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.survivors(), job.survivors()


def _published(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "term"])
def test_a_signal_stops_a_certification_and_the_rerun_resumes_to_the_same_bytes(
    seed42_pinned: SharedRun, seed42_green: SharedRun, tmp_path: Path, signum: signal.Signals, expected: int
) -> None:
    root = seed42_pinned.copy(tmp_path / "root").root
    runs_before = _published(root / "runs")
    certify = ("certify", "--root", str(root), "--seeds", "42", "--workers", "2")
    job = _Job(*certify)
    status, seconds = job.stop_at("seed 42 S4", signum)  # S4's country batches are on the workers
    _assert_stopped_cleanly(job, status, seconds, expected)
    assert _published(root / "certification") == []  # no pack, not even part of one
    assert _published(root / "runs") == runs_before  # the candidate run was never published
    if signum != signal.SIGTERM:
        return
    seg1b = [sys.executable, "-m", "seg1b_dask.cli"]
    rerun = subprocess.run([*seg1b, *certify, "--quiet"], capture_output=True, text=True)
    assert rerun.returncode == 1, rerun.stderr  # one seed: per-seed grades, not a certification
    assert "per seed: B+ on every seed graded; not a certification" in rerun.stdout, rerun.stdout
    (pack,) = _published(root / "certification")
    outputs = json.loads(packs.pack_json(pack).read_text())["outputs"]["42"]
    reference = {name: read_manifest(path)["content_sha256"] for name, path in seed42_green.result.outputs.items()}
    assert outputs == reference


@pytest.mark.slow
@pytest.mark.cluster
def test_ctrl_c_stops_a_run_on_a_local_cluster(seed42_pinned: SharedRun, tmp_path: Path) -> None:
    root = seed42_pinned.copy(tmp_path / "root").root
    runs_before = _published(root / "runs")
    job = _Job("run", "--root", str(root), "--seed", "42", "--scheduler", "distributed")
    status, seconds = job.stop_at("S4", signal.SIGINT)
    _assert_stopped_cleanly(job, status, seconds, 130)
    assert _published(root / "runs") == runs_before
