"""Certification through a real ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, and resilience to losing a worker mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seg1b_dask.chain.runner import BASELINE_POLICIES
from seg1b_dask.io.lineage import read_manifest
from seg1b_dask.lanes.certify import certify

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
SEEDS = [42, 7]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--no-dashboard",
        ],
        **quiet,
    )
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--name",
                f"w{i}",
                "--death-timeout",
                "60",
            ],
            **quiet,
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield address, workers
    finally:
        for proc in [*workers, scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*workers, scheduler]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    """A candidate bundle that differs from the baseline from S4 on (so S4-S9 compute)."""
    target = tmp_path / "policies" / "candidate"
    shutil.copytree(BASELINE_POLICIES, target)
    shutil.copy(BASELINE_POLICIES.parent / "gates.yaml", target.parent / "gates.yaml")
    s4 = target / "s4_alloc_plan.yaml"
    s4.write_text(
        s4.read_text()
        .replace("tie_break: tile_id", "tie_break: keyed")
        .replace("max_tile_share: 1.0", "max_tile_share: 0.25")
    )
    return target


def _digests(pack) -> dict[int, dict[str, str]]:  # noqa: ANN001
    return {
        seed: {name: read_manifest(path)["content_sha256"] for name, path in result.outputs.items()}
        for seed, result in pack.results.items()
    }


def test_certify_through_scheduler_and_worker_processes(  # noqa: ANN001
    dask_cluster, candidate: Path, tmp_path: Path
) -> None:
    from distributed import Client

    address, _ = dask_cluster
    pack = certify(tmp_path / "root", SEEDS, candidate, scheduler=address)
    for name in ("pack.json", "grade.json", "cv.csv", "pooled.json", "dask-report.html"):
        assert (pack.folder / name).is_file(), name
    for seed in SEEDS:
        assert (pack.folder / "seeds" / f"seed={seed}" / "scorecard.json").is_file()
        # The candidate breaks the legacy stripes, so NN contraction is measured against the pinned baseline.
        assert pack.scored[seed].card["baseline"]["seed"] == seed
    assert pack.report.missing_seeds == [101, 202] and pack.report.outcome == "RED"
    with Client(address) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        executed = client.run(lambda dask_worker: len(dask_worker.state.log))
    # One graph of country batches and spatial chunks for all seeds, spread over both
    # workers, never one task per seed.
    assert {"band_task", "batch_task"} <= set(prefixes) and "certify_seed" not in prefixes
    assert len(executed) == 2 and all(v > 0 for v in executed.values())


def test_losing_a_worker_mid_run_gives_the_same_pack(  # noqa: ANN001
    dask_cluster, candidate: Path, tmp_path: Path
) -> None:
    address, workers = dask_cluster
    reference = certify(tmp_path / "undisturbed", SEEDS, candidate, workers=2)
    killed: list[str] = []

    def on_event(msg: str) -> None:
        if not killed and msg.startswith("seed 42 S4"):
            os.kill(workers[1].pid, signal.SIGKILL)
            killed.append(msg)

    pack = certify(tmp_path / "disturbed", SEEDS, candidate, scheduler=address, on_event=on_event)
    assert killed, "the worker was killed during the run"
    workers[1].wait(timeout=10)
    assert workers[1].returncode == -signal.SIGKILL
    assert (pack.folder / "grade.json").is_file()
    assert _digests(pack) == _digests(reference)
    assert pack.report.as_dict()["failures"] == reference.report.as_dict()["failures"]
