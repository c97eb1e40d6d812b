"""Shared fixtures: the 1A stand-in, policy bundles with overrides, the scheduler matrix,
hypothesis profiles, and seed 42's run roots built once per session.

The session run roots are read-only: a test that reads one uses it as it is; a test that
changes anything works on ``copy_root(...)`` of it in its own folder. The files lose their
write bits, and after every test that used a root its listing (paths, modes, sizes, mtimes)
is compared with the one taken when it was built, so a write fails the test that made it
even as root (whom the mode bits do not stop)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import shutil
import signal
import stat
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from seg1b_dask.chain.runner import BASELINE_POLICIES, BUNDLES, DEFAULT_POLICIES, RunResult, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.upstream import write_bundle
from seg1b_dask.lanes.fast import fast_lane
from seg1b_dask.lanes.score import Scored, score_run

# -- hypothesis ----------------------------------------------------------------------------
# "ci" (the default): the same examples on every run, no example database;
# "dev": ten times the examples, random, failures replayed from an example database.
# Choose with HYPOTHESIS_PROFILE=dev. Hypothesis keeps its files (the dev database, its
# cache of the constants in the code under test) in the user's cache folder, never in the
# working folder.
HYPOTHESIS_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seg1b_dask" / "hypothesis"
set_hypothesis_home_dir(HYPOTHESIS_HOME)
CI_EXAMPLES = 100
settings.register_profile(
    "ci", derandomize=True, max_examples=CI_EXAMPLES, deadline=None, database=None, print_blob=True
)
settings.register_profile(
    "dev",
    max_examples=10 * CI_EXAMPLES,
    deadline=None,
    database=DirectoryBasedExampleDatabase(HYPOTHESIS_HOME / "examples"),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """A test's example budget: ``n`` under the CI profile, scaled with the loaded profile's."""
    return max(1, n * settings.default.max_examples // CI_EXAMPLES)


# -- order -------------------------------------------------------------------------------


CONTAINERS_AFTER = 2  # slow files that run before the container file, while its image builds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the files with slow tests, then the rest, so that the short files fill
    the processes' ends instead of the suite waiting on a long file started last (addopts
    has --no-loadscope-reorder, which keeps this order). The container file (about five
    minutes; --dist loadfile keeps a file in one process) comes after the first slow files:
    its image builds in the background meanwhile (``image_build``)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a file's items stay together
    containers = [item for item in items if item.get_closest_marker("containers")]
    rest = [item for item in items if not item.get_closest_marker("containers")]
    first = list(dict.fromkeys(item.path for item in rest))[:CONTAINERS_AFTER]
    cut = sum(item.path in first for item in rest)
    items[:] = rest[:cut] + containers + rest[cut:]


def session_folder(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every process of this test session (pytest-xdist's workers too)."""
    base = factory.getbasetemp()
    folder = (base.parent if hasattr(config, "workerinput") else base) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def image_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """When the session holds container tests and podman is ready: the image's build, started
    in the background by the first process to run a test, waited for by the container file."""
    if not any(item.get_closest_marker("containers") for item in request.session.items):
        yield None
        return
    from podman_stack import BackgroundBuild, unavailable

    if unavailable():
        yield None
        return
    folder = session_folder(request.config, tmp_path_factory)
    build = BackgroundBuild(folder)
    with FileLock(folder / "build.lock"):
        started = folder / "build.started"
        if not started.exists():
            started.touch()
            build.start()
    try:
        yield build
    finally:
        build.stop()


# -- the 1A stand-in ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle42(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine 1A stand-in bundle for seed 42 (copy it before tampering)."""
    out = tmp_path_factory.mktemp("upstream") / "seed=42"
    write_bundle(42, out)
    return out


@pytest.fixture
def bundle_copy(bundle42: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle42, target)
    return target


# -- policy bundles ----------------------------------------------------------------------

MakeBundle = Callable[..., Path]


