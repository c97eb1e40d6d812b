"""The image and the Compose stack, for real: ``podman build`` of the repository's
``Dockerfile`` as it is, its default command on an empty volume, and ``cluster/compose.yaml``
brought up by podman-compose, over mutual TLS, on a network of its own. A certification on
the stack equals a LocalCluster's, byte for byte, also when a worker container is killed
mid-run (the jobs certify the shipped bundle with one required seed, mounted read-only: the
deployment is under test here, grading across seeds in test_lanes); a job whose pack grades
RED fails ``up --exit-code-from job``; the scheduler refuses clients without a certificate
from the cluster's CA. ``cluster/podman-ci.sh`` prepares the
machine (`.ci/run` calls it); without it these tests skip and say why. Every container,
volume and network a test makes is removed, also when it fails (``podman_stack.stack``)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import SharedRun, bundle_maker
from deploy_files import compose, dockerfile
from podman_stack import IMAGE, TAG, BackgroundBuild, Stack, make_certs, podman, stack, unavailable

from seg1b_dask.io.packs import pack_content_sha256
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.lanes.certify import certify
from seg1b_dask.policies.bundle import load_bundle

pytestmark = [
    pytest.mark.containers,
    pytest.mark.cluster,
    pytest.mark.slow,
    # the stand-in base image's Python is Debian's 3.11.2 (cluster/podman-ci.sh), the host's may differ
    pytest.mark.filterwarnings("ignore:Mismatched versions found"),
]
IMAGE_BYTES_LIMIT = 1_150_000_000  # 1.05 GB today; cluster/README.md says what the rest would take


@pytest.fixture(scope="module")
def image(image_build: BackgroundBuild | None) -> int:
    """The image built from the repository as it is (in the background since the session's
    first test); its size in bytes."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    assert image_build is not None
    size, seconds = image_build.wait()
    print(f"podman build: {seconds:.1f} s, image {size / 1e6:.0f} MB")
    return size


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs") / "certs")


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped bundle requiring seed 42 alone, readable by the image's user."""
    policies = bundle_maker(tmp_path_factory.mktemp("one-seed"))("remediation", gates={"required_seeds": [42]})
    assert list(load_bundle(policies, refdata_version()).gates.required_seeds) == [42]
    return _readable(policies)


def _readable(policies: Path) -> Path:
    """A bundle folder (and the gates.yaml beside it) that the image's user can read."""
    shared = policies.parent
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return policies


def job_override(policies: Path, folder: Path, *extra: str) -> Path:
    """A Compose override: the job certifies ``policies``, mounted read-only at /policies."""
    override = folder / f"job-{policies.parent.name}.yaml"
    command = [*compose()["job"].argv[1:], *extra, "--policies", f"/policies/{policies.name}"]
    job = {"command": command, "volumes": [f"{policies.parent}:/policies:ro"]}
    override.write_text(yaml.safe_dump({"services": {"job": job}}))
    return override


