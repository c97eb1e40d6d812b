"""Certification through a real ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, and resilience to losing a worker mid-run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeBundle, SharedRun

from seg1b_dask.io.lineage import read_manifest
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.lanes.certify import certify
from seg1b_dask.policies.bundle import load_bundle

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]
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
        # The client retries the connection until the scheduler listens, then waits for both
        # workers to join: each timeout only bounds a failure.
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for proc in [*workers, scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*workers, scheduler]:  # a graceful close is not under test here: 5 s, then SIGKILL
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def candidate(make_bundle: MakeBundle) -> Path:
    """A candidate bundle that differs from the baseline from S4 on (so S4-S9 compute)."""
    target = make_bundle("baseline", s4_alloc_plan={"tile_allocation": {"tie_break": "keyed", "max_tile_share": 0.25}})
    tiles = load_bundle(target, refdata_version()).s4_alloc_plan.tile_allocation
    assert (tiles.tie_break, tiles.max_tile_share) == ("keyed", 0.25)
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
    dask_cluster, candidate: Path, seed42_pinned: SharedRun, tmp_path: Path
) -> None:
    """Both packs start from copies of one root (seed 42's baseline pinned, the seed-free
    states cached): the candidate's S4-S9 compute on the cluster, a worker killed in S4."""
    address, workers = dask_cluster
    reference = certify(seed42_pinned.copy(tmp_path / "undisturbed").root, [42], candidate, workers=2)
    killed: list[str] = []

    def on_event(msg: str) -> None:
        if not killed and msg.startswith("seed 42 S4"):
            os.kill(workers[1].pid, signal.SIGKILL)
            killed.append(msg)

    pack = certify(
        seed42_pinned.copy(tmp_path / "disturbed").root, [42], candidate, scheduler=address, on_event=on_event
    )
    assert killed, "the worker was killed during the run"
    workers[1].wait(timeout=10)
    assert workers[1].returncode == -signal.SIGKILL
    assert (pack.folder / "grade.json").is_file()
    assert _digests(pack) == _digests(reference)
    assert pack.report.as_dict()["failures"] == reference.report.as_dict()["failures"]
