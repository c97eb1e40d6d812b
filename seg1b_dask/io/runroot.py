"""The run root: one object owns its layout, its lock and the stage → seal → commit cycle.

Layout (every path below the root is built here and nowhere else)::

    data/<dataset>/<tokens…>/     published datasets, each with _manifest.json
    cache/<state>/<key>.json      which published datasets a state's cache key produced
    cache/bounds/<key>.json       each grade's least relocation for one 1A posture and country table
    runs/<run_id>/run.json        one receipt per run (and its scorecard/ and report)
    upstream/1A/seed=<n>/         the 1A stand-in bundles the engine wrote itself
    upstream/1A/scale=<N>/seed=<n>/  … and at about N outlets (``--scale``)
    baseline_authority/seed=<n>/grid=<arcsec>/upstream=<flag prefix>.json
                                  the pinned baseline of a seed, per grid and 1A bundle
    current_candidate/ last_good/ pointers
    locks/                        phase locks
    certification/<pack>/         certification packs
    .seg1b.lock                   the run-root lock (runs share it, prune holds it alone)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from filelock import ReadWriteLock, Timeout

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.lineage import safe_join, seal_and_commit, stage_path

P = ParamSpec("P")
R = TypeVar("R")
RUN_WAIT_SECONDS = 120.0  # a run waits this long for a prune to finish
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class RunRoot:
    path: Path

    @classmethod
    def open(cls, path: Path | str) -> RunRoot:
        """The run root at ``path``, created if missing; refused if it is a file or not writable."""
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise Seg1BError(Code.E_ROOT_UNWRITABLE, "the run root is a file, not a folder", file=root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            _probe_publishing(root)
        except OSError as exc:
            raise environment_error(exc, root) from None
        return cls(root)

    # -- layout ----------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def certification(self) -> Path:
        return self.path / "certification"

    @property
    def locks(self) -> Path:
        return self.path / "locks"

    @property
    def pins(self) -> Path:
        return self.path / "baseline_authority"

    def pin(self, seed: int, grid_arcsec: int, upstream_flag: str) -> Path:
        """A baseline pin: NN distances depend on the seed, the cell size and the sites 1A
        gives, so a pin is per seed, grid resolution and 1A bundle (the first 16 hex of its flag)."""
        return self.pins / f"seed={seed}" / f"grid={grid_arcsec}" / f"upstream={upstream_flag[:16]}.json"

    def pin_files(self) -> list[Path]:
        """Every pin record, in path order (a staged one is named ``….json.tmp-…``)."""
        return sorted(self.pins.rglob("*.json")) if self.pins.is_dir() else []

    def pointer(self, name: str) -> Path:
        return self.path / name / "pointer.json"

    def lock_record(self, phase: str) -> Path:
        return self.locks / f"{phase}.json"

    @property
    def reports(self) -> Path:
        return self.path / "reports"

    def repro_record(self, run_id: str) -> Path:
        """The record of ``lock``'s from-scratch reproduction of a run."""
        return self.reports / f"repro-{run_id}.json"

    def freeze_record(self, pack_id: str) -> Path:
        return self.reports / f"freeze-{pack_id}.json"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    def run_folders(self) -> list[Path]:
        """Every published run folder (a staged one has no ``run.json`` yet), in id order."""
        return sorted(p.parent for p in self.runs.glob("*/run.json")) if self.runs.is_dir() else []

    def packs(self) -> list[Path]:
        """Every published certification pack, in id (time) order; staging folders excluded."""
        if not self.certification.is_dir():
            return []
        return sorted(p.parent for p in self.certification.glob("*/pack.json") if TMP_MARK not in p.parent.name)

    def upstream(self, seed: int, scale: int | None = None) -> Path:
        """The 1A stand-in of ``seed`` (at about ``scale`` outlets when given)."""
        base = self.standins
        return base / f"seed={seed}" if scale is None else base / f"scale={scale}" / f"seed={seed}"

    @property
    def standins(self) -> Path:
        return self.path / "upstream" / "1A"

    def holds_standin(self, folder: Path) -> bool:
        """Whether ``folder`` is one of this root's 1A stand-ins (which seg1b wrote)."""
        return Path(folder).resolve().is_relative_to(self.standins.resolve())

    def dataset(self, name: str, tokens: dict[str, object]) -> Path:
        """``data/<name>/<token>=<value>/…``: the path says what the manifest says."""
        return safe_join(self.data, "/".join([name, *(f"{k}={v}" for k, v in tokens.items())]))

    def cache_entry(self, state_id: str, key: str) -> Path:
        return self.cache / state_id / f"{key}.json"

    def bounds_entry(self, key: str) -> Path:
        """Each grade's least relocation for one 1A posture and country table (``feasibility.price``)."""
        return self.cache / "bounds" / f"{key}.json"

    # -- the lock ----------------------------------------------------------------------
    def _lock(self) -> ReadWriteLock:
        return ReadWriteLock(self.path / ".seg1b.lock", is_singleton=False)

    @contextlib.contextmanager
    def _held(self, mode: str, wait: float, busy: str) -> Iterator[None]:
        try:
            lock = ReadWriteLock(self.path / ".seg1b.lock", is_singleton=False)
            hold = lock.read_lock(timeout=wait) if mode == "read" else lock.write_lock(timeout=wait)
            hold.__enter__()
        except Timeout:
            raise Seg1BError(Code.E_ROOT_BUSY, busy, file=self.path) from None
        except sqlite3.Error as exc:
            raise Seg1BError(
                Code.E_ROOT_UNWRITABLE, f"the run-root lock cannot be used ({exc})", file=self.path / ".seg1b.lock"
            ) from None
        try:
            yield
        finally:
            hold.__exit__(None, None, None)
            lock.close()

    def shared(self, wait: float = RUN_WAIT_SECONDS) -> contextlib.AbstractContextManager[None]:
        """Held by every run and certification: any number at once, never during a prune."""
        return self._held("read", wait, f"a prune holds the run root (waited {wait:.0f} s)")

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by prune: refused at once while any run is in flight."""
        return self._held("write", 0, "a run is in flight under this run root; prune when it has finished")

    # -- staging -----------------------------------------------------------------------
    @contextlib.contextmanager
    def staged(self, final: Path, dataset: str, tokens: dict[str, object]) -> Iterator[Path]:
        """Stage a dataset in a temporary sibling; on success seal it with its manifest and
        rename it into place, on any failure (or Ctrl-C) remove it."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = stage_path(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seal_and_commit(tmp, final, dataset, tokens)

    def stale_staging(self) -> list[Path]:
        """Temporary folders and files a killed process left behind, anywhere in the root
        (only meaningful under ``exclusive()``: then no writer is alive)."""
        found = [p for p in self.path.rglob(f"*{TMP_MARK}*") if TMP_MARK in p.name]
        return sorted(p for p in found if not any(TMP_MARK in q.name for q in p.parents))