@pytest.fixture(scope="module")
def local_pack(one_seed: Path, seed42_green: SharedRun, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The job's certification on a LocalCluster, in a copy of the session's seed-42 root."""
    return certify(seed42_green.copy(tmp_path_factory.mktemp("local") / "root").root, None, one_seed, workers=2)


def _files(pack: Path) -> set[str]:
    return {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()}


def test_the_image_runs_as_its_own_user_and_stays_small(image: int) -> None:
    config = podman("image", "inspect", IMAGE, "--format", "{{.Config.User}} {{json .Config.Entrypoint}}").stdout
    assert config.strip().split(maxsplit=1) == [dockerfile().user, '["seg1b"]'], config
    assert image <= IMAGE_BYTES_LIMIT, f"the image grew to {image / 1e6:.0f} MB"


def test_the_default_command_on_an_empty_volume(image: int) -> None:
    """`podman run IMAGE` on a new named volume: the default job, GREEN_BPLUS, every file it
    wrote owned by the image's user."""
    volume = f"{TAG}demo"
    podman("volume", "create", volume)
    try:
        done = podman("run", "--rm", "-v", f"{volume}:/runs", IMAGE, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "single-seed grade: GREEN_BPLUS" in done.stdout
        find = ["find", IMAGE, "/runs", "!", "-user", "10001"]
        assert podman("run", "--rm", "-v", f"{volume}:/runs", "--entrypoint", *find).stdout == ""
        assert podman("run", "--rm", "-v", f"{volume}:/runs", "--entrypoint", "find", IMAGE, "/runs/demo").stdout
    finally:
        podman("volume", "rm", "-f", volume, check=False)


def test_compose_up_certifies_over_tls_as_a_local_cluster_does(  # noqa: ANN001
    image: int, certs: Path, one_seed: Path, local_pack, tmp_path: Path
) -> None:
    """`podman-compose up --scale worker=2 --exit-code-from job`: the job certifies the
    required seeds over TLS, GREEN_BPLUS, exit 0, the pack equal to a LocalCluster's; the
    scheduler's and the workers' health checks pass meanwhile."""
    with stack("up", 0, certs, tmp_path, [job_override(one_seed, tmp_path)]) as up:
        checked = (up.container("scheduler"), up.container("worker", 1), up.container("worker", 2))
        status, output = up.up("--scale", "worker=2", "--abort-on-container-exit", "--exit-code-from", "job",
                               healthy=checked)  # fmt: skip
        job = up.logs("job")
        assert status == 0, output[-6000:]
        assert "GRADE: GREEN_BPLUS" in job and f"content sha256 {local_pack.content_sha256}" in job, job[-4000:]
        assert pack_content_sha256(up.pack()) == local_pack.content_sha256
        assert _files(up.pack()) == _files(local_pack.folder)
        assert "tls://" in up.logs("scheduler") and "tcp://" not in up.logs("scheduler")


def test_a_red_pack_fails_compose_up(image: int, certs: Path, tmp_path: Path) -> None:
    """A job whose pack grades RED (the old engine's bundle, held to B+) makes `up
    --exit-code-from job` exit 1, with the certification's own last line."""
    policies = _readable(bundle_maker(tmp_path)("baseline", s9_validation={"target_grade": "B_PLUS"}))
    override = job_override(policies, tmp_path, "--seeds", "42")
    with stack("red", 2, certs, tmp_path / "stack", [override]) as red:
        status, output = red.up("--scale", "worker=1", "--abort-on-container-exit", "--exit-code-from", "job")
        job_log = red.logs("job")
        assert status == 1, output[-4000:]
        assert "GRADE: RED" in job_log and "CERTIFICATION FAILED: RED" in job_log.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(image: int, certs: Path, one_seed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The scheduler and two workers of the Compose file, detached, healthy; jobs come and go."""
    folder = tmp_path_factory.mktemp("detached")
    with stack("det", 1, certs, folder, [job_override(one_seed, folder)]) as running:
        checked = (running.container("scheduler"), running.container("worker", 1), running.container("worker", 2))
        status, output = running.up("-d", "--scale", "worker=2", "scheduler", "worker", healthy=checked)
        assert status == 0, output[-4000:]
        yield running


def _start_job(cluster: Stack) -> str:
    """The job service on the running cluster, on an emptied `runs` volume."""
    for entry in cluster.volume().iterdir():
        shutil.rmtree(entry)
    job = cluster.container("job")
    podman("rm", "-f", job, check=False)
    done = cluster.compose("up", "-d", "--no-deps", "job")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return job


def _wait(container: str, timeout: float = 900) -> int:
    return int(podman("wait", container, timeout=timeout).stdout.strip())


def _transitions(cluster: Stack) -> tuple[int, int]:
    """Task transitions so far on the scheduler and summed over the workers: any task run moves both."""
    with cluster.client() as client:
        on_scheduler = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
        on_workers = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    return on_scheduler, sum(on_workers.values())


def test_the_scheduler_refuses_clients_without_the_clusters_certificate(cluster: Stack, tmp_path: Path) -> None:
    """A plain tcp:// client, a TLS client whose certificate comes from another CA and the
    job itself with such a certificate are refused at the handshake, each seen refused by
    the scheduler: they never reach it, so no task runs."""
    from distributed import Client

    other = make_certs(tmp_path / "other")
    address = cluster.address("scheduler")
    before = _transitions(cluster)

    def refusals() -> int:
        return sum("TLS handshake failed" in line for line in cluster.logs("scheduler").splitlines())

    seen = refusals()
    with pytest.raises(OSError):
        Client(f"tcp://{address}:8786", timeout=5)
    assert refusals() > seen, "the plain client was refused by the scheduler, not by a missing network"
    seen = refusals()
    with pytest.raises(OSError, match="TLS certificate does not match"):
        cluster.client(certs=other, timeout=5)
    assert refusals() > seen
    seen = refusals()
    tls = {"CA_FILE": "ca.pem", "CLIENT__CERT": "job.pem", "CLIENT__KEY": "job-key.pem"}
    env = {**os.environ, **{f"DASK_DISTRIBUTED__COMM__TLS__{k}": str(other / v) for k, v in tls.items()}}
    argv = ["certify", "--scheduler", f"tls://{address}:8786", "--root", str(tmp_path / "r"), "--connect-timeout", "5"]
    done = subprocess.run([sys.executable, "-m", "seg1b_dask.cli", *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "error: E_SCHEDULER_UNREACHABLE: the TLS handshake failed" in done.stdout + done.stderr
    assert refusals() > seen
    assert _transitions(cluster) == before


def test_sigterm_stops_the_job_in_seconds_and_the_cluster_serves_on(cluster: Stack) -> None:
    """SIGTERM to the job container (what `podman stop` and Kubernetes send) while its seeds
    run on the workers: one line, exit 143 within 10 s, no pack; the workers drain."""
    job = _start_job(cluster)
    deadline = time.monotonic() + 600
    while "S4 alloc_plan" not in cluster.logs("job"):
        assert time.monotonic() < deadline and cluster.running(job), cluster.logs("job")[-3000:]
        time.sleep(0.2)
    sent = time.monotonic()
    podman("kill", "--signal", "TERM", job)
    status = _wait(job, timeout=60)
    seconds = time.monotonic() - sent
    log = cluster.logs("job")
    assert status == 143 and seconds <= 10, (status, seconds, log[-3000:])
    assert log.strip().splitlines()[-1].startswith("interrupted (SIGTERM)") and "Traceback" not in log
    packs = cluster.volume() / "certification" / "certification"
    assert not packs.is_dir() or not [p for p in packs.iterdir() if not p.name.startswith(".")]
    with cluster.client() as client:
        deadline = time.monotonic() + 120
        while any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            assert time.monotonic() < deadline, "the workers never drained the stopped job's tasks"
            time.sleep(0.5)


def test_a_worker_killed_mid_run_changes_nothing(cluster: Stack, local_pack) -> None:  # noqa: ANN001
    """`podman kill` of a worker container while it runs the seeds' country batches: the
    scheduler removes it with work in hand, that work runs again on the other worker, and the
    job exits 0 with the LocalCluster's pack."""
    victim = cluster.address("worker", 2)
    job = _start_job(cluster)
    with cluster.client() as client:
        deadline = time.monotonic() + 600
        while True:
            busy = [key for worker, keys in client.processing().items() if f"//{victim}:" in worker for key in keys]
            if any("batch_task" in str(key) for key in busy):
                break
            assert time.monotonic() < deadline and cluster.running(job), cluster.logs("job")[-3000:]
            time.sleep(0.1)
        podman("kill", cluster.container("worker", 2))
        status = _wait(job)
        removals = [
            event
            for _, event in client.get_events("all")
            if event.get("action") == "remove-worker" and f"//{victim}:" in str(event.get("worker"))
        ]
    log = cluster.logs("job")
    assert status == 0, log[-4000:]
    assert pack_content_sha256(cluster.pack()) == local_pack.content_sha256
    assert _files(cluster.pack()) == _files(local_pack.folder)
    assert removals and any(e["processing-tasks"] for e in removals), "the worker was lost with work in hand"
    removed = [line for line in cluster.logs("scheduler").splitlines() if "Remove worker" in line and victim in line]
    assert removed, cluster.logs("scheduler")[-3000:]
    print(f"killed {victim} during {sum('batch_task' in str(k) for k in busy)} batch task(s): {removed[0]}")


def test_a_worker_without_the_volume_is_named_before_any_work(cluster: Stack, certs: Path) -> None:
    """A worker container started without the `runs` volume sees the image's empty /runs:
    the job names it and stops with exit 2 before computing anything."""
    worker = compose()["worker"]
    blind = f"{cluster.project}_blind"
    network = f"{cluster.project}_default"
    health = shlex.join(worker.healthcheck or [])
    podman("run", "-d", "--name", blind, "--network", network, "-v", f"{certs}:/certs:ro", "--health-cmd", health,
           IMAGE, *worker.argv[1:])  # fmt: skip
    try:
        cluster.healthy(blind)
        before = _transitions(cluster)
        status = _wait(_start_job(cluster), timeout=300)
        log = cluster.logs("job")
        assert status == 2, log[-3000:]
        (line,) = [x for x in log.splitlines() if x.startswith("error:")]
        assert line.startswith("error: E_ROOT_NOT_SHARED:") and f"tls://{cluster.address_of(blind)}:" in line, line
        assert "/runs/certification" in line, line
        assert _transitions(cluster)[1] == before[1], "no task ran on a worker"
    finally:
        podman("rm", "-f", "-t", "1", blind, check=False)
