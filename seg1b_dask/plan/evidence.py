"""The evidence the remediation plan is judged on (``plan``, ``closure``): what the run
root holds, each record read once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

from seg1b_dask.grading import checkpoints
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.discipline import read_json, read_optional
from seg1b_dask.io.hashing import FLAG_NAME, read_flag
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.plan.phases import PHASES
from seg1b_dask.policies.bundle import load_bundle

RUN_NEEDS = ("states", "policies", "policy_digests", "package", "policy_bundle")


def is_locked(record: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """A lock record in force (records written before reopening existed are in force)."""
    return record is not None and record.get("state", "locked") == "locked"


class Evidence:
    """What the run root holds, read once: pins, runs, scorecards, checkpoints, locks, packs."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = Path(root).resolve()
        self.rr = RunRoot(self.root)
        self.seed = seed
        self.locks = {p: read_json(self.rr.lock_record(p)) for p in PHASES if self.rr.lock_record(p).is_file()}
        self._meta: dict[str, dict[str, Any] | None] = {}
        self._pins: dict[int, dict[str, Any] | None] = {}
        self._cards: dict[str, dict[str, Any] | None] = {}
        self._profiles: dict[str, dict[str, checkpoints.Profile] | None] = {}

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def pin_key(self, seed: int) -> discipline.PinKey | None:
        """P0's pin: the seed's baseline on the shipped grid (the plan keeps it) over the
        seed's stand-in (None before the stand-in is written)."""
        standin = self.rr.upstream(seed)
        if not (standin / FLAG_NAME).is_file():
            return None
        from seg1b_dask.chain.runner import BASELINE_POLICIES

        grid = load_bundle(BASELINE_POLICIES, refdata_version()).grid.resolution_arcsec
        return discipline.PinKey(seed, grid, read_flag(standin))

    def pin(self, seed: int) -> dict[str, Any] | None:
        if seed not in self._pins:
            key = self.pin_key(seed)
            self._pins[seed] = discipline.baseline_pointer(self.root, key) if key else None
        return self._pins[seed]

    def run_pin(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The pin a run is graded against (its seed, grid and 1A bundle)."""
        return discipline.baseline_of_run(self.root, meta)

    def meta(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._meta:
            folder = self.rr.run(run_id)
            found = (packs.run_json(folder)).is_file()
            self._meta[run_id] = discipline.load_run(folder, needs=RUN_NEEDS) if found else None
        return self._meta[run_id]

    def baseline_meta(self, seed: int) -> dict[str, Any] | None:
        pin = self.pin(seed)
        return self.meta(pin["run_id"]) if pin else None

    def card(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._cards:
            self._cards[run_id] = read_optional(packs.scorecard_json(self.rr.run(run_id)))
        return self._cards[run_id]

    def profiles(self, run_id: str) -> dict[str, checkpoints.Profile] | None:
        if run_id not in self._profiles:
            self._profiles[run_id] = checkpoints.read(self.rr.run(run_id))
        return self._profiles[run_id]

    def locked(self, phase: str) -> dict[str, Any] | None:
        lock = self.locks.get(phase)
        return lock if is_locked(lock) else None

    def frozen_pack(self) -> Path | None:
        last = discipline.get_pointer(self.root, "last_good") or {}
        pack = self.rr.certification / str(last.get("pack_id", ""))
        return pack if last.get("frozen") and (packs.pack_json(pack)).is_file() else None

    def run_of_seed(self, run_ids: list[str]) -> str | None:
        return next((r for r in run_ids if (m := self.meta(r)) is not None and m["seed"] == self.seed), None)

    def candidate(self) -> str | None:
        """The current candidate run of this seed (a promoted pack's run of the seed)."""
        pointer = discipline.get_pointer(self.root, "current_candidate") or {}
        return self.run_of_seed([pointer["run_id"]] if "run_id" in pointer else list(pointer.get("run_ids", [])))

    def repro(self, run_id: str) -> dict[str, Any] | None:
        path = self.rr.repro_record(run_id)
        return read_optional(path)
