"""Run the S0-S9 chain for one seed: verify, derive tokens, reuse what the cache already
holds (by content key), compute the rest on Dask, publish atomically, and report."""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from . import __version__
from .context import StateContext
from .errors import E_VALIDATION_FAILED, Seg1BError
from .execution import Execution, executing
from .grid import Grid
from .hashing import FLAG_NAME, canonical_json, sha256_file, sha256_hex
from .lineage import (
    Tokens,
    new_folder,
    partition,
    publish,
    republish,
    safe_join,
    seal_and_commit,
    stage_dir,
    write_json,
)
from .policies import PolicyBundle, load_bundle
from .refdata import refdata_version
from .registry import DATASETS, STATES, StateSpec
from .states import s0_gate
from .upstream import write_bundle

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLES = PACKAGE_DIR / "bundles"
DEFAULT_POLICIES = BUNDLES / "remediation"
BASELINE_POLICIES = BUNDLES / "baseline"
DEFAULT_ROOT = Path("runs/fix-data-engine/segment_1B")


@cache
def code_digest() -> str:
    """Digest of the engine's source: cached results never outlive a code change."""
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    return sha256_hex(canonical_json([[p.relative_to(PACKAGE_DIR).as_posix(), sha256_file(p)] for p in files]))


@dataclass
class StateRecord:
    id: str
    name: str
    seconds: float
    reused: bool
    stats: dict[str, Any]


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


def ensure_standin(root: Path, seed: int) -> Path:
    """The 1A stand-in bundle for ``seed`` under the run root (written once)."""
    final = root / "upstream" / "1A" / f"seed={seed}"
    if (final / FLAG_NAME).is_file():
        return final
    tmp = stage_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)
    write_bundle(seed, tmp)
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    return final


def _cache_keys(
    bundle: PolicyBundle, seed: int, upstream_flag: str, baseline_nn_ratio: float | None = None
) -> dict[str, str]:
    prev = sha256_hex(canonical_json([code_digest(), refdata_version()]))
    keys = {}
    for spec in STATES[1:]:
        parts: list[Any] = [prev, spec.id, [bundle.digests[p] for p in spec.policies]]
        if spec.seeded:
            parts += [seed, upstream_flag]
        if spec.graded:
            parts.append(baseline_nn_ratio)
        keys[spec.id] = prev = sha256_hex(canonical_json(parts))
    return keys


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


