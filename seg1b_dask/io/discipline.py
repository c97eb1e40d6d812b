"""Run discipline (DESIGN §7): pointers, the pinned baseline authorities and pruning (phase
locks are ``plan``'s and ``closure``'s). Everything is a small JSON file under the run root;
nothing here touches data except ``prune``."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg1b_dask.errors import Code, InternalError, Seg1BError
from seg1b_dask.io import packs
from seg1b_dask.io.datasets import GATE_RECEIPT
from seg1b_dask.io.lineage import safe_join, stage_path, write_json
from seg1b_dask.io.runroot import RunRoot

POINTERS = ("current_candidate", "last_good")


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record of the run root; a damaged one is one coded line naming it."""
    try:
        payload = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise Seg1BError(Code.E_CORRUPT_FILE, f"not valid JSON ({exc})", file=path) from None
    if not isinstance(payload, dict):
        raise Seg1BError(Code.E_CORRUPT_FILE, "expected a JSON object", file=path)
    return payload


def utc_now() -> str:
    """The time records carry (pointers, locks, reproductions, freezes)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_optional(path: Path) -> dict[str, Any] | None:
    """A JSON record that may not exist yet."""
    return read_json(path) if path.is_file() else None


def run_dir(root: Path, run: str) -> Path:
    """A run folder by id or path, refusing anything outside the run root."""
    candidate = Path(run)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = RunRoot(Path(root)).run(run)
    path = safe_join(root, candidate.resolve())
    if not path.is_dir():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "no such run (neither a run id under the run root nor a folder)", key=run)
    if not (packs.run_json(path)).is_file():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "this folder holds no run.json", file=path)
    return path


def pack_dir(root: Path, ref: str) -> Path:
    """A certification pack by id or path, refusing anything outside the run root."""
    run_root = RunRoot(Path(root).resolve())
    candidate = Path(ref)
    folder = candidate.resolve() if candidate.is_absolute() or candidate.exists() else run_root.certification / ref
    folder = safe_join(run_root.path, folder)
    if folder not in run_root.packs():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "no certification pack by this id or folder", key=ref)
    return folder


RUN_KEYS = ("run_id", "seed", "parameter_hash", "manifest_fingerprint", "outputs")


def load_run(path: Path, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's receipt; one missing its keys (``RUN_KEYS`` and ``needs``) is a damaged
    record, one coded line."""
    meta = read_json(packs.run_json(path))
    missing = [k for k in (*RUN_KEYS, *needs) if k not in meta]
    if missing:
        raise Seg1BError(Code.E_CORRUPT_FILE, f"run.json lacks {', '.join(missing)}", file=packs.run_json(path))
    return meta


# -- baseline authority -------------------------------------------------------------


@dataclass(frozen=True)
class PinKey:
    """What a baseline shares with every run graded against it: the seed, the grid
    resolution and the 1A bundle (its flag). NN distances depend on all three, so a 30″ or
    another 1A's candidate is never graded against the 5′ stand-in's baseline."""

    seed: int
    grid_arcsec: int
    upstream_flag: str

    def path(self, root: Path) -> Path:
        return RunRoot(Path(root)).pin(self.seed, self.grid_arcsec, self.upstream_flag)

    def where(self) -> str:
        return f"{self.grid_arcsec}″ grid, 1A {self.upstream_flag[:16]}"

    def __str__(self) -> str:
        return f"seed {self.seed}, {self.where()}"


def run_pin_key(root: Path, meta: dict[str, Any]) -> PinKey:
    """The key of a run: its seed, the grid sealed with it, the 1A flag its S0 verified."""
    receipt = read_json(GATE_RECEIPT.path(safe_join(root, meta["outputs"]["s0_gate_receipt"])))
    grid = int(meta["policies"]["grid"]["resolution_arcsec"])
    return PinKey(int(meta["seed"]), grid, str(receipt["upstream_flag_sha256"]))


def baseline_pointer(root: Path, key: PinKey) -> dict[str, Any] | None:
    return read_optional(key.path(root))


