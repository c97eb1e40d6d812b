"""The Compose cluster without a container engine: each service of ``cluster/compose.yaml``
runs its exact command (the image's entry point + ``command``, in its ``WORKDIR``, with its
``environment``) as a process in its own network namespace, with its own address on a
bridge. Service names resolve as Compose's DNS would (``/etc/netns/<ns>/hosts``), and the
``runs`` volume is one folder bind-mounted at ``/runs`` in each process's own mount
namespace, for the workers and the job alike. Health checks are the services' own. Then
one worker is cut off the network mid-run (link down), and a worker without the volume
joins."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SharedRun
from deploy_files import Service, compose, dockerfile

from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.io.packs import pack_content_sha256
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.lanes.certify import certify
from seg1b_dask.policies.bundle import load_bundle

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]
TAG = f"{os.getpid() % 10_000}"
SUBNET = f"10.213.{os.getpid() % 200 + 20}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    netns: str
    veth: str
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)


class Network:
    """A bridge with one veth per host: what Compose's default network gives containers."""

    def __init__(self) -> None:
        self.bridge = f"s1b{TAG}br"
        self.hosts: dict[str, Host] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)  # the test itself watches from here
        _ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        n = len(self.hosts) + 2
        host = Host(name, f"s1b{TAG}-{name}", f"s1b{TAG}v{n}", f"{SUBNET}.{n}")
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def write_hosts_files(self, names: dict[str, str]) -> None:
        """``ip netns exec`` mounts /etc/netns/<ns>/hosts over /etc/hosts: service DNS."""
        lines = ["127.0.0.1 localhost", *(f"{self.hosts[h].address} {alias}" for alias, h in names.items())]
        for host in self.hosts.values():
            folder = Path("/etc/netns") / host.netns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join([*lines, f"{host.address} {host.name}"]) + "\n")

    def cut(self, host: Host) -> None:
        _ip("link", "set", host.veth, "down")

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                _stop(proc)
        for host in self.hosts.values():
            for args in (("netns", "del", host.netns), ("link", "del", host.veth)):
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip(*args)
            shutil.rmtree(Path("/etc/netns") / host.netns, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


def _set_on_exit(proc: subprocess.Popen, event: threading.Event) -> None:
    """Set ``event`` when ``proc`` exits (its pidfd turns readable; the caller still reaps it)."""
    fd = os.pidfd_open(proc.pid)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)
    event.set()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _with_volumes(argv: list[str], service: Service, volumes: dict[str, Path], workdir: str) -> list[str]:
    """``argv`` in a private mount namespace where each of the service's volumes is the
    folder that plays it, bind-mounted at its container path, started in ``workdir``."""
    binds = [(str(volumes[v]), mount) for v, mount in service.mounts.items()]
    script = "".join('mount --bind "$1" "$2" && shift 2 && ' for _ in binds) + 'cd "$1" && shift && exec "$@"'
    flat = [part for bind in binds for part in bind]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *flat, workdir, *argv]


@dataclass
class ComposeCluster:
    network: Network
    services: dict[str, Service]
    logs: Path
    volume: Path  # plays the `runs` volume

    def start(self, host: Host, service: Service, volumes: dict[str, Path]) -> subprocess.Popen:
        argv = _with_volumes(service.argv, service, volumes, dockerfile().workdir)
        log = (self.logs / f"{host.name}.log").open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *argv],
            env={**os.environ, **service.environment},
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        host.procs.append(proc)
        return proc

    def wait_healthy(self, host: Host, service: Service, timeout: float = 120) -> None:
        """The service's own health check, run on its host, as Compose would."""
        assert service.healthcheck
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(["ip", "netns", "exec", host.netns, *service.healthcheck], capture_output=True)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in host.procs):
                pytest.fail(f"{host.name} never became healthy:\n{self.log(host)}")
            time.sleep(1)  # Compose's health-check interval: the check is the service's own, polled

    def log(self, host: Host, tail: int = 4000) -> str:
        path = self.logs / f"{host.name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    @property
    def scheduler_address(self) -> str:
        return f"tcp://{self.network.hosts['scheduler'].address}:8786"

    @property
    def workers(self) -> list[Host]:
        return [h for name, h in self.network.hosts.items() if name.startswith("worker")]

    def run_job(self, timeout: float = 900, during=None) -> subprocess.CompletedProcess:  # noqa: ANN001
        """The job service's command, on its own host, against the running cluster, on a
        fresh ``runs`` volume (emptied as ``docker volume rm`` would)."""
        host = self.network.hosts["job"]
        for entry in self.volume.iterdir():
            shutil.rmtree(entry)
        proc = self.start(host, self.services["job"], {"runs": self.volume})
        if during is not None:
            during(proc)
        try:
            proc.wait(timeout=timeout)
        finally:
            _stop(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, self.log(host, tail=20_000), "")


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"s1b{TAG}probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def compose_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    reason = _netns_available()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    services = compose()
    logs = tmp_path_factory.mktemp("compose-logs")
    mount_points = {m for s in services.values() for m in s.mounts.values()}
    created = [Path(m) for m in sorted(mount_points) if not Path(m).exists()]
    for point in created:  # an empty mount point on the host; each process binds over it privately
        point.mkdir(parents=True)
    network = Network()
    try:
        cluster = ComposeCluster(network, services, logs, tmp_path_factory.mktemp("runs-volume"))
        network.add("scheduler")
        for i in range(services["worker"].replicas):
            network.add(f"worker{i + 1}")
        network.add("job")
        network.write_hosts_files({"scheduler": "scheduler", "job": "job"})
        volumes = {"runs": cluster.volume}
        cluster.start(network.hosts["scheduler"], services["scheduler"], volumes)
        cluster.wait_healthy(network.hosts["scheduler"], services["scheduler"])
        for host in cluster.workers:
            cluster.start(host, services["worker"], volumes)
        for host in cluster.workers:
            cluster.wait_healthy(host, services["worker"])
        yield cluster
    finally:
        network.close()
        for point in created:
            point.rmdir()


