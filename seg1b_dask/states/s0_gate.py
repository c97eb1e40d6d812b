"""S0 gate: no PASS, no read. Verify the 1A bundle and its flag, validate the outlet
catalogue, seal every input and compute the run's lineage tokens."""

from __future__ import annotations

from pathlib import Path

from seg1b_dask import __version__
from seg1b_dask.engine.context import GateResult, StateContext
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import refdata
from seg1b_dask.io.catalogue import validate_catalogue
from seg1b_dask.io.datasets import GATE_RECEIPT
from seg1b_dask.io.hashing import canonical_json, sha256_file, sha256_hex, verify_bundle
from seg1b_dask.io.upstream import CATALOGUE


def verify(
    upstream: Path, seed: int, parameter_hash: str, code_digest: str, baseline_nn_ratio: float | None = None
) -> GateResult:
    """Verify the 1A bundle and seal every input. A bundle that targets a grade is graded
    against the seed's pinned baseline, whose NN ratio is then a sealed input too: another
    baseline means another ``manifest_fingerprint``, never a conflicting republish."""
    index, flag = verify_bundle(upstream)
    if not isinstance(index.get("seed"), int) or index["seed"] != int(seed):
        raise Seg1BError(
            Code.E_TOKEN_MISMATCH,
            f"1A bundle is for seed {index.get('seed')}, run asks for seed {seed}",
            file=upstream / "index.json",
            key="seed",
        )
    path = upstream / CATALOGUE
    if not path.is_file():
        raise Seg1BError(Code.E_BUNDLE_INDEX, "the 1A bundle has no outlet catalogue", file=path, key=CATALOGUE)
    tokens = {"seed": seed, "manifest_fingerprint": index.get("manifest_fingerprint")}
    n_outlets = validate_catalogue(path, refdata.known_iso_codes(), tokens)
    sealed = [{"name": "1A:_passed.flag", "sha256": flag}]
    sealed += [
        {"name": f"refdata:{p.name}", "sha256": sha256_file(p)} for p in sorted(refdata.REFDATA_DIR.glob("*.parquet"))
    ]
    sealed += [
        {"name": "parameter_hash", "sha256": parameter_hash},
        {"name": f"package:{__version__}", "sha256": code_digest},
    ]
    if baseline_nn_ratio is not None:
        sealed.append({"name": "baseline:nn_ratio", "sha256": sha256_hex(canonical_json(baseline_nn_ratio))})
    fingerprint = sha256_hex(canonical_json(sorted(d["sha256"] for d in sealed)))
    return GateResult(manifest_fingerprint=fingerprint, upstream_flag=flag, sealed_inputs=sealed, n_outlets=n_outlets)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    """Write the gate receipt: the sealed inputs behind this run's tokens."""
    gate = ctx.gate
    receipt = {
        "seed": ctx.seed,
        "parameter_hash": ctx.tokens.parameter_hash,
        "manifest_fingerprint": gate.manifest_fingerprint,
        "upstream_flag_sha256": gate.upstream_flag,
        "sealed_inputs": gate.sealed_inputs,
        "outlets": gate.n_outlets,
    }
    GATE_RECEIPT.write(out["s0_gate_receipt"], receipt)
    return {"outlets": gate.n_outlets}