def baseline_of_run(root: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The pinned baseline a run is graded against (None before one is pinned)."""
    return baseline_pointer(root, run_pin_key(root, meta))


def baseline_payload(root: Path, run: Path, nn_ratio: float) -> dict[str, Any]:
    """The pin ``pin_baseline`` would write, refused now if its key is pinned otherwise."""
    return _pin(root, run, nn_ratio, write=False)


def pin_baseline(root: Path, run: Path, nn_ratio: float) -> dict[str, Any]:
    """Pin a run as the baseline of its seed, grid and 1A bundle. A pin is never replaced."""
    return _pin(root, run, nn_ratio, write=True)


def _pin(root: Path, run: Path, nn_ratio: float, write: bool) -> dict[str, Any]:
    meta = load_run(run, needs=("policies",))
    key = run_pin_key(root, meta)
    path = key.path(root)
    payload = {
        "run_id": meta["run_id"],
        "seed": meta["seed"],
        "grid_arcsec": key.grid_arcsec,
        "upstream_flag": key.upstream_flag,
        "parameter_hash": meta["parameter_hash"],
        "manifest_fingerprint": meta["manifest_fingerprint"],
        "nn_ratio": nn_ratio,
    }
    existing = read_optional(path)
    if existing is None and write and _create_once(path, payload):
        return payload
    if existing is None and not write:
        return payload
    existing = read_optional(path) or {}
    if any(existing.get(k) != payload[k] for k in ("seed", "parameter_hash", "manifest_fingerprint")):
        raise Seg1BError(
            Code.E_BASELINE_PINNED,
            f"the baseline authority of {key} is pinned and refuses modification",
            file=path,
            key=f"seed={meta['seed']}",
        )
    return existing


def _create_once(path: Path, payload: dict[str, Any]) -> bool:
    """Write ``path`` only if it does not exist, atomically (a hard link cannot replace a
    file): of two runs pinning the same seed at once, exactly one wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_path(path)
    write_json(tmp, payload)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


# -- pointers -----------------------------------------------------------------------


def set_pointer(root: Path, name: str, payload: dict[str, Any]) -> None:
    if name not in POINTERS:
        raise InternalError(Code.E_INTERNAL, f"unknown pointer {name}")
    _write(RunRoot(Path(root)).pointer(name), dict(payload, set_at=utc_now()))


def get_pointer(root: Path, name: str) -> dict[str, Any] | None:
    return read_optional(RunRoot(Path(root)).pointer(name))


# -- prune --------------------------------------------------------------------------


def referenced_runs(root: Path) -> dict[str, list[str]]:
    """run_id -> the things that keep it (pointers, baseline authority, locks, packs)."""
    root = Path(root)
    refs: dict[str, list[str]] = {}

    def keep(run_id: str | None, why: str) -> None:
        if run_id:
            refs.setdefault(run_id, []).append(why)

    for path in RunRoot(root).pin_files():
        keep(read_json(path)["run_id"], path.relative_to(root).as_posix())
    for name in POINTERS:
        pointer = get_pointer(root, name) or {}
        keep(pointer.get("run_id"), name)
        for run_id in pointer.get("run_ids", []):
            keep(run_id, name)
    for path in sorted(RunRoot(root).locks.glob("*.json")):
        lock = read_json(path)
        keep(lock["run_id"], f"locks/{path.name}")
        for entry in lock.get("reopened", []):  # the evidence a reopen was decided on
            keep(entry.get("evidence_run"), f"locks/{path.name} (reopen evidence)")
        for earlier in lock.get("previous", []):
            keep(earlier.get("run_id"), f"locks/{path.name} (earlier lock)")
    for folder in RunRoot(root).packs():
        pack = read_json(packs.pack_json(folder))
        for run_id in pack["run_ids"] + pack.get("baseline_run_ids", []):
            keep(run_id, f"certification/{folder.name}")
    return refs


def prune(root: Path, dry_run: bool = False) -> dict[str, Any]:
    """Remove every run folder nothing references, then the data partitions and cache
    entries only those runs used, and the staging leftovers of killed processes. Pinned,
    pointed-to, locked and packed runs stay. Refused while any run is in flight."""
    run_root = RunRoot.open(root)
    with run_root.exclusive():
        return prune_held(run_root, dry_run)


def prune_held(run_root: RunRoot, dry_run: bool) -> dict[str, Any]:
    """``prune`` for a caller already holding the run root alone (``seg1b freeze``)."""
    leftovers = run_root.stale_staging()
    report = _prune(run_root.path, dry_run)
    if not dry_run:
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    report["removed_staging"] = [p.relative_to(run_root.path).as_posix() for p in leftovers]
    return report


def _prune(root: Path, dry_run: bool) -> dict[str, Any]:
    refs = referenced_runs(root)
    runs = RunRoot(root).run_folders()
    removed = [p.name for p in runs if p.name not in refs]
    kept = {p.name: refs[p.name] for p in runs if p.name in refs}
    in_use: set[str] = set()
    for p in runs:
        if p.name in refs:
            in_use.update(load_run(p)["outputs"].values())
    # Certification packs and the current cache entries of kept runs stay usable.
    stale: list[Path] = []
    data = root / "data"
    for manifest in sorted(data.rglob("_manifest.json")) if data.exists() else []:
        rel = manifest.parent.relative_to(root).as_posix()
        if rel not in in_use and any(
            rel == v for p in runs if p.name in removed for v in load_run(p)["outputs"].values()
        ):
            stale.append(manifest.parent)
    if not dry_run:
        for name in removed:
            shutil.rmtree(RunRoot(root).run(name))
        stale_rel = {s.relative_to(data).as_posix() for s in stale}
        for s in stale:
            shutil.rmtree(s)
        for index in sorted((root / "cache").rglob("*.json")) if (root / "cache").exists() else []:
            try:
                used = set(read_json(index).get("datasets", {}).values())
            except Seg1BError:  # a damaged entry is only a lost shortcut
                used = stale_rel
            if used & stale_rel:
                index.unlink()
    return {
        "removed_runs": removed,
        "kept_runs": kept,
        "removed_datasets": [s.relative_to(root).as_posix() for s in stale],
        "dry_run": dry_run,
    }