def _probe_publishing(root: Path) -> None:
    """Write-once publishing needs what POSIX gives within one filesystem: a folder renamed
    whole, and hard links (pins are created by ``link``, which never replaces a file).
    Object storage mounted through FUSE lacks them; say so before any work is done."""
    probe = stage_path(root / ".probe")
    renamed = probe.with_name(probe.name + "-renamed")
    for leftover in (probe, renamed):  # a killed process with this host, pid and thread left it
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        probe.mkdir()
        (probe / "a").write_bytes(b"")
        for step in ("rename", "link"):
            try:
                if step == "rename":
                    os.rename(probe, renamed)
                else:
                    os.link(renamed / "a", renamed / "b")
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
                    raise
                raise Seg1BError(
                    Code.E_ROOT_UNSUPPORTED,
                    f"this filesystem cannot {step} ({exc.strerror}): the run root must be a POSIX filesystem "
                    "(local disk, NFSv4, CephFS, Lustre, GPFS); see cluster/README.md",
                    file=root,
                ) from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)
        shutil.rmtree(renamed, ignore_errors=True)


def check_shared(client: Any, root: Path) -> None:
    """Every worker of a cluster writes its tasks' outputs under the run root, by the paths
    the driver gives it: each must see the same filesystem at the same path. A worker that
    does not (a volume not mounted, or mounted elsewhere) is named before any work starts."""
    token = uuid.uuid4().hex
    probe = stage_path(root / ".shared-probe")
    probe.write_text(token)
    try:
        seen = client.run(_reads, str(probe))
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(worker for worker, text in seen.items() if text != token)
    if blind:
        raise Seg1BError(
            Code.E_ROOT_NOT_SHARED,
            f"{len(blind)} of {len(seen)} Dask workers do not see the run root: mount the same shared "
            "filesystem at the same path on every worker and on the job",
            file=root,
            key=", ".join(blind),
        )


def _reads(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def shared_root(fn: Callable[Concatenate[Path, P], R]) -> Callable[Concatenate[Path, P], R]:
    """Run ``fn(root, …)`` holding the run root's shared lock (``root`` resolved)."""

    @functools.wraps(fn)
    def wrapper(root: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        run_root = RunRoot.open(root)
        with run_root.shared():
            return fn(run_root.path, *args, **kwargs)

    return wrapper


def publish_folder(tmp: Path, parent: Path, stem: str, finish: Callable[[Path], object]) -> Path:
    """Rename the staged folder ``tmp`` to the first free name of ``parent/stem``, ``stem-2``…
    (run folders, certification packs); ``finish(final)`` first writes into ``tmp`` what
    depends on the name. A rename never replaces a folder with content: of two writers
    racing for a name, one takes it and the other moves on to the next."""
    for n in range(1, 10_000):
        final = parent / (stem if n == 1 else f"{stem}-{n}")
        if final.exists():
            continue
        finish(final)
        try:
            os.rename(tmp, final)
            return final
        except OSError:
            if not final.exists():
                raise
    raise Seg1BError(Code.E_INTERNAL, f"no free name for {stem} in {parent}")


def environment_error(exc: OSError, path: Path | None = None) -> Seg1BError:
    """An OSError from the disk or the network, as one coded line naming the path."""
    if type(exc).__module__.startswith("distributed"):  # CommClosedError and kin
        return Seg1BError(Code.E_SCHEDULER_UNREACHABLE, f"lost the Dask cluster ({type(exc).__name__}: {exc})")
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return Seg1BError(Code.E_DISK_FULL, "no space left on the device", file=exc.filename or path)
    if exc.errno == errno.ENOENT:
        return Seg1BError(Code.E_CORRUPT_FILE, "a file is missing", file=exc.filename or path)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Seg1BError(Code.E_ROOT_UNWRITABLE, f"cannot write: {exc.strerror}", file=exc.filename or path)
    return Seg1BError(Code.E_IO, f"{exc.strerror or exc}", file=exc.filename or path)