def _merge(data: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def patch_yaml(path: Path, patch: dict[str, Any]) -> None:
    """Merge ``patch`` into the YAML file at ``path`` (nested mappings key by key)."""
    data = yaml.safe_load(path.read_text())
    _merge(data, patch)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def bundle_maker(folder: Path) -> MakeBundle:
    """``make("baseline", s4_alloc_plan={"tile_allocation": {"tie_break": "keyed"}}, gates={...})``:
    a copy of a policy bundle (a shipped one by name, or any bundle folder) with its own
    gates.yaml under ``folder``, in a folder called ``name`` (default: the source's). A mapping
    is merged into that file's YAML; a path replaces the file whole
    (``s2_tile_weights=BUNDLES / "remediation" / "s2_tile_weights.yaml"``). The source files
    are never touched."""
    counter = itertools.count()

    def make(base: str | Path = "baseline", name: str | None = None, **overrides: dict[str, Any] | Path) -> Path:
        source = BUNDLES / base if isinstance(base, str) else Path(base)
        gates = source.parent / "gates.yaml"
        target = folder / f"bundle-{next(counter)}" / (name or source.name)
        shutil.copytree(source, target)
        shutil.copy(gates if gates.is_file() else BUNDLES / "gates.yaml", target.parent / "gates.yaml")
        for name, override in overrides.items():
            path = target.parent / "gates.yaml" if name == "gates" else target / f"{name}.yaml"
            assert path.is_file(), f"no policy file {path.name} in {source}"
            if isinstance(override, Path):
                shutil.copy(override, path)
            else:
                patch_yaml(path, override)
        return target

    return make


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """A bundle maker (``bundle_maker``) writing into the test's own folder."""
    return bundle_maker(tmp_path)


@pytest.fixture
def policies_copy(make_bundle: MakeBundle) -> Path:
    return make_bundle("baseline")


# -- schedulers --------------------------------------------------------------------------

EXECUTIONS = {
    "threads-small-chunks": Execution(scheduler="threads", country_batch=5, sites_per_task=2_000, band_shards=1),
    "sync-big-chunks": Execution(scheduler="synchronous", country_batch=200, band_shards=4),
    "processes-2": Execution(scheduler="processes", workers=2, country_batch=7),
    "distributed-1": Execution(scheduler="distributed", workers=1, country_batch=11),
    "distributed-2": Execution(scheduler="distributed", workers=2, country_batch=3, band_shards=3),
}


@pytest.fixture(params=list(EXECUTIONS.values()), ids=list(EXECUTIONS))
def execution(request: pytest.FixtureRequest) -> Execution:
    """Every scheduler and task size the engine must give identical bytes on."""
    return request.param


# -- read-only run roots -----------------------------------------------------------------

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _entries(root: Path) -> Iterator[Path]:
    yield root
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(folder) / name


def _listing(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in _entries(root):
        st = path.lstat()
        out[path.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@dataclass
class ReadOnlyTree:
    """A folder whose write bits are off and whose listing must not change."""

    path: Path
    listing: dict[str, tuple[int, int, int]]

    def verify(self) -> None:
        now = _listing(self.path)
        changed = sorted(k for k in now.keys() | self.listing.keys() if now.get(k) != self.listing.get(k))
        assert not changed, f"a read-only run root was written to ({self.path}): {changed[:8]}"


_READ_ONLY: defaultdict[str, list[ReadOnlyTree]] = defaultdict(list)


def make_read_only(request: pytest.FixtureRequest, path: Path) -> Path:
    """Take the write bits off everything under ``path`` and check, after every test that
    uses the calling fixture, that nothing under it changed."""
    for entry in _entries(path):
        if not entry.is_symlink():
            entry.chmod(stat.S_IMODE(entry.lstat().st_mode) & ~WRITE_BITS)
    _READ_ONLY[request.fixturename].append(ReadOnlyTree(path, _listing(path)))
    return path


def copy_root(source: Path, target: Path) -> Path:
    """A writable copy of a run root (``source`` itself is never touched)."""
    shutil.copytree(source, target, symlinks=True)
    for entry in _entries(target):
        if not entry.is_symlink():
            entry.chmod(stat.S_IMODE(entry.lstat().st_mode) | stat.S_IWUSR)
    return target


@pytest.fixture(autouse=True)
def _signal_handlers_stay_as_found() -> Iterator[None]:
    """A test leaves SIGINT and SIGTERM as it found them (a child process inherits an ignored
    signal, so a leak changes what later tests' subprocesses do on Ctrl-C)."""
    watched = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in watched}
    yield
    assert {s: signal.getsignal(s) for s in watched} == before


@pytest.fixture(autouse=True)
def _read_only_roots_stay_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in request.fixturenames:
        for tree in _READ_ONLY.get(name, ()):
            tree.verify()


@dataclass(frozen=True)
class SharedRun:
    """A run in a read-only run root: ``root`` and the run's ``result`` (paths under ``root``)."""

    root: Path
    result: RunResult
    scored: Scored | None = None

    def copy(self, target: Path) -> SharedRun:
        """The same run in a writable copy of its root at ``target``."""
        copy_root(self.root, target)
        return SharedRun(target, relocate(self.result, self.root, target), self.scored)


def relocate(result: RunResult, source: Path, target: Path) -> RunResult:
    """``result`` as seen in a copy of its run root."""
    return dataclasses.replace(
        result,
        run_dir=target / result.run_dir.relative_to(source),
        outputs={name: target / path.relative_to(source) for name, path in result.outputs.items()},
    )


def shared_run(
    request: pytest.FixtureRequest, factory: pytest.TempPathFactory, build: Callable[[Path], SharedRun]
) -> SharedRun:
    """A read-only run root built once per test session: under pytest-xdist, by whichever
    process asks first (the others wait on a file lock, then load what it left); each process
    checks after its own tests that nothing under the root changed."""
    name = request.fixturename
    if not hasattr(request.config, "workerinput"):  # one process
        return _read_only_run(request, build(factory.mktemp(name) / "root"))
    shared = session_folder(request.config, factory)
    done = shared / f"{name}.pickle"
    with FileLock(shared / f"{name}.lock"):
        if done.is_file():
            run: SharedRun = pickle.loads(done.read_bytes())
            return _read_only_run(request, run)
        shutil.rmtree(shared / name, ignore_errors=True)  # what a process that failed to build it left
        run = _read_only_run(request, build(shared / name / "root"))
        done.write_bytes(pickle.dumps(run))
    return run


def _read_only_run(request: pytest.FixtureRequest, run: SharedRun) -> SharedRun:
    make_read_only(request, run.root)
    return run


@pytest.fixture(scope="session")
def seed42_warm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """Seed 42's baseline run (threads) in a run root of its own, not scored nor pinned: the
    cached chain every later run of the baseline bundle reuses. Read-only."""

    def build(root: Path) -> SharedRun:
        return SharedRun(root, run_seed(root=root, seed=42, policies=BASELINE_POLICIES, execution=Execution()))

    return shared_run(request, tmp_path_factory, build)


@pytest.fixture(scope="session")
def seed42_pinned(
    request: pytest.FixtureRequest, seed42_warm: SharedRun, tmp_path_factory: pytest.TempPathFactory
) -> SharedRun:
    """The warm root with its baseline run scored and pinned as the seed's authority: what
    ``seg1b baseline --seed 42`` leaves in a fresh root. Read-only."""

    def build(root: Path) -> SharedRun:
        pinned = seed42_warm.copy(root)
        return dataclasses.replace(pinned, scored=score_run(root, pinned.result.run_dir, pin_as_baseline=True))

    return shared_run(request, tmp_path_factory, build)


@pytest.fixture(scope="session")
def seed42_green(
    request: pytest.FixtureRequest, seed42_pinned: SharedRun, tmp_path_factory: pytest.TempPathFactory
) -> SharedRun:
    """The pinned root plus the fast lane of the shipped (remediation) bundle: sealed at B+,
    GREEN_BPLUS beside its baseline, the current candidate. Read-only."""

    def build(root: Path) -> SharedRun:
        seed42_pinned.copy(root)
        result, scored = fast_lane(root, 42, DEFAULT_POLICIES, None, Execution())
        assert scored.grade.outcome == "GREEN_BPLUS" and scored.card["sealed"]
        return SharedRun(root, result, scored)

    return shared_run(request, tmp_path_factory, build)
