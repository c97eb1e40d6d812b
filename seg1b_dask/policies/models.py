"""Policy bundles: strict typed models (unknown keys are errors) and ``parameter_hash``.

A bundle is a folder of YAML files, one per governed surface. ``gates.yaml`` is shared by
all bundles (``policies/gates.yaml``) unless a bundle carries its own. ``parameter_hash``
is SHA-256 over the canonical form of every file plus the reference-data version: any
policy change anywhere moves it (the old engine hashed only S2).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.hashing import canonical_json, sha256_hex


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


M = TypeVar("M", bound=BaseModel)


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

    @field_validator("chunk_cols")
    @classmethod
    def _divides_the_row(cls, value: int, info: ValidationInfo) -> int:
        """A shard is a whole row band: its chunks must tile the row exactly (a chunk wider
        than the row is the row)."""
        resolution = info.data.get("resolution_arcsec")
        columns = 360 * 3600 // resolution if resolution else 0
        if value < columns and columns % value:
            raise ValueError(f"must divide the {columns} columns of the {resolution}″ grid (or exceed them)")
        return value


class S2Legacy(Strict):
    """Per-country normalized weights from one basis (the old engine's posture)."""

    mode: Literal["legacy"]
    basis: Literal["uniform", "area_m2"]
    area_quantum_m2: float = Field(gt=1e-3, le=1e12, description="fixed-point unit of tile_weight for the area basis")


class BasisMix(Strict):
    """Weights of the three cell-mass bases; each basis sums to 1 within a country."""

    uniform: Share
    area_m2: Share
    population: Share


class PopulationBasis(Strict):
    """Cell population from the vendored places: urban mass (places of at least
    ``min_place_population``, spread over a small kernel of same-country cells and capped at
    ``urban_cap_share`` of the country's table population) plus the rural remainder spread by
    cell area and weighted by ``rural_weight`` (outlets live where people shop)."""

    min_place_population: int = Field(ge=0, le=10_000_000)
    urban_cap_share: Share
    rural_weight: Share
    kernel_radius_cells: int = Field(ge=0, le=4, description="Gaussian kernel radius around each place, in cells")


def _known_regions(floors: dict[str, float]) -> dict[str, float]:
    from seg1b_dask.io.refdata import REGIONS

    unknown = sorted(set(floors) - set(REGIONS))
    if unknown:
        raise ValueError(f"unknown region {unknown[0]!r} (regions: {', '.join(REGIONS)})")
    if sum(floors.values()) >= 1.0:
        raise ValueError("region floors add up to 1 or more")
    # One order whatever the file's (or a sealed run's sorted JSON): floors apply in sequence.
    return {region: floors[region] for region in REGIONS if region in floors}


RegionFloors = Annotated[dict[str, Share], AfterValidator(_known_regions)]


class TopKCaps(Strict):
    """Caps on the share of the top k = ceil(f · n) countries (f = .01/.05/.10), n the countries
    the vector spreads over."""

    top1: Share
    top5: Share
    top10: Share


class CountryMassPolicy(Strict):
    """The governed country mass vector S4 allocates to (DESIGN §5)."""

    population_exponent: float = Field(ge=0.0, le=2.0, description="base share ∝ population ** exponent")
    uniform_mix: Share
    concentration_penalty: Share = Field(description="tempering s ** (1 - penalty) of the base vector")
    region_floor_share: RegionFloors
    southern_floor_share: Share
    country_cap_share_soft: Share
    soft_cap_keep: Share = Field(description="share of the excess above the soft cap that is kept")
    country_cap_share_hard: Share
    max_population_share_multiple: float = Field(
        ge=0.0, le=1e6, description="hard cap ≤ this × the country's population share (0 = off)"
    )
    topk_cap_share: TopKCaps
    max_iterations: int = Field(ge=1, le=100_000)
    tolerance: float = Field(gt=0.0, le=1e-3)


class S2BlendV2(Strict):
    mode: Literal["blend_v2"]
    basis_mix: BasisMix
    population: PopulationBasis
    country_mass: CountryMassPolicy


class S2Policy(Strict):
    version: Literal[1]
    tile_weights: Annotated[S2Legacy | S2BlendV2, Field(discriminator="mode")]


class S3Policy(Strict):
    version: Literal[1]
    denylist_iso: tuple[str, ...] = ()


class CountryAllocationLegacy(Strict):
    """Exactly 1A's per-(merchant, country) counts."""

    mode: Literal["legacy"]


class TargetLimits(Strict):
    """How far S4(a) governs country totals (DESIGN §12): the target is the vector closest
    to 1A's own counts (the least relocation) inside these limits; among equally close
    vectors the one nearest S2's population vector wins (``prior_weight`` < 1 only breaks
    ties), so moved outlets go where people are. Every country with outlets holds at least
    ``min_sites_per_country``."""

    country_share_max: Share = Field(description="no country above this share (a home floor wins)")
    max_population_share_multiple: float = Field(
        ge=0.0, le=1e6, description="no country above this × its share of people (0 = off; a home floor wins)"
    )
    top_share_max: TopKCaps = Field(description="caps on the top k = ceil(f · countries with outlets)")
    prior_floor: Share = Field(description="every country holds at least this × its share of S2's vector")
    southern_share_min: Share
    region_floor_share: RegionFloors
    min_country_population: int = Field(
        ge=0, description="countries with fewer people receive outlets only where 1A or a home merchant has them"
    )
    prior_weight: float = Field(ge=0.0, lt=1.0, description="ties toward S2's country mass vector")


class CountryAllocationRemass(Strict):
    """Governed re-mass: targets closest to 1A within limits; merchants keep their home;
    moved outlets go to the merchant's own countries first, then the nearest."""

    mode: Literal["remass"]
    targets: TargetLimits
    min_sites_per_country: int = Field(ge=1, le=1000, description="every country with outlets holds at least this")
    home_sites_min: int = Field(
        ge=0, le=1000, description="every merchant keeps at least this many outlets at home (fewer if 1A has fewer)"
    )
    max_merchant_share: Share = Field(
        description="no merchant holds more than this share of what a country keeps or receives, where others can"
    )
    max_new_countries: int = Field(
        ge=1, le=1000, description="a merchant's moved outlets go to at most this many countries it lacks in 1A"
    )


class TileAllocation(Strict):
    method: Literal["largest_remainder", "systematic"]
    tie_break: Literal["tile_id", "keyed"]
    max_tile_share: Share = Field(description="guard: no tile above this share of a pair (1.0 = off)")
    min_sites_per_tile: int = Field(
        ge=1, le=1000, description="a tile left with fewer sites hands them to the nearest fuller tile (1 = off)"
    )


class S4Policy(Strict):
    version: Literal[1]
    country_allocation: Annotated[CountryAllocationLegacy | CountryAllocationRemass, Field(discriminator="mode")]
    tile_allocation: TileAllocation


class S6UniformV1(Strict):
    """Uniform in the cell."""

    mode: Literal["uniform_v1"]
    max_attempts: int = Field(ge=1, le=1024)


class S6MixtureV3(Strict):
    """A governed mixture inside the tile, every part scaled by the tile's footprint σ (the
    spread its expected outlets need at the stated density, outlets per km² per million
    outlets in all): a dense core around the tile's anchor (its population centre), secondary
    clusters around keyed points within ``secondary_reach`` σ of it, and a sparse tail within
    ``tail_reach`` σ. Placement therefore means the same at any number of sites."""

    mode: Literal["mixture_v3"]
    max_attempts: int = Field(ge=1, le=1024)
    core_share: Share
    secondary_share: Share
    secondary_clusters: int = Field(ge=1, le=64)
    secondary_reach: float = Field(ge=0.0, le=100.0, description="cluster centres within this many σ of the anchor")
    tail_reach: float = Field(gt=0.0, le=100.0, description="the tail spreads this many σ around the anchor")
    core_density_per_km2_per_million: float = Field(gt=0.0, le=1e6)


class S6Policy(Strict):
    version: Literal[1]
    jitter: Annotated[S6UniformV1 | S6MixtureV3, Field(discriminator="mode")]


class S8Policy(Strict):
    version: Literal[1]
    rows_per_part: int = Field(ge=1)


class S9Policy(Strict):
    """The grade a bundle targets: S9 seals it only when that grade's per-seed gates pass
    (``none``: structural checks only, as the baseline)."""

    version: Literal[1]
    target_grade: Literal["none", "B", "B_PLUS"]


class Gate(Strict):
    B: float
    B_PLUS: float


class Plausibility(Strict):
    """Figures reported beside the gates, never graded: how rural the sites are and how much
    goes to very small countries."""

    rural_km: float = Field(gt=0.0, le=1000.0, description="a site is rural beyond this from a town")
    rural_min_population: int = Field(ge=0, description="the people a place needs to count as a town")
    small_country_population: int = Field(ge=0, description="countries below this many people are small")


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
    sentinel_flagged_max: Gate
    merchant_countries_median_max: Gate
    merchants_above_1a_max_share_max: Gate
    near_city_share_min: Gate
    near_city_km: float = Field(gt=0.0, le=1000.0)
    near_city_min_population: int = Field(ge=0)
    plausibility: Plausibility
    cross_seed_cv_max: Gate
    region_floor_share: RegionFloors
    bootstrap_replicates: int = Field(ge=100, le=100_000)
    bootstrap_seed: int = Field(ge=0)


MODELS: dict[str, type[Strict]] = {
    "grid": GridPolicy,
    "s2_tile_weights": S2Policy,
    "s3_requirements": S3Policy,
    "s4_alloc_plan": S4Policy,
    "s6_jitter": S6Policy,
    "s8_egress": S8Policy,
    "s9_validation": S9Policy,
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
    s9_validation: S9Policy
    gates: GatesPolicy
    digests: dict[str, str]
    parameter_hash: str

    def canonical(self) -> dict[str, Any]:
        return {name: getattr(self, name).model_dump(mode="json") for name in MODELS}


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise Seg1BError(Code.E_POLICY_INVALID, f"not valid YAML ({exc.__class__.__name__})", file=path) from None


def parse_policy(name: str, data: Any, path: Path) -> Strict:
    return parse_model(MODELS[name], data, path, tuple(MODELS.values()))


def parse_model(model: type[M], data: Any, path: Path, family: tuple[type[BaseModel], ...]) -> M:
    """Validate YAML ``data`` read from ``path`` as ``model``; refusals are one coded line
    naming the key, with a "did you mean" among the keys ``family``'s models accept."""
    try:
        # JSON-mode strict validation: YAML lists are arrays, "0.5" is not a number.
        return model.model_validate_json(json.dumps(data))
    except TypeError as exc:
        raise Seg1BError(Code.E_POLICY_INVALID, f"value is not plain YAML data ({exc})", file=path) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _yaml_path(data, err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), sorted(_field_names(family)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise Seg1BError(Code.E_POLICY_UNKNOWN_KEY, f"unknown policy key{hint}", file=path, key=loc) from None
        raise Seg1BError(Code.E_POLICY_INVALID, err["msg"], file=path, key=loc or "<root>") from None


def _yaml_path(data: Any, loc: tuple[Any, ...]) -> str:
    """The error's location as the keys a user sees in the YAML file (pydantic adds the
    mode's name for a discriminated union; the file has no such key)."""
    parts, node = [], data
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        elif isinstance(node, dict) and node.get("mode") == part:
            continue  # the union's tag, not a key
        parts.append(str(part))
    return ".".join(parts)


@cache
def _field_names(family: tuple[type[BaseModel], ...]) -> set[str]:
    """Every key the models of ``family`` (and the models inside them) accept."""
    names: set[str] = set()
    stack: list[type[BaseModel]] = list(family)
    seen: set[type[BaseModel]] = set()
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            stack.extend(_models_in(field.annotation))
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def load_bundle(directory: Path, refdata_version: str) -> PolicyBundle:
    directory = Path(directory)
    parsed: dict[str, Strict] = {}
    for name in MODELS:
        path = directory / f"{name}.yaml"
        if not path.is_file() and name == "gates":
            path = directory.parent / "gates.yaml"
            if not path.is_file():
                raise Seg1BError(
                    Code.E_POLICY_MISSING,
                    "gates.yaml is missing: a bundle reads it from its own folder, else from the folder above "
                    "(copy policies/gates.yaml beside the bundle's files)",
                    file=directory.resolve() / "gates.yaml",
                )
        if not path.is_file():
            raise Seg1BError(Code.E_POLICY_MISSING, f"policy file {name}.yaml is missing", file=path.resolve())
        parsed[name] = parse_policy(name, _load_yaml(path), path)
    digests = {name: sha256_hex(canonical_json(model.model_dump(mode="json"))) for name, model in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate(
        {"name": directory.name, "digests": digests, "parameter_hash": parameter_hash, **parsed}
    )


def bundle_from_canonical(name: str, canonical: dict[str, Any], refdata_version: str) -> PolicyBundle:
    """Rebuild a bundle from the canonical form sealed with a run (never the live files)."""
    parsed = {k: parse_policy(k, v, Path(f"<sealed:{k}>")) for k, v in canonical.items()}
    digests = {k: sha256_hex(canonical_json(m.model_dump(mode="json"))) for k, m in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate({"name": name, "digests": digests, "parameter_hash": parameter_hash, **parsed})


def sealed_bundle(run: dict[str, Any]) -> PolicyBundle:
    """The policies sealed with a run, never the live files."""
    bundle = bundle_from_canonical(run["policy_bundle"], run["policies"], run["refdata_version"])
    if bundle.parameter_hash != run["parameter_hash"]:
        raise Seg1BError(
            Code.E_TOKEN_MISMATCH, "sealed policies do not hash to the run's parameter_hash", key="policies"
        )
    return bundle
