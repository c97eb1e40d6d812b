"""The run root: one object owns its layout, its lock and the stage → seal → commit cycle.

Layout (every path below the root is built here and nowhere else)::

    data/<dataset>/<tokens…>/     published datasets, each with _manifest.json
    cache/<state>/<key>.json      which published datasets a state's cache key produced
    runs/<run_id>/run.json        one receipt per run (and its scorecard/ and report)
    upstream/1A/seed=<n>/         the 1A stand-in bundles the engine wrote itself
    baseline_authority/           the pinned baseline of each seed
    current_candidate/ last_good/ pointers
    locks/                        phase locks
    certification/<pack>/         certification packs
    .seg1b.lock                   the run-root lock (runs share it, prune holds it alone)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import ReadWriteLock, Timeout

from .errors import Code, Seg1BError
from .lineage import Scope, Tokens, partition, safe_join, seal_and_commit, stage_dir

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
            probe = root / f".probe{TMP_MARK}{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
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

    def pin(self, seed: int) -> Path:
        return self.pins / f"seed={seed}.json"

    def pointer(self, name: str) -> Path:
        return self.path / name / "pointer.json"

    def lock_record(self, phase: str) -> Path:
        return self.locks / f"{phase}.json"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    def upstream(self, seed: int) -> Path:
        return self.path / "upstream" / "1A" / f"seed={seed}"

    def dataset(self, name: str, scope: Scope, tokens: Tokens) -> Path:
        return safe_join(self.data, partition(name, scope, tokens))

    def cache_entry(self, state_id: str, key: str) -> Path:
        return self.cache / state_id / f"{key}.json"

    # -- the lock ----------------------------------------------------------------------
    def _lock(self) -> ReadWriteLock:
        return ReadWriteLock(self.path / ".seg1b.lock", is_singleton=False)

    @contextlib.contextmanager
    def shared(self, wait: float = RUN_WAIT_SECONDS) -> Iterator[None]:
        """Held by every run and certification: any number at once, never during a prune."""
        lock = self._lock()
        try:
            with lock.read_lock(timeout=wait):
                yield
        except Timeout:
            raise Seg1BError(
                Code.E_ROOT_BUSY, f"a prune holds the run root (waited {wait:.0f} s)", file=self.path
            ) from None
        finally:
            lock.close()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by prune: refused at once while any run is in flight."""
        lock = self._lock()
        try:
            with lock.write_lock(timeout=0):
                yield
        except Timeout:
            raise Seg1BError(
                Code.E_ROOT_BUSY, "a run is in flight under this run root; prune when it has finished", file=self.path
            ) from None
        finally:
            lock.close()

    # -- staging -----------------------------------------------------------------------
    @contextlib.contextmanager
    def staged(self, final: Path, dataset: str, tokens: dict[str, object]) -> Iterator[Path]:
        """Stage a dataset in a temporary sibling; on success seal it with its manifest and
        rename it into place, on any failure (or Ctrl-C) remove it."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = stage_dir(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seal_and_commit(tmp, final, dataset, tokens)

    def stale_staging(self) -> list[Path]:
        """Temporary folders and files a killed process left behind."""
        found: list[Path] = []
        for top in (self.data, self.cache, self.runs, self.path / "upstream", self.path / "certification"):
            if top.exists():
                found.extend(p for p in top.rglob(f"*{TMP_MARK}*") if TMP_MARK in p.name)
        return sorted(set(found))


def environment_error(exc: OSError, path: Path) -> Seg1BError:
    """An OSError from the disk, as one coded line naming the path."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return Seg1BError(Code.E_DISK_FULL, "no space left on the device", file=exc.filename or path)
    if exc.errno == errno.ENOENT:
        return Seg1BError(Code.E_CORRUPT_FILE, "a file is missing", file=exc.filename or path)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Seg1BError(Code.E_ROOT_UNWRITABLE, f"cannot write: {exc.strerror}", file=exc.filename or path)
    return Seg1BError(Code.E_ROOT_UNWRITABLE, f"{exc.strerror or exc}", file=exc.filename or path)
