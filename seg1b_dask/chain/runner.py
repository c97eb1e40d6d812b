"""Run the S0-S9 chain for one seed: verify, derive tokens, reuse what the cache already
holds (by content key), compute the rest on Dask, publish atomically, and report."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from seg1b_dask import __version__
from seg1b_dask.chain.registry import DATASETS, STATES, WRITER, StateSpec, state_code_digest
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import GateResult, StateContext
from seg1b_dask.engine.execution import Execution, executing
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import checkpoints
from seg1b_dask.grading.scoring import read_scorecard
from seg1b_dask.io import packs
from seg1b_dask.io.hashing import FLAG_NAME, canonical_json, sha256_hex, tree_digest
from seg1b_dask.io.lineage import MANIFEST, Tokens, read_manifest, republish, safe_join, stage_path, write_json
from seg1b_dask.io.package import BUNDLES, PACKAGE_DIR, files_digest
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot, environment_error, publish_folder
from seg1b_dask.io.upstream import write_bundle
from seg1b_dask.policies.bundle import PolicyBundle, load_bundle
from seg1b_dask.states import s0_gate

DEFAULT_POLICIES = BUNDLES / "remediation"
BASELINE_POLICIES = BUNDLES / "baseline"
DEFAULT_ROOT = Path("runs/fix-data-engine/segment_1B")


@cache
def code_digest() -> str:
    """Digest of the whole engine's source, sealed into every run's manifest_fingerprint
    (cache keys use each state's own code digest instead)."""
    return files_digest(list(PACKAGE_DIR.rglob("*.py")))


@dataclass
class StateRecord:
    id: str
    name: str
    seconds: float
    reused: bool
    stats: dict[str, Any]
    note: str = ""  # e.g. a cache entry that failed verification and was recomputed


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    seed: int
    tokens: Tokens
    states: list[StateRecord] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def validation(self) -> dict[str, Any]:
        return next(s.stats for s in self.states if s.id == "S9")


def standin_damaged(exc: Seg1BError, folder: Path) -> Seg1BError:
    """``exc`` about a cached 1A stand-in: the same code and place, and what to do about it."""
    message = (
        f"{exc.message}: this is the seed's cached 1A stand-in, which seg1b wrote; "
        f"delete its folder {folder} and run again to regenerate it"
    )
    return Seg1BError(exc.code, message, file=exc.file, key=exc.key)


def ensure_standin(root: RunRoot, seed: int, scale: int | None = None) -> Path:
    """The 1A stand-in bundle for ``seed`` (about ``scale`` outlets when given) under the run
    root, written once. S0 verifies it on every run (``standin_damaged`` then names the folder
    whose deletion regenerates it); a folder left without its flag is refused here."""
    final = root.upstream(seed, scale)
    if (final / FLAG_NAME).is_file():
        return final
    if final.exists():
        missing = Seg1BError(Code.E_BUNDLE_FLAG_MISSING, "bundle has no _passed.flag", file=final / FLAG_NAME)
        raise standin_damaged(missing, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_bundle(seed, tmp, scale=scale)
        try:
            tmp.rename(final)
        except OSError:  # another process wrote the same bundle first
            if not (final / FLAG_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cache_keys(
    bundle: PolicyBundle,
    seed: int,
    upstream_flag: str,
    baseline_nn_ratio: float | None = None,
    manifest_fingerprint: str = "",
) -> dict[str, str]:
    """Each state's key chains the keys of the states whose datasets it reads (the graph of
    the registry) with its own code, policies and, for seeded states, the seed and the 1A
    bundle's flag (and the run's fingerprint for a state whose bytes carry it). A seed-free
    state's key is therefore the same for every seed: S1/S2 are built once per policy."""
    base = sha256_hex(canonical_json([refdata_version()]))
    keys: dict[str, str] = {}
    for spec in STATES:
        upstream_keys = sorted({keys[WRITER[name]] for name in spec.reads})
        parts: list[Any] = [base, spec.id, state_code_digest(spec.id), [bundle.digests[p] for p in spec.policies]]
        parts.append(upstream_keys)
        if spec.seeded:
            parts += [seed, upstream_flag]
        if spec.graded:
            parts.append(baseline_nn_ratio)
        if spec.seals_tokens:
            parts.append(manifest_fingerprint)
        keys[spec.id] = sha256_hex(canonical_json(parts))
    return keys


def peak_rss_mb() -> float:
    """Peak resident memory of this process or its largest child, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _intact(folder: Path) -> str | None:
    """None if a published dataset's bytes still match its manifest, else what is wrong."""
    if not (folder / MANIFEST).is_file():
        return "missing"
    try:
        sealed = read_manifest(folder)["content_sha256"]
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest"
    return None if tree_digest(folder, exclude=frozenset({MANIFEST})) == sealed else "bytes differ from the manifest"


class Chain:
    """One seed's run of the chain under a run root."""

    def __init__(
        self,
        root: RunRoot,
        seed: int,
        bundle: PolicyBundle,
        upstream: Path,
        execution: Execution,
        baseline_nn_ratio: float | None = None,
    ) -> None:
        self.root = root
        self.seed = seed
        self.bundle = bundle
        self.upstream = upstream
        self.execution = execution
        self.grid = Grid(bundle.grid.resolution_arcsec)
        # Only a bundle that targets a grade grades contraction against the pinned baseline.
        self.baseline_nn_ratio = baseline_nn_ratio if bundle.s9_validation.target_grade != "none" else None
        self.published: dict[str, Path] = {}

    def _tokens(self, dataset: str, tokens: Tokens) -> dict[str, object]:
        """A dataset's tokens. Seed-free datasets also carry their state's code digest: new
        code writing new bytes is a new partition, never a conflict with the old one."""
        scoped = tokens.for_scope(DATASETS[dataset])
        if DATASETS[dataset] == "global":
            scoped["code"] = state_code_digest(WRITER[dataset])[:16]
        return scoped

    def _final(self, dataset: str, tokens: Tokens) -> Path:
        return self.root.dataset(dataset, self._tokens(dataset, tokens))

    def _from_cache(self, spec: StateSpec, key: str, tokens: Tokens) -> tuple[dict[str, Any] | None, str]:
        """Reuse a cached result after verifying every byte of it; a damaged entry is
        dropped (and its datasets removed) so the state recomputes."""
        index = self.root.cache_entry(spec.id, key)
        if not spec.cached or not index.is_file():
            return None, ""
        try:
            entry = json.loads(index.read_text())
            sources = {name: safe_join(self.root.data, rel) for name, rel in entry["datasets"].items()}
            stats = dict(entry["stats"])
        except (ValueError, KeyError, TypeError, AttributeError):
            index.unlink(missing_ok=True)
            return None, f"cache entry {index.name} was unreadable: recomputed"
        for name, source in sources.items():
            problem = _intact(source)
            if problem:
                index.unlink(missing_ok=True)
                shutil.rmtree(source, ignore_errors=True)
                final = self._final(name, tokens)
                if final.exists() and _intact(final):
                    shutil.rmtree(final, ignore_errors=True)
                return None, f"cached {name} failed verification ({problem}): recomputed"
        for name, source in sources.items():
            final = self._final(name, tokens)
            republish(source, final, name, self._tokens(name, tokens))
            self.published[name] = final
        return stats, ""

    def _compute(self, spec: StateSpec, key: str, tokens: Tokens, gate: GateResult) -> dict[str, Any]:
        finals = {name: self._final(name, tokens) for name in spec.writes}
        ctx = StateContext(
            tokens=tokens,
            policies=self.bundle,
            grid=self.grid,
            execution=self.execution,
            inputs={n: self.published[n] for n in spec.reads},
            upstream=self.upstream if spec.reads_upstream else None,
            gate=gate,
            baseline_nn_ratio=self.baseline_nn_ratio,
        )
        with contextlib.ExitStack() as stack:
            staged = {
                name: stack.enter_context(self.root.staged(final, name, self._tokens(name, tokens)))
                for name, final in finals.items()
            }
            stats = spec.run(ctx, staged)
        self.published.update(finals)
        if spec.cached:
            entry = {
                "datasets": {n: p.relative_to(self.root.data).as_posix() for n, p in finals.items()},
                "stats": stats,
            }
            index = self.root.cache_entry(spec.id, key)
            index.parent.mkdir(parents=True, exist_ok=True)
            write_json(index, entry)
        return stats

    def _run_states(
        self,
        specs: tuple[StateSpec, ...],
        keys: dict[str, str],
        tokens: Tokens,
        gate: GateResult,
        on_state: Callable[[str], None] | None,
    ) -> list[StateRecord]:
        records = []
        with executing(self.execution, self.root.path):
            for spec in specs:
                if on_state:
                    on_state(f"{spec.id} {spec.name}")
                t = time.perf_counter()
                stats, note = self._from_cache(spec, keys[spec.id], tokens)
                reused = stats is not None
                if stats is None:
                    stats = self._compute(spec, keys[spec.id], tokens, gate)
                records.append(StateRecord(spec.id, spec.name, time.perf_counter() - t, reused, stats, note))
        return records

    def run_global(self, on_state: Callable[[str], None] | None = None) -> list[StateRecord]:
        """Only the seed-free states (S1, S2): build the grid and weights once per policy."""
        tokens = Tokens(self.seed, self.bundle.parameter_hash, "")
        keys = cache_keys(self.bundle, self.seed, "")
        no_gate = GateResult("", "", [], 0)
        return self._run_states(tuple(s for s in STATES if not s.seeded), keys, tokens, no_gate, on_state)

    def run(self, on_state: Callable[[str], None] | None = None) -> tuple[Tokens, list[StateRecord]]:
        """Verify the 1A bundle (its flag and the sealed inputs give the run's tokens), then
        run every state of the registry in order."""
        t = time.perf_counter()
        try:
            gate = s0_gate.verify(
                self.upstream, self.seed, self.bundle.parameter_hash, code_digest(), self.baseline_nn_ratio
            )
        except Seg1BError as exc:
            if self.root.holds_standin(self.upstream):  # damaged since seg1b wrote it
                raise standin_damaged(exc, self.upstream) from None
            raise
        verify_seconds = time.perf_counter() - t
        tokens = Tokens(self.seed, self.bundle.parameter_hash, gate.manifest_fingerprint)
        keys = cache_keys(self.bundle, self.seed, gate.upstream_flag, self.baseline_nn_ratio, gate.manifest_fingerprint)
        records = self._run_states(STATES, keys, tokens, gate, on_state)
        records[0].seconds += verify_seconds  # S0's time includes verifying the 1A bundle
        return tokens, records


def run_seed(
    root: Path | RunRoot = DEFAULT_ROOT,
    seed: int = 42,
    policies: Path | PolicyBundle = DEFAULT_POLICIES,
    upstream: Path | None = None,
    execution: Execution = Execution(),
    on_state: Callable[[str], None] | None = None,
    baseline_nn_ratio: float | None = None,
) -> RunResult:
    """Run one seed under the run root's shared lock. Disk errors become one coded line;
    an interrupted run leaves no partial dataset and no run folder."""
    run_root = root if isinstance(root, RunRoot) else RunRoot.open(root)
    try:
        with run_root.shared():
            return _run_seed(run_root, seed, policies, upstream, execution, on_state, baseline_nn_ratio)
    except OSError as exc:
        raise environment_error(exc, run_root.path) from None


def _run_seed(
    root: RunRoot,
    seed: int,
    policies: Path | PolicyBundle,
    upstream: Path | None,
    execution: Execution,
    on_state: Callable[[str], None] | None,
    baseline_nn_ratio: float | None,
) -> RunResult:
    start = time.perf_counter()
    bundle = policies if isinstance(policies, PolicyBundle) else load_bundle(Path(policies), refdata_version())
    upstream_dir = Path(upstream) if upstream else ensure_standin(root, seed)
    chain = Chain(root, seed, bundle, upstream_dir, execution, baseline_nn_ratio)
    tokens, records = chain.run(on_state)
    missing = [name for name, path in chain.published.items() if not (path / MANIFEST).is_file()]
    if missing:
        raise Seg1BError(
            Code.E_CORRUPT_FILE, f"published datasets vanished during the run: {', '.join(missing)}", file=root.data
        )
    stem = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-s{seed}-{tokens.manifest_fingerprint[:8]}"
    outputs = dict(chain.published)
    wall, peak = round(time.perf_counter() - start, 3), round(peak_rss_mb(), 1)
    receipt = {
        "seed": seed,
        "parameter_hash": tokens.parameter_hash,
        "manifest_fingerprint": tokens.manifest_fingerprint,
        "policy_bundle": bundle.name,
        "policies": bundle.canonical(),
        "policy_digests": bundle.digests,
        "refdata_version": refdata_version(),
        "package": {"version": __version__, "code_digest": code_digest()},
        "upstream": str(upstream_dir),
        "execution": execution.as_dict(),
        "baseline_nn_ratio": chain.baseline_nn_ratio,
        "states": [
            {"id": r.id, "name": r.name, "seconds": round(r.seconds, 3), "reused": r.reused, "stats": r.stats}
            | ({"note": r.note} if r.note else {})
            for r in records
        ],
        "outputs": {k: str(v.relative_to(root.path)) for k, v in outputs.items()},
        "wall_seconds": wall,
        "peak_rss_mb": peak,
    }
    s4_stats = next(r.stats for r in records if r.id == "S4")
    card = read_scorecard(outputs["validation_bundle"])
    profiles = checkpoints.collect(outputs, s4_stats, card)
    run_dir = publish_run(
        root, stem, receipt, lambda folder: checkpoints.write(folder / checkpoints.FOLDER, profiles, card)
    )
    result = RunResult(run_dir.name, run_dir, seed, tokens, records, outputs, wall, peak)
    validation = result.validation
    if not validation["passed"]:
        raise Seg1BError(
            Code.E_VALIDATION_FAILED,
            f"S9 structural checks failed: {', '.join(validation['failed_checks'])} (run {result.run_id} is "
            "kept for diagnosis: `seg1b score` grades it RED)",
            file=result.outputs["validation_bundle"] / "checks.json",
        )
    return result


def publish_run(
    root: RunRoot, stem: str, receipt: dict[str, Any], write_more: Callable[[Path], None] | None = None
) -> Path:
    """Write ``run.json`` (and what ``write_more`` writes) in a staged folder and rename it
    to a free run id (``stem``, ``stem-2``…): a run folder exists whole or not at all."""
    root.runs.mkdir(parents=True, exist_ok=True)
    tmp = stage_path(root.runs / stem)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if write_more is not None:
            write_more(tmp)
        return publish_folder(
            tmp, root.runs, stem, lambda final: write_json(packs.run_json(tmp), {"run_id": final.name, **receipt})
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
