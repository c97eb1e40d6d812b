"""Policy bundles: strict typed models (unknown keys are errors) and ``parameter_hash``.

A bundle is a folder of YAML files, one per governed surface. ``gates.yaml`` is shared by
all bundles (``policies/gates.yaml``) unless a bundle carries its own. ``parameter_hash``
is SHA-256 over the canonical form of every file plus the reference-data version: any
policy change anywhere moves it (the old engine hashed only S2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import E_POLICY_INVALID, E_POLICY_MISSING, E_POLICY_UNKNOWN_KEY, Seg1BError
from .hashing import canonical_json, sha256_hex


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Share = Annotated[float, Field(ge=0.0, le=1.0)]


class Eligibility(Strict):
    min_population: int = Field(ge=0)


class GridPolicy(Strict):
    """The global EPSG:4326 tile grid: resolution, Zarr layout and country eligibility."""

    version: Literal[1]
    resolution_arcsec: Literal[30, 60, 120, 150, 180, 300, 600, 900, 1800, 3600]
    shard_rows: int = Field(ge=1, description="rows per Zarr shard (and per S1/S2 task unit)")
    chunk_cols: int = Field(ge=1, description="columns per inner Zarr chunk")
    eligibility: Eligibility


class S2Legacy(Strict):
    mode: Literal["legacy"]
    basis: Literal["uniform", "area_m2"]
    area_quantum_m2: float = Field(gt=0.0, description="fixed-point unit of tile_weight for the area basis")


class S2Policy(Strict):
    version: Literal[1]
    tile_weights: S2Legacy


class S3Policy(Strict):
    version: Literal[1]
    denylist_iso: tuple[str, ...] = ()


class CountryAllocationLegacy(Strict):
    mode: Literal["legacy"]


class TileAllocation(Strict):
    method: Literal["largest_remainder"]
    tie_break: Literal["tile_id", "keyed"]
    max_tile_share: Share = Field(description="guard: no tile above this share of a pair (1.0 = off)")


class S4Policy(Strict):
    version: Literal[1]
    country_allocation: CountryAllocationLegacy
    tile_allocation: TileAllocation


class S6Policy(Strict):
    version: Literal[1]
    mode: Literal["uniform_v1"]
    max_attempts: int = Field(ge=1, le=1024)


class S8Policy(Strict):
    version: Literal[1]
    rows_per_part: int = Field(ge=1)


class Gate(Strict):
    B: float
    B_PLUS: float


class GatesPolicy(Strict):
    version: Literal[1]
    required_seeds: tuple[int, ...]
    country_gini_max: Gate
    top10_share_max: Gate
    top5_share_max: Gate
    top1_share_max: Gate
    eligible_country_nonzero_share_min: Gate
    southern_hemisphere_share_min: Gate
    nn_contraction_min: Gate
    cross_seed_cv_max: Gate
    region_floor_share: dict[str, Share]
    bootstrap_replicates: int = Field(ge=100)
    bootstrap_seed: int = Field(ge=0)


MODELS: dict[str, type[Strict]] = {
    "grid": GridPolicy,
    "s2_tile_weights": S2Policy,
    "s3_requirements": S3Policy,
    "s4_alloc_plan": S4Policy,
    "s6_jitter": S6Policy,
    "s8_egress": S8Policy,
    "gates": GatesPolicy,
}


class PolicyBundle(Strict):
    """A validated bundle with its per-file digests and ``parameter_hash``."""

    name: str
    grid: GridPolicy
    s2_tile_weights: S2Policy
    s3_requirements: S3Policy
    s4_alloc_plan: S4Policy
    s6_jitter: S6Policy
    s8_egress: S8Policy
    gates: GatesPolicy
    digests: dict[str, str]
    parameter_hash: str

    def canonical(self) -> dict[str, Any]:
        return {name: getattr(self, name).model_dump(mode="json") for name in MODELS}


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise Seg1BError(E_POLICY_INVALID, f"not valid YAML ({exc.__class__.__name__})", file=path) from None


def parse_policy(name: str, data: Any, path: Path) -> Strict:
    model = MODELS[name]
    try:
        # JSON-mode strict validation: YAML lists are arrays, "0.5" is not a number.
        return model.model_validate_json(json.dumps(data))
    except TypeError as exc:
        raise Seg1BError(E_POLICY_INVALID, f"value is not plain YAML data ({exc})", file=path) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise Seg1BError(E_POLICY_UNKNOWN_KEY, "unknown policy key", file=path, key=loc) from None
        raise Seg1BError(E_POLICY_INVALID, err["msg"], file=path, key=loc or "<root>") from None


def load_bundle(directory: Path, refdata_version: str) -> PolicyBundle:
    directory = Path(directory)
    parsed: dict[str, Strict] = {}
    for name in MODELS:
        path = directory / f"{name}.yaml"
        if not path.is_file() and name == "gates":
            path = directory.parent / "gates.yaml"
        if not path.is_file():
            raise Seg1BError(E_POLICY_MISSING, f"policy file {name}.yaml is missing", file=path)
        parsed[name] = parse_policy(name, _load_yaml(path), path)
    digests = {name: sha256_hex(canonical_json(model.model_dump(mode="json"))) for name, model in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate({"name": directory.name, "digests": digests, "parameter_hash": parameter_hash, **parsed})


def bundle_from_canonical(name: str, canonical: dict[str, Any], refdata_version: str) -> PolicyBundle:
    """Rebuild a bundle from the canonical form sealed with a run (never the live files)."""
    parsed = {k: parse_policy(k, v, Path(f"<sealed:{k}>")) for k, v in canonical.items()}
    digests = {k: sha256_hex(canonical_json(m.model_dump(mode="json"))) for k, m in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate({"name": name, "digests": digests, "parameter_hash": parameter_hash, **parsed})
