"""The Compose file run by podman-compose for the container tests: one project per stack
(its own name, subnet, dashboard port and ``runs`` volume), the image under a test-only tag,
and the services' health checks run by hand (podman has no systemd here to run them on a
timer, and podman-compose on podman ≥ 4.6 waits for ``service_healthy``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from deploy_files import COMPOSE, REPO, dockerfile
from filelock import FileLock

TAG = f"s1b{os.getpid() % 100_000}"
IMAGE = "localhost/seg1b-dask:test"  # never the user's own seg1b-dask:<version> tag


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def unavailable() -> str | None:
    """Why the container tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the container tests run podman as root"
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: run `bash cluster/podman-ci.sh` and `pip install -e '.[test]'`"
    base = dockerfile().base
    if podman("image", "exists", base, check=False).returncode != 0:
        return f"no base image {base}: run `bash cluster/podman-ci.sh`"
    return None


BUILD_LOCK = Path("/var/tmp/seg1b-image-build.lock")  # cluster/podman-ci.sh builds the image under it


def build_image() -> tuple[int, float]:
    """``podman build`` of the repository's Dockerfile under the test tag, after any build
    cluster/podman-ci.sh left running; the image an earlier run left under that tag is
    removed when this build replaces it. Size in bytes, seconds (the wait included)."""
    before = podman("image", "inspect", IMAGE, "--format", "{{.Id}}", check=False).stdout.strip()
    started = time.monotonic()
    with FileLock(BUILD_LOCK, timeout=1500):
        done = podman("build", "-q", "-t", IMAGE, "-f", str(REPO / "Dockerfile"), str(REPO), timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    seconds = time.monotonic() - started
    if before and before != podman("image", "inspect", IMAGE, "--format", "{{.Id}}").stdout.strip():
        podman("rmi", before, check=False)
    return int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout), seconds


