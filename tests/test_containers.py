"""The image and the Compose stack, for real: ``podman build`` of the repository's
``Dockerfile`` as it is, its default command on an empty volume, and ``cluster/compose.yaml``
brought up by podman-compose, over mutual TLS, on a network of its own. A certification on
the stack equals a LocalCluster's, byte for byte, also when a worker container is killed
mid-run; a job whose pack grades RED fails ``up --exit-code-from job``; the scheduler refuses
clients without a certificate from the cluster's CA. ``cluster/podman-ci.sh`` prepares the
machine (`.ci/run` calls it); without it these tests skip and say why. Every container,
volume and network a test makes is removed, also when it fails."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import SharedRun, bundle_maker
from deploy_files import COMPOSE, REPO, compose, dockerfile

import seg1b_dask
from seg1b_dask.chain.runner import DEFAULT_POLICIES
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
IMAGE = f"seg1b-dask:{seg1b_dask.__version__}"
TAG = f"s1b{os.getpid() % 100_000}"
IMAGE_BYTES_LIMIT = 1_150_000_000  # measured 1.05 GB; the goal of 700 MB is not met (see cluster/README.md)


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the container tests run podman as root"
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: run `bash cluster/podman-ci.sh`"
    base = next(line.split()[1] for line in dockerfile_lines() if line.startswith("FROM "))
    if _podman("image", "exists", base, check=False).returncode != 0:
        return f"no base image {base}: run `bash cluster/podman-ci.sh`"
    return None


def dockerfile_lines() -> list[str]:
    return [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]


@pytest.fixture(scope="module")
def image() -> Iterator[int]:
    """The image built from the repository as it is; its size in bytes."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    done = subprocess.run(
        ["podman", "build", "-q", "-t", IMAGE, "-f", str(REPO / "Dockerfile"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    size = int(_podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(f"podman build: {time.monotonic() - started:.1f} s, image {size / 1e6:.0f} MB")
    yield size


@dataclass
class Stack:
    """One Compose project of ``cluster/compose.yaml`` (its own name, subnet, volume)."""

    project: str
    subnet: str
    certs: Path
    overrides: list[Path]

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        files = [arg for path in [COMPOSE, *self.overrides] for arg in ("-f", str(path))]
        command = ["podman-compose", "-p", self.project, *files, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)

    @property
    def env(self) -> dict[str, str]:
        """The project's certificates, subnet and a free loopback port for its dashboard."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return {
            **os.environ,
            "SEG1B_CERTS": str(self.certs),
            "SEG1B_SUBNET": self.subnet,
            "SEG1B_DASHBOARD_PORT": str(port),
        }

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def volume(self) -> Path:
        return Path(_podman("volume", "inspect", f"{self.project}_runs", "--format", "{{.Mountpoint}}").stdout.strip())

    def address(self, service: str, index: int = 1) -> str:
        return self.address_of(self.container(service, index))

    @staticmethod
    def address_of(container: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return _podman("inspect", container, "--format", fmt).stdout.strip()

    def logs(self, service: str, index: int = 1) -> str:
        """What the container printed, stdout and stderr in order."""
        command = ["podman", "logs", self.container(service, index)]
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False).stdout

    def running(self, container: str) -> bool:
        return _podman("inspect", container, "--format", "{{.State.Running}}").stdout.strip() == "true"

    def down(self) -> None:
        self.compose("down", "-v", "-t", "1", timeout=300)
        for kind, name in (("network", f"{self.project}_default"), ("volume", f"{self.project}_runs")):
            _podman(kind, "rm", "-f", name, check=False)

    def pack(self) -> Path:
        (pack,) = (self.volume() / "certification" / "certification").iterdir()
        return pack

    def healthy(self, container: str, timeout: float = 120) -> None:
        """The service's own health check, run by podman (no systemd here to run it on a timer)."""
        deadline = time.monotonic() + timeout
        while _podman("healthcheck", "run", container, check=False).returncode != 0:
            assert time.monotonic() < deadline, (
                f"{container} never became healthy:\n{_podman('logs', container).stdout}"
            )
            time.sleep(1)

    def client(self) -> object:
        from distributed import Client
        from distributed.security import Security

        security = Security(
            tls_ca_file=str(self.certs / "ca.pem"),
            tls_client_cert=str(self.certs / "job.pem"),
            tls_client_key=str(self.certs / "job-key.pem"),
            require_encryption=True,
        )
        return Client(f"tls://{self.address('scheduler')}:8786", security=security, timeout=10)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs") / "certs"
    subprocess.run(["bash", str(REPO / "cluster" / "make-certs.sh"), str(folder)], check=True, capture_output=True)
    return folder


@contextlib.contextmanager
def stack(name: str, number: int, certs: Path, overrides: list[Path] | None = None) -> Iterator[Stack]:
    the_stack = Stack(f"{TAG}{name}", f"10.{89 + number}.{os.getpid() % 200 + 20}.0/24", certs, overrides or [])
    try:
        yield the_stack
    finally:
        the_stack.down()


@pytest.fixture(scope="module")
def local_pack(seed42_green: SharedRun, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The job's certification on a LocalCluster, in a copy of the session's seed-42 root."""
    seeds = list(load_bundle(DEFAULT_POLICIES, refdata_version()).gates.required_seeds)
    return certify(
        seed42_green.copy(tmp_path_factory.mktemp("local") / "root").root, seeds, DEFAULT_POLICIES, workers=2
    )


def test_the_image_runs_as_its_own_user_and_stays_small(image: int) -> None:
    config = _podman("image", "inspect", IMAGE, "--format", "{{.Config.User}} {{json .Config.Entrypoint}}").stdout
    assert config.strip().split(maxsplit=1) == [dockerfile().user, '["seg1b"]'], config
    assert image <= IMAGE_BYTES_LIMIT, f"the image grew to {image / 1e6:.0f} MB"


def test_the_default_command_on_an_empty_volume(image: int) -> None:
    """`podman run IMAGE` on a new named volume: the default job, GREEN_BPLUS, every file it
    wrote owned by the image's user."""
    volume = f"{TAG}demo"
    _podman("volume", "create", volume)
    try:
        done = _podman("run", "--rm", "-v", f"{volume}:/runs", IMAGE, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "single-seed grade: GREEN_BPLUS" in done.stdout
        foreign = _podman(
            "run", "--rm", "-v", f"{volume}:/runs", "--entrypoint", "find", IMAGE, "/runs", "!", "-user", "10001"
        )
        assert foreign.stdout == "", foreign.stdout
    finally:
        _podman("volume", "rm", "-f", volume, check=False)


def test_compose_up_certifies_over_tls_as_a_local_cluster_does(  # noqa: ANN001
    image: int, certs: Path, local_pack
) -> None:
    """`podman-compose up --scale worker=2 --exit-code-from job`: the job certifies the
    required seeds over TLS, GREEN_BPLUS, exit 0, the pack equal to a LocalCluster's; the
    scheduler's and the workers' health checks pass meanwhile."""
    with stack("up", 0, certs) as up:
        command = ["up", "--scale", "worker=2", "--abort-on-container-exit", "--exit-code-from", "job"]
        with subprocess.Popen(
            ["podman-compose", "-p", up.project, "-f", str(COMPOSE), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=up.env,
        ) as proc:
            deadline = time.monotonic() + 120
            while _podman("container", "exists", up.container("worker", 2), check=False).returncode != 0:
                assert time.monotonic() < deadline and proc.poll() is None, "the stack never started"
                time.sleep(0.5)
            for container in (up.container("scheduler"), up.container("worker", 1), up.container("worker", 2)):
                up.healthy(container)
            output, _ = proc.communicate(timeout=900)
        job = up.logs("job")
        assert proc.returncode == 0, output[-6000:]
        assert "GRADE: GREEN_BPLUS" in job and f"content sha256 {local_pack.content_sha256}" in job, job[-4000:]
        assert pack_content_sha256(up.pack()) == local_pack.content_sha256
        assert "tls://" in up.logs("scheduler") and "tcp://" not in up.logs("scheduler")


def test_a_red_pack_fails_compose_up(image: int, certs: Path, tmp_path: Path) -> None:
    """A job whose pack grades RED (the old engine's bundle, held to B+) makes `up
    --exit-code-from job` exit 1, with the certification's own last line."""
    policies = bundle_maker(tmp_path)("baseline", s9_validation={"target_grade": "B_PLUS"})
    shared = policies.parent  # the bundle and the gates.yaml beside it
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image's user reads them
    job = compose()["job"]
    override = tmp_path / "red.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "job": {
                        "command": [*job.argv[1:], "--seeds", "42", "--policies", f"/policies/{policies.name}"],
                        "volumes": [f"{shared}:/policies:ro"],
                    }
                }
            }
        )
    )
    with stack("red", 2, certs, [override]) as red:
        done = red.compose("up", "--scale", "worker=1", "--abort-on-container-exit", "--exit-code-from", "job")
        job_log = red.logs("job")
        assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
        assert "GRADE: RED" in job_log and "CERTIFICATION FAILED: RED" in job_log.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(image: int, certs: Path) -> Iterator[Stack]:
    """The scheduler and two workers of the Compose file, detached, healthy; jobs come and go."""
    with stack("det", 1, certs) as running:
        done = running.compose("up", "-d", "--scale", "worker=2", "scheduler", "worker")
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        for container in (
            running.container("scheduler"),
            running.container("worker", 1),
            running.container("worker", 2),
        ):
            running.healthy(container)
        yield running


def _start_job(cluster: Stack) -> str:
    """The job service on the running cluster, on an emptied `runs` volume."""
    for entry in cluster.volume().iterdir():
        shutil.rmtree(entry)
    job = cluster.container("job")
    _podman("rm", "-f", job, check=False)
    done = cluster.compose("up", "-d", "--no-deps", "job")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return job


def _wait(container: str, timeout: float = 900) -> int:
    return int(_podman("wait", container, timeout=timeout).stdout.strip())


def test_the_scheduler_refuses_clients_without_the_clusters_certificate(cluster: Stack, tmp_path: Path) -> None:
    """A plain tcp:// client and a TLS client whose certificate comes from another CA are
    both refused at the handshake: they never reach the scheduler, so no task can run."""
    from distributed import Client
    from distributed.security import Security

    other = tmp_path / "other"
    subprocess.run(["bash", str(REPO / "cluster" / "make-certs.sh"), str(other)], check=True, capture_output=True)
    address = cluster.address("scheduler")
    strangers = {
        "plain tcp": (f"tcp://{address}:8786", None),
        "another CA": (
            f"tls://{address}:8786",
            Security(
                tls_ca_file=str(other / "ca.pem"),
                tls_client_cert=str(other / "job.pem"),
                tls_client_key=str(other / "job-key.pem"),
                require_encryption=True,
            ),
        ),
    }
    for name, (url, security) in strangers.items():
        with pytest.raises((OSError, TimeoutError)):
            Client(url, security=security, timeout=5)
        print(f"{name}: refused")
    refusals = [line for line in cluster.logs("scheduler").splitlines() if "TLS handshake failed" in line]
    assert len(refusals) >= 2, cluster.logs("scheduler")[-3000:]
    with cluster.client() as client:  # type: ignore[attr-defined]
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def test_sigterm_stops_the_job_in_seconds_and_the_cluster_serves_on(cluster: Stack) -> None:
    """SIGTERM to the job container (what `podman stop` and Kubernetes send) while its seeds
    run on the workers: one line, exit 143 within 10 s, no pack; the workers drain."""
    job = _start_job(cluster)
    deadline = time.monotonic() + 600
    while "S4 alloc_plan" not in cluster.logs("job"):
        assert time.monotonic() < deadline and cluster.running(job), cluster.logs("job")[-3000:]
        time.sleep(0.2)
    sent = time.monotonic()
    _podman("kill", "--signal", "TERM", job)
    status = _wait(job, timeout=60)
    seconds = time.monotonic() - sent
    log = cluster.logs("job")
    assert status == 143 and seconds <= 10, (status, seconds, log[-3000:])
    assert log.strip().splitlines()[-1].startswith("interrupted (SIGTERM)") and "Traceback" not in log
    packs = cluster.volume() / "certification" / "certification"
    assert not packs.is_dir() or not [p for p in packs.iterdir() if not p.name.startswith(".")]
    with cluster.client() as client:  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            assert time.monotonic() < deadline, "the workers never drained the stopped job's tasks"
            time.sleep(0.5)


def test_a_worker_killed_mid_run_changes_nothing(cluster: Stack, local_pack) -> None:  # noqa: ANN001
    """`podman kill` of a worker container while it runs the seeds' country batches: the
    scheduler removes it, its tasks run again on the other, and the job exits 0 with the
    LocalCluster's pack."""
    victim = cluster.address("worker", 2)
    job = _start_job(cluster)
    with cluster.client() as client:  # type: ignore[attr-defined]
        deadline = time.monotonic() + 600
        while True:
            busy = [key for worker, keys in client.processing().items() if f"//{victim}:" in worker for key in keys]
            if any("batch_task" in str(key) for key in busy):
                break
            assert time.monotonic() < deadline and cluster.running(job), cluster.logs("job")[-3000:]
            time.sleep(0.1)
    _podman("kill", cluster.container("worker", 2))
    status = _wait(job)
    log = cluster.logs("job")
    assert status == 0, log[-4000:]
    assert pack_content_sha256(cluster.pack()) == local_pack.content_sha256
    removed = [line for line in cluster.logs("scheduler").splitlines() if "Remove worker" in line and victim in line]
    assert removed, cluster.logs("scheduler")[-3000:]
    print(f"killed worker {victim} during {sum('batch_task' in str(k) for k in busy)} batch task(s): {removed[0]}")


def test_a_worker_without_the_volume_is_named_before_any_work(cluster: Stack, certs: Path) -> None:
    """A worker container started without the `runs` volume sees the image's empty /runs:
    the job names it and stops with exit 2 before computing anything."""
    worker = compose()["worker"]
    blind = f"{cluster.project}_blind"
    _podman(
        "run",
        "-d",
        "--name",
        blind,
        "--network",
        f"{cluster.project}_default",
        "-v",
        f"{certs}:/certs:ro",
        "--health-cmd",
        shlex.join(worker.healthcheck or []),
        IMAGE,
        *worker.argv[1:],
    )
    try:
        cluster.healthy(blind)
        with cluster.client() as client:  # type: ignore[attr-defined]
            before = sum(client.run(lambda dask_worker: len(dask_worker.state.log)).values())
        status = _wait(_start_job(cluster), timeout=300)
        log = cluster.logs("job")
        assert status == 2, log[-3000:]
        (line,) = [x for x in log.splitlines() if x.startswith("error:")]
        assert line.startswith("error: E_ROOT_NOT_SHARED:") and f"tls://{cluster.address_of(blind)}:" in line, line
        with cluster.client() as client:  # type: ignore[attr-defined]
            after = sum(client.run(lambda dask_worker: len(dask_worker.state.log)).values())
        assert after == before, "no task ran"
    finally:
        _podman("rm", "-f", "-t", "1", blind, check=False)