@pytest.fixture(scope="module")
def local_pack(seed42_green: SharedRun, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The same certification on a LocalCluster: the job command's defaults (the shipped
    bundle, its required seeds), in a copy of the session's seed-42 root (a pack's content
    does not depend on what its root had cached)."""
    seeds = list(load_bundle(DEFAULT_POLICIES, refdata_version()).gates.required_seeds)
    return certify(
        seed42_green.copy(tmp_path_factory.mktemp("local") / "root").root, seeds, DEFAULT_POLICIES, workers=2
    )


def _pack_of(cluster: ComposeCluster) -> Path:
    """The pack the job wrote, found through the volume (its --root is a container path)."""
    argv, mount = cluster.services["job"].argv, cluster.services["job"].mounts["runs"]
    root = Path(argv[argv.index("--root") + 1]).relative_to(mount)
    (pack,) = (cluster.volume / root / "certification").iterdir()
    return pack


def _files(pack: Path) -> set[str]:
    return {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()}


def test_sigterm_stops_the_job_in_seconds_and_the_cluster_serves_on(compose_cluster: ComposeCluster) -> None:
    """SIGTERM to the job (what Compose and Kubernetes send its PID 1) while the seeds run on
    the other hosts: one line, exit 143 within 10 s, no pack, and the workers drain and idle,
    ready for the next job (the tests below run on the same cluster)."""
    from distributed import Client

    host = compose_cluster.network.hosts["job"]
    stop: dict[str, float] = {}

    def terminate_when_busy(job: subprocess.Popen) -> None:
        log = compose_cluster.logs / f"{host.name}.log"
        before = log.stat().st_size  # earlier jobs' lines (this one has had no time to reach S4)
        deadline = time.monotonic() + 600
        while b"S4 alloc_plan" not in log.read_bytes()[before:]:
            assert job.poll() is None and time.monotonic() < deadline, compose_cluster.log(host)
            time.sleep(0.2)
        stop["sent"] = time.monotonic()
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
        stop["seconds"] = time.monotonic() - stop["sent"]

    done = compose_cluster.run_job(during=terminate_when_busy)
    this_job = done.stdout[done.stdout.rindex("run root:") :]
    assert done.returncode == 143, this_job
    assert stop["seconds"] <= 10, stop
    assert this_job.strip().splitlines()[-1].startswith("interrupted (SIGTERM)"), this_job
    assert "Traceback" not in this_job
    argv, mount = compose_cluster.services["job"].argv, compose_cluster.services["job"].mounts["runs"]
    packs = compose_cluster.volume / Path(argv[argv.index("--root") + 1]).relative_to(mount) / "certification"
    assert not [p for p in packs.iterdir() if not p.name.startswith(".")] if packs.is_dir() else True
    with Client(compose_cluster.scheduler_address, timeout=10) as client:
        deadline = time.monotonic() + 120
        while any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            assert time.monotonic() < deadline, "the workers never drained the stopped job's tasks"
            time.sleep(0.5)


def test_certification_across_hosts_equals_a_local_cluster_pack(  # noqa: ANN001
    compose_cluster: ComposeCluster, local_pack
) -> None:
    from distributed import Client

    done = compose_cluster.run_job()
    assert done.returncode == 0, done.stdout
    assert "GRADE: GREEN_BPLUS" in done.stdout
    pack = _pack_of(compose_cluster)
    assert _files(pack) == _files(local_pack.folder)
    assert pack_content_sha256(pack) == pack_content_sha256(local_pack.folder) == local_pack.content_sha256
    assert f"content sha256 {local_pack.content_sha256}" in done.stdout
    for name in ("grade.json", "cv.csv", "pooled.json", "seeds/seed=42/country_shares.csv"):
        assert (pack / name).read_bytes() == (local_pack.folder / name).read_bytes(), name
    with Client(compose_cluster.scheduler_address, timeout=10) as client:
        executed = client.run(lambda dask_worker: len(dask_worker.state.log))
        hosts = {address.split("//")[1].split(":")[0] for address in executed}
    # the work ran on both worker hosts, at their own addresses
    assert hosts == {h.address for h in compose_cluster.workers} and all(executed.values())


def test_a_worker_cut_off_mid_run_changes_nothing(  # noqa: ANN001
    compose_cluster: ComposeCluster, local_pack
) -> None:
    from distributed import Client

    victim = compose_cluster.workers[-1]
    cut: dict[str, object] = {}

    def record_completions(victim: str, topic: str, dask_scheduler=None) -> None:  # noqa: ANN001
        """A scheduler plugin noting which worker finished each task, and telling ``topic``
        the moment the victim starts a country batch (defined here, so it travels to the
        scheduler by value)."""
        from distributed.diagnostics.plugin import SchedulerPlugin

        class Completions(SchedulerPlugin):
            name = "test-completions"

            def __init__(self) -> None:
                self.done: list[tuple[str, str]] = []
                self.told = False

            def transition(self, key, start, finish, *args, **kwargs) -> None:  # noqa: ANN001
                if start == "processing" and finish == "memory":
                    self.done.append((str(key), str(kwargs.get("worker"))))
                elif finish == "processing" and not self.told and "batch_task" in str(key):
                    ts = dask_scheduler.tasks.get(key)
                    worker = ts.processing_on.address if ts is not None and ts.processing_on is not None else ""
                    if f"//{victim}:" in worker:
                        self.told = True
                        dask_scheduler.log_event(topic, {"worker": worker, "key": str(key)})

        dask_scheduler.add_plugin(Completions())

    def cut_when_busy(job: subprocess.Popen) -> None:
        """Cut the victim's link as soon as it runs one of the seeds' country batches (the
        plugin says so), or give up when the job ends first."""
        told, over = [], threading.Event()

        def busy(event: tuple[float, dict[str, str]]) -> None:
            told.append(event[1])
            over.set()

        threading.Thread(target=_set_on_exit, args=(job, over), daemon=True).start()
        with Client(compose_cluster.scheduler_address, timeout=10) as client:
            client.subscribe_topic("test-victim-busy", busy)
            client.run_on_scheduler(record_completions, victim.address, "test-victim-busy")
            assert over.wait(timeout=900), "neither a batch on the victim nor the job's end"
            if told:
                compose_cluster.network.cut(victim)
                cut.update(worker=told[0]["worker"], busy=[told[0]["key"]], at=time.time())

    done = compose_cluster.run_job(during=cut_when_busy)
    assert cut, f"the victim never ran a country batch:\n{done.stdout}"
    assert done.returncode == 0, done.stdout
    pack = _pack_of(compose_cluster)
    assert pack_content_sha256(pack) == local_pack.content_sha256
    assert _files(pack) == _files(local_pack.folder)
    with Client(compose_cluster.scheduler_address, timeout=10) as client:
        removals = [
            event
            for _, event in client.get_events("all")
            if event.get("action") == "remove-worker" and event.get("worker") == cut["worker"]
        ]
        completions = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["test-completions"].done)
    assert removals, "the scheduler declared the cut worker lost"
    lost = {str(k) for e in removals for k in [*e["processing-tasks"], *e["lost-computed-tasks"]]}
    assert lost, "the cut worker held work when it was lost"
    redone = {key for key, worker in completions if key in lost and worker != cut["worker"]}
    assert redone, "the lost worker's tasks ran again on a surviving host"
    print(f"cut {cut['worker']} while it ran {len(cut['busy'])} batch task(s); lost {len(lost)}, redone {len(redone)}")


def test_a_worker_without_the_volume_is_named_before_any_work(compose_cluster: ComposeCluster) -> None:
    """A worker container started without the `runs` volume sees only the image's empty
    /runs: the job names it and stops with exit 2 before computing anything."""
    from distributed import Client

    blind = compose_cluster.network.add("blind")
    compose_cluster.network.write_hosts_files({"scheduler": "scheduler", "job": "job"})
    worker = compose_cluster.services["worker"]
    no_volume = dataclasses.replace(worker, mounts={})
    compose_cluster.start(blind, no_volume, {})
    compose_cluster.wait_healthy(blind, no_volume)
    with Client(compose_cluster.scheduler_address, timeout=10) as client:
        before = sum(client.run(lambda dask_worker: len(dask_worker.state.log)).values())
    done = compose_cluster.run_job(timeout=120)
    assert done.returncode == 2, done.stdout
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("error:")]
    assert line.startswith("error: E_ROOT_NOT_SHARED:") and f"tcp://{blind.address}:" in line
    assert "/runs/certification" in line
    with Client(compose_cluster.scheduler_address, timeout=10) as client:
        after = sum(client.run(lambda dask_worker: len(dask_worker.state.log)).values())
    assert after == before, "no task ran"