class BackgroundBuild:
    """``build_image`` in a process of its own, started when a session first runs a test (so
    the image builds while the test files before the container file run); its outcome lands
    in ``folder/build.json`` for any pytest process to wait on."""

    def __init__(self, folder: Path) -> None:
        self.result = folder / "build.json"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, str(self.result)], cwd=REPO)

    def wait(self, timeout: float = 3000) -> tuple[int, float]:
        """The image's size in bytes and the build's seconds, once the build has ended (its
        lock's wait and the build's own bound, ``build_image``, fit in ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.result.is_file():
            assert time.monotonic() < deadline, f"the background image build did not end in {timeout:g} s"
            ended = self.process is not None and self.process.poll() is not None
            assert not ended or self.result.is_file(), f"the image build's process ended ({self.process.returncode})"
            time.sleep(1)
        outcome = json.loads(self.result.read_text())
        assert "error" not in outcome, outcome["error"]
        return outcome["size"], outcome["seconds"]

    def stop(self) -> None:
        """Wait for the build this process started (another process may still need it)."""
        if self.process is not None:
            try:
                self.process.wait(timeout=3000)
            finally:
                self.process.kill()


def make_certs(folder: Path) -> Path:
    subprocess.run(["bash", str(REPO / "cluster" / "make-certs.sh"), str(folder)], check=True, capture_output=True)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    """One Compose project of ``cluster/compose.yaml``, plus override files."""

    project: str
    subnet: str
    certs: Path
    folder: Path  # the stack's own files: the image override, logs
    overrides: list[Path] = field(default_factory=list)
    dashboard_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        test_image = self.folder / "image.yaml"
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        test_image.write_text(yaml.safe_dump({"services": {name: {"image": IMAGE} for name in services}}))
        self.overrides = [test_image, *self.overrides]

    @property
    def command(self) -> list[str]:
        files = [arg for path in [COMPOSE, *self.overrides] for arg in ("-f", str(path))]
        return ["podman-compose", "-p", self.project, *files]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SEG1B_CERTS": str(self.certs),
            "SEG1B_SUBNET": self.subnet,
            "SEG1B_DASHBOARD_PORT": str(self.dashboard_port),
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )

    def up(self, *args: str, healthy: tuple[str, ...] = (), timeout: float = 900) -> tuple[int, str]:
        """``podman-compose up ARGS``, running the health checks of the containers it starts
        meanwhile (so a dependency waiting for ``service_healthy`` gets it), until it returns;
        its exit status and output. ``healthy``: containers whose check must have passed."""
        log = self.folder / f"up-{time.monotonic_ns()}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([*self.command, "up", *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)
        passed: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None or not passed >= set(healthy):
                assert time.monotonic() < deadline, f"up did not finish in {timeout:g} s:\n{log.read_text()[-4000:]}"
                for name in self.containers():
                    if name not in passed and podman("healthcheck", "run", name, check=False).returncode == 0:
                        passed.add(name)
                if proc.poll() is not None and not set(healthy) <= set(self.containers()) | passed:
                    raise AssertionError(f"never healthy: {set(healthy) - passed}:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        return proc.returncode, log.read_text() + self.states()

    def states(self) -> str:
        """Each of the project's containers: its state and exit code, then its last lines (for failures)."""
        fmt = "{{.Names}} {{.State.Status}} exit={{.State.ExitCode}}"
        names = podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}", "--format", "{{.Names}}"
        )
        out = []
        for name in names.stdout.split():
            tail = subprocess.run(["podman", "logs", "--tail", "5", name], capture_output=True, text=True, check=False)
            out.append(podman("inspect", name, "--format", fmt, check=False).stdout + tail.stdout + tail.stderr)
        return "\n--- containers ---\n" + "\n".join(out)

    def containers(self) -> list[str]:
        listed = podman("ps", "--filter", f"label=io.podman.compose.project={self.project}", "--format", "{{.Names}}")
        return listed.stdout.split()

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def volume(self) -> Path:
        return Path(podman("volume", "inspect", f"{self.project}_runs", "--format", "{{.Mountpoint}}").stdout.strip())

    def pack(self) -> Path:
        (pack,) = (self.volume() / "certification" / "certification").iterdir()
        return pack

    @staticmethod
    def address_of(container: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return podman("inspect", container, "--format", fmt).stdout.strip()

    def address(self, service: str, index: int = 1) -> str:
        return self.address_of(self.container(service, index))

    def logs(self, service: str, index: int = 1) -> str:
        """What the container printed, stdout and stderr in order."""
        command = ["podman", "logs", self.container(service, index)]
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False).stdout

    def running(self, container: str) -> bool:
        return podman("inspect", container, "--format", "{{.State.Running}}").stdout.strip() == "true"

    def healthy(self, container: str, timeout: float = 120) -> None:
        """The container's own health check, run by podman until it passes."""
        deadline = time.monotonic() + timeout
        while podman("healthcheck", "run", container, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{container} never became healthy:\n{podman('logs', container).stdout}"
            time.sleep(1)

    def client(self, certs: Path | None = None, timeout: float = 10) -> Any:
        """A Dask client of the stack's scheduler, presenting the job's certificate from
        ``certs`` (the stack's own by default)."""
        from distributed import Client

        return Client(
            f"tls://{self.address('scheduler')}:8786", security=job_security(certs or self.certs), timeout=timeout
        )

    def down(self) -> None:
        self.compose("down", "-v", "-t", "1")
        for kind, name in (("network", f"{self.project}_default"), ("volume", f"{self.project}_runs")):
            podman(kind, "rm", "-f", name, check=False)


def job_security(certs: Path) -> Any:
    from distributed.security import Security

    return Security(
        tls_ca_file=str(certs / "ca.pem"),
        tls_client_cert=str(certs / "job.pem"),
        tls_client_key=str(certs / "job-key.pem"),
        require_encryption=True,
    )


@contextlib.contextmanager
def stack(name: str, number: int, certs: Path, folder: Path, overrides: list[Path] | None = None) -> Iterator[Stack]:
    """A stack that is taken down (containers, volume, network) however the test ends."""
    folder.mkdir(parents=True, exist_ok=True)
    the_stack = Stack(f"{TAG}{name}", f"10.{89 + number}.{os.getpid() % 200 + 20}.0/24", certs, folder, overrides or [])
    try:
        yield the_stack
    finally:
        the_stack.down()


if __name__ == "__main__":  # BackgroundBuild's process: python podman_stack.py RESULT.json
    target = Path(sys.argv[1])
    try:
        size, seconds = build_image()
        outcome: dict[str, Any] = {"size": size, "seconds": seconds}
    except BaseException as exc:  # the waiting test reports it
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    target.with_suffix(".tmp").write_text(json.dumps(outcome))
    target.with_suffix(".tmp").replace(target)