class Chain:
    """One seed's run of the chain under a run root."""

    def __init__(
        self,
        root: Path,
        seed: int,
        bundle: PolicyBundle,
        upstream: Path,
        execution: Execution,
        baseline_nn_ratio: float | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.seed = seed
        self.bundle = bundle
        self.upstream = upstream
        self.execution = execution
        self.grid = Grid(bundle.grid.resolution_arcsec)
        # Only a bundle that targets a grade grades contraction against the pinned baseline.
        self.baseline_nn_ratio = baseline_nn_ratio if bundle.s9_validation.target_grade != "none" else None
        self.published: dict[str, Path] = {}

    def _final(self, dataset: str, tokens: Tokens) -> Path:
        return safe_join(self.data, partition(dataset, DATASETS[dataset], tokens))

    def _from_cache(self, spec: StateSpec, key: str, tokens: Tokens) -> dict[str, Any] | None:
        index = self.root / "cache" / spec.id / f"{key}.json"
        if not index.is_file():
            return None
        entry = json.loads(index.read_text())
        sources = {name: self.data / rel for name, rel in entry["datasets"].items()}
        if not all((p / "_manifest.json").is_file() for p in sources.values()):
            return None
        for name, source in sources.items():
            final = self._final(name, tokens)
            republish(source, final, name, tokens.for_scope(DATASETS[name]))
            self.published[name] = final
        return entry["stats"]

    def _compute(self, spec: StateSpec, key: str, tokens: Tokens) -> dict[str, Any]:
        finals = {name: self._final(name, tokens) for name in spec.writes}
        staged = {}
        for name, final in finals.items():
            final.parent.mkdir(parents=True, exist_ok=True)
            staged[name] = stage_dir(final)
            shutil.rmtree(staged[name], ignore_errors=True)
            staged[name].mkdir()
        ctx = StateContext(
            tokens=tokens,
            policies=self.bundle,
            grid=self.grid,
            execution=self.execution,
            inputs={n: self.published[n] for n in spec.reads},
            upstream=self.upstream,
            baseline_nn_ratio=self.baseline_nn_ratio,
        )
        try:
            stats = spec.load().run(ctx, staged)
        except BaseException:
            for tmp in staged.values():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        for name, final in finals.items():
            seal_and_commit(staged[name], final, name, tokens.for_scope(DATASETS[name]))
            self.published[name] = final
        index = self.root / "cache" / spec.id / f"{key}.json"
        index.parent.mkdir(parents=True, exist_ok=True)
        entry = {"datasets": {n: p.relative_to(self.data).as_posix() for n, p in finals.items()}, "stats": stats}
        write_json(index, entry)
        return stats

    def _run_states(
        self, specs: tuple[StateSpec, ...], keys: dict[str, str], tokens: Tokens, on_state: Callable[[str], None] | None
    ) -> list[StateRecord]:
        records = []
        with executing(self.execution):
            for spec in specs:
                if on_state:
                    on_state(f"{spec.id} {spec.name}")
                t = time.perf_counter()
                stats = self._from_cache(spec, keys[spec.id], tokens)
                reused = stats is not None
                if stats is None:
                    stats = self._compute(spec, keys[spec.id], tokens)
                records.append(StateRecord(spec.id, spec.name, time.perf_counter() - t, reused, stats))
        return records

    def run_global(self, on_state: Callable[[str], None] | None = None) -> list[StateRecord]:
        """Only the seed-free states (S1, S2): build the grid and weights once per policy."""
        tokens = Tokens(self.seed, self.bundle.parameter_hash, "")
        keys = _cache_keys(self.bundle, self.seed, "")
        return self._run_states(tuple(s for s in STATES if not s.seeded), keys, tokens, on_state)

    def run(self, on_state: Callable[[str], None] | None = None) -> tuple[Tokens, list[StateRecord]]:
        t0 = time.perf_counter()
        gate = s0_gate.verify(
            self.upstream, self.seed, self.bundle.parameter_hash, code_digest(), self.baseline_nn_ratio
        )
        tokens = Tokens(self.seed, self.bundle.parameter_hash, gate.manifest_fingerprint)
        final = self._final("s0_gate_receipt", tokens)
        publish(
            final,
            "s0_gate_receipt",
            tokens.for_scope("plan"),
            lambda d: s0_gate.write_receipt(gate, self.seed, self.bundle.parameter_hash, d),
        )
        self.published["s0_gate_receipt"] = final
        records = [StateRecord("S0", "gate", time.perf_counter() - t0, False, {"outlets": gate.n_outlets})]
        keys = _cache_keys(self.bundle, self.seed, gate.upstream_flag, self.baseline_nn_ratio)
        return tokens, records + self._run_states(STATES[1:], keys, tokens, on_state)


def run_seed(
    root: Path = DEFAULT_ROOT,
    seed: int = 42,
    policies: Path | PolicyBundle = DEFAULT_POLICIES,
    upstream: Path | None = None,
    execution: Execution = Execution(),
    on_state: Callable[[str], None] | None = None,
    baseline_nn_ratio: float | None = None,
) -> RunResult:
    start = time.perf_counter()
    root = Path(root).resolve()
    bundle = policies if isinstance(policies, PolicyBundle) else load_bundle(Path(policies), refdata_version())
    upstream_dir = Path(upstream) if upstream else ensure_standin(root, seed)
    chain = Chain(root, seed, bundle, upstream_dir, execution, baseline_nn_ratio)
    tokens, records = chain.run(on_state)
    run_dir = new_folder(
        safe_join(root, "runs"),
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-s{seed}-{tokens.manifest_fingerprint[:8]}",
    )
    run_id = run_dir.name
    result = RunResult(
        run_id, run_dir, seed, tokens, records, dict(chain.published), time.perf_counter() - start, _peak_rss_mb()
    )
    receipt = {
        "run_id": run_id,
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
            for r in records
        ],
        "outputs": {k: str(v.relative_to(root)) for k, v in result.outputs.items()},
        "wall_seconds": round(result.wall_seconds, 3),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
    }
    write_json(run_dir / "run.json", receipt)
    validation = result.validation
    if not validation["passed"]:
        raise Seg1BError(
            E_VALIDATION_FAILED,
            f"S9 structural checks failed: {', '.join(validation['failed_checks'])}",
            file=result.outputs["validation_bundle"] / "checks.json",
        )
    return result
